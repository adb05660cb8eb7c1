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


# What atomic_path and atomic_dir name a temporary: `.<target name>.XXXXXXXX.tmp` (tempfile's 8 random characters).
TEMPORARY = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp")


def stale_temporaries(*targets) -> list:
    """The temporary files and folders atomic_path and atomic_dir left beside `targets` when the job
    writing them was killed, never another target's (`.<name>.x.XXXXXXXX.tmp` is the temporary of
    `<name>.x`). One listing per folder."""
    names = {}
    for target in map(Path, targets):
        names.setdefault(target.parent, set()).add(target.name)
    found = []
    for folder, wanted in names.items():
        try:
            entries = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            continue
        found += [folder / entry for entry in entries if (m := TEMPORARY.fullmatch(entry)) and m.group(1) in wanted]
    return sorted(found)


def remove_stale_temporaries(*targets) -> list:
    """Remove what stale_temporaries finds. Only the job that writes the targets, or the run that
    will, owns them (Snakemake runs one job per output at a time, and its lock keeps another run
    off the outputs of this one). Returns the paths removed."""
    removed = []
    for path in stale_temporaries(*targets):
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
