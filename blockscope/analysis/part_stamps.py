"""A unit's anatomy in one process (rule anatomy): spectra and metrics, the precision sweep, heads.

One job per unit instead of three, because a job's start (the interpreter, Snakemake's script
preamble, numpy, pyarrow: ~0.3 s here) cost as much as a small unit's work; the tensors are read
by one process. Each part keeps its own incremental behaviour through a stamp: a hash of what its
outputs were computed from (its settings, the version of its library code, its inputs' content,
and for the sweep the stamp of the spectra it reuses), kept in the outputs' Parquet metadata.
Content, not modification times: Snakemake touches a SLURM group's outputs after the group, so
a unit's tensors look newer than the anatomy that read them. A part whose outputs already carry
the stamp it would write is kept, not recomputed: changing the precision list reruns the job but
recomputes the sweep alone, an edit to heads.py the heads alone. The rule flags the outputs
update() so that Snakemake leaves them in place for the job (and restores them if the job fails);
to recompute a part whose stamp has not changed, delete its files.
"""

import functools
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

from blockscope.io.tables import read_stamp, write_table

log = logging.getLogger(__name__)

# The library modules whose code each part's results depend on (with what they import): a change
# to any of them changes the part's stamp. The rule passes their code_version in the part's settings.
PART_MODULES = {
    "spectra": ("blockscope.analysis.anatomy", "blockscope.io.tables"),
    "precision": ("blockscope.analysis.anatomy", "blockscope.io.tables"),
    "heads": ("blockscope.analysis.heads", "blockscope.io.tables"),
    "diagnostics": ("blockscope.analysis.diagnostics", "blockscope.io.tables"),
}


@dataclass
class Part:
    """One part of a unit's anatomy: its output tables (name -> path), the settings and inputs
    its results depend on, and compute() -> {name: Arrow table}."""
    name: str
    outputs: dict
    settings: dict
    inputs: dict
    compute: Callable[[], dict]
    upstream: str = ""


def input_identity(paths: dict) -> dict:
    """name -> a hash of each input file's content (one sequential read: the job reads the unit
    anyway, and the page cache keeps it for that read)."""
    return {name: content_hash(str(path), *_version(path)) for name, path in paths.items()}


def _version(path) -> tuple:
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


@functools.cache
def content_hash(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, once per job for a given version of it (the three parts share inputs)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def part_stamp(part: Part) -> str:
    """What a part's outputs are computed from, hashed."""
    facts = {"part": part.name, "settings": part.settings, "inputs": input_identity(part.inputs),
             "upstream": part.upstream}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_current(outputs, stamp: str) -> bool:
    """True when every output file exists and carries `stamp`."""
    return all(read_stamp(path) == stamp for path in outputs)


def run_part(part: Part) -> str:
    """Compute and write a part's tables (atomically, stamped), unless they are current; its stamp."""
    stamp = part_stamp(part)
    if is_current(part.outputs.values(), stamp):
        log.info("%s: kept, up to date (stamp %s: same settings, code and inputs)", part.name, stamp)
        return stamp
    started = time.perf_counter()
    tables = part.compute()
    for name, path in part.outputs.items():
        write_table(tables[name], path, stamp=stamp)
    log.info("%s: computed in %.2f s (stamp %s)", part.name, time.perf_counter() - started, stamp)
    return stamp
