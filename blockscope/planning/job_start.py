"""What a per-unit job pays before its work: a fresh interpreter, Snakemake's script preamble and
the modules its rule's script imports, measured in the environment Snakemake gives a job."""

import math
import os
import resource
import subprocess
import sys

from blockscope.planning.throughput import MB

# The modules each per-unit rule's script imports at top level (workflow_scripts/<rule>.py): what
# its job pays for at start. The library never reads the scripts; tests/test_cost_model.py checks
# that these equal what the scripts import, so that the two cannot drift apart.
JOB_MODULES = {
    "extract": ("os", "time", "blockscope.io.tables", "blockscope.io.tensors", "blockscope.runtime.run_step"),
    "anatomy": ("json", "blockscope.analysis.anatomy", "blockscope.analysis.diagnostics", "blockscope.analysis.heads",
                "blockscope.analysis.part_stamps", "blockscope.io.tables", "blockscope.runtime.gpu_slots",
                "blockscope.runtime.run_step"),
    "deltas": ("json", "blockscope.analysis.delta_unit", "blockscope.checkpoint.adapters", "blockscope.io.tables",
               "blockscope.runtime.gpu_slots", "blockscope.runtime.run_step"),
}
PER_UNIT_RULES = ("extract", "anatomy")  # priced for every model with weights of its own
DELTA_RULES = ("deltas",)  # priced only for a model with a base (an adapter-only model: these alone)
PRICED_RULES = PER_UNIT_RULES + DELTA_RULES  # every per-unit rule the cost model prices, the order of its tables
GPU_RULES = ("anatomy", "deltas")  # the per-unit rules that compute with torch on CUDA

# What Snakemake sets for a one-thread job (snakemake/shell.py): OpenBLAS then starts no thread
# pool at import, which halves numpy's import (0.19 -> 0.08 CPU s here).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def job_environment(threads: int = 1) -> dict:
    """The environment a Snakemake job of `threads` threads runs in."""
    return {**os.environ, **dict.fromkeys(THREAD_VARIABLES, str(threads))}


def job_start(modules: list, repeats: int = 2) -> tuple:
    """(CPU seconds, peak MB) of a fresh interpreter that imports what a Snakemake script job
    imports (Snakemake's script preamble, then the modules)."""
    code = "import snakemake.script, snakemake.io\n" + "".join(f"import {m}\n" for m in modules) + \
        "print(open('/proc/self/status').read())"
    best, peak = math.inf, 0.0
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=job_environment())
        if done.returncode:  # a module that cannot be imported: name it, never price a start without it
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"a job start importing {', '.join(modules)} failed: {last}")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        best = min(best, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        # VmHWM: the peak resident set of this process image (ru_maxrss would carry the parent's over exec)
        hwm = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("VmHWM:")]
        peak = float(hwm[0]) * 1024 / MB if hwm else 0.0
    return best, peak


def job_starts(rules, extra=()) -> tuple:
    """({rule: CPU seconds}, {rule: MB}) of each rule's job start (JOB_MODULES), importing `extra` too."""
    measured = {rule: job_start(list(JOB_MODULES[rule]) + list(extra)) for rule in rules}
    return {r: s for r, (s, _) in measured.items()}, {r: mb for r, (_, mb) in measured.items()}
