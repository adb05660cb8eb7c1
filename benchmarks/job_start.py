"""What a per-unit job pays before its first line of work: interpreter start, Snakemake's script
preamble (it unpickles the job's `snakemake` object) and the script's own imports.

For each per-unit rule script (extract, anatomy) it runs, in a fresh
interpreter, exactly the preamble's imports and the script's top-level imports, `repeats` times,
and prints the CPU seconds (user + sys, what a busy machine cannot inflate) and wall seconds per
start. Peer, in the same run: a bare `python -c pass`. Every start runs in a one-thread job's
environment (OPENBLAS_NUM_THREADS=1 and the like, as Snakemake sets them). Compare a rule's start with the mean
`done in` of its logs (the step's own seconds) to see the share a merged or batched job would save.

    .venv/bin/python benchmarks/job_start.py [repeats]
"""

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

from blockscope.planning.job_start import job_environment

ROOT = Path(__file__).resolve().parent.parent
RULES = ["extract", "anatomy"]
# What Snakemake's python script preamble imports (snakemake/script/__init__.py).
PREAMBLE = "import pickle\nfrom snakemake.logging import logger\nfrom snakemake.iocontainers import Snakemake"


def script_imports(rule: str) -> str:
    """The top-level import statements of workflow_scripts/<rule>.py."""
    tree = ast.parse((ROOT / "workflow_scripts" / f"{rule}.py").read_text())
    return "\n".join(ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)))


def start_cost(code: str, repeats: int) -> tuple:
    """(cpu seconds, wall seconds) per fresh interpreter running code."""
    cpu = wall = 0.0
    for _ in range(repeats):
        before = os.times()
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=job_environment())
        wall += time.perf_counter() - started
        after = os.times()
        cpu += (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return cpu / repeats, wall / repeats


def main(repeats: int = 5):
    bare_cpu, bare_wall = start_cost("pass", repeats)
    print(f"{'start':<22}{'cpu s':>8}{'wall s':>8}{'cpu x bare':>12}")
    print(f"{'python -c pass (peer)':<22}{bare_cpu:8.3f}{bare_wall:8.3f}{1.0:12.1f}")
    preamble_cpu, preamble_wall = start_cost(PREAMBLE, repeats)
    print(f"{'snakemake preamble':<22}{preamble_cpu:8.3f}{preamble_wall:8.3f}{preamble_cpu / bare_cpu:12.1f}")
    for rule in RULES:
        cpu, wall = start_cost(PREAMBLE + "\n" + script_imports(rule), repeats)
        print(f"{rule + ' job start':<22}{cpu:8.3f}{wall:8.3f}{cpu / bare_cpu:12.1f}")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
