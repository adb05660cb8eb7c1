"""Why a run cannot start, in one line each: a folder it must write is read-only, or another run
holds the working directory's lock. rules/run.smk calls these where Snakemake would end in its own
report or a PermissionError traceback."""

import os
from pathlib import Path

from blockscope.errors import BlockscopeError


def blocked_by(path):
    """Why `path` (relative to the working directory) cannot be written: the read-only folder holding
    it, named from the top (results, not results/x/y, when all of results/ is read-only), or the file
    itself when only it is; None when it can be written."""
    path = Path(path)
    if path.is_absolute():
        return None
    folder = next(parent for parent in path.parents if parent.exists())
    if os.access(folder, os.W_OK):
        return path if path.exists() and not path.is_symlink() and not os.access(path, os.W_OK) else None
    while folder.parent != Path(".") and not os.access(folder.parent, os.W_OK):
        folder = folder.parent
    return folder


def read_only_error(paths) -> BlockscopeError | None:
    """The error for the first of `paths` that cannot be written, else None."""
    for path in paths:
        if (blocked := blocked_by(path)) is not None:
            return BlockscopeError(
                f"read-only, and this run writes {path} there",
                path=blocked,
                fix=f"make it writable (chmod -R u+w {blocked}, or mount it read-write), or run in a writable copy",
            )
    return None


def lock_error(locks=Path(".snakemake/locks")) -> BlockscopeError | None:
    """The error for a working directory whose lock another Snakemake run holds, else None."""
    locks = Path(locks)
    if not (locks.is_dir() and any(locks.glob("*.lock"))):
        return None
    return BlockscopeError(
        "another Snakemake run is working in this folder (its lock is in .snakemake/locks)",
        path=Path.cwd(),
        fix="wait for that run to end; if none is running (it was killed), run snakemake --unlock, then start again",
    )
