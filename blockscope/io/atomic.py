"""Atomic outputs: write beside the target, then rename, so a killed job never leaves a
file that a rerun would take for finished. Outputs get the modes a plain open() or mkdir()
would give them under the process umask (tempfile's 0600 / 0700 would hide results from a
group on a shared cluster)."""

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publish_mode(path: Path, directory: bool):
    """chmod a finished temporary file or folder (and its contents) to the umask's modes."""
    mask = current_umask()
    if directory:
        for root, folders, files in os.walk(path):
            os.chmod(root, 0o777 & ~mask)
            for name in files:
                full = os.path.join(root, name)
                if not os.path.islink(full):
                    os.chmod(full, (0o777 if os.access(full, os.X_OK) else 0o666) & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


@contextlib.contextmanager
def atomic_path(target):
    """Yield a temporary path in the target's folder; rename it onto the target on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _publish_mode(Path(tmp), directory=False)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(target):
    """Yield a temporary folder beside target; it replaces target only when the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        _publish_mode(tmp, directory=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def stale_temporaries(dest) -> list:
    """The temporary folders atomic_dir left beside `dest` when a fetch into it was killed:
    `.<name>.XXXXXXXX.tmp` (tempfile.mkdtemp's 8 random characters), never another model's
    (`.<name>.x.XXXXXXXX.tmp` is the folder of model `<name>.x`)."""
    dest = Path(dest)
    pattern = re.compile(rf"\.{re.escape(dest.name)}\.[a-z0-9_]{{8}}\.tmp")
    if not dest.parent.is_dir():
        return []
    return sorted(p for p in dest.parent.iterdir() if pattern.fullmatch(p.name))


def remove_stale_temporaries(dest) -> list:
    """Remove what stale_temporaries finds; the job that fetches `dest` owns them (Snakemake
    runs one job per output at a time). Returns the paths removed."""
    removed = []
    for path in stale_temporaries(dest):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def write_json(obj, target):
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_parquet(table, target, **options):
    """Write a pandas DataFrame or pyarrow Table atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp, **options)


def write_csv(frame, target):
    """Write a pandas DataFrame atomically as CSV, without its index."""
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False)
