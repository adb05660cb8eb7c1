"""gesdd against the Gram path on this CPU, per matrix shape: the measurements behind
`svd_method: auto` (blockscope.analysis.spectra.gram_pays_off) and the table in docs/metrics.md.

Random float32 matrices (entries N(0, 0.02^2)) of the demo's shapes (SmolLM2-135M), a
Qwen2.5-0.5B's and a Llama-3.1-8B's. Peer: LAPACK gesdd as the `gesdd` method runs it
(blockscope.analysis.spectra.singular_values: numpy's build up to 576 x 576, scipy's above); ours: the
float64 Gram (numpy's product, BLAS dsyrk for large ones) plus its eigenvalues (syevd), the
`gram` method. Run it as the jobs run, with OPENBLAS_NUM_THREADS=1. Each time is the minimum
over --repeats runs (the machine may be shared); a gesdd slower than --long seconds runs once.
Prints one row per shape: both times, their ratio, which is faster and what auto picks, and
the largest relative difference of sigma >= 1e-3 sigma_max against a float64 gesdd (on shapes
up to --check-max elements); then per model the in-process seconds of all its matrices (each
shape's time x its count) with gesdd, gram and auto.

    python benchmarks/svd_methods.py [--repeats 3] [--only demo,0.5b,8b] [--drivers]
"""

import argparse
import os
import time

import numpy as np
import scipy.linalg

from blockscope.analysis.gram import gram_eigenvalues, gram_matrix, singular_values_gram
from blockscope.analysis.spectra import singular_values, svd_method_for

# shape -> how many matrices of it the model has (per layer x layers, + embedding): the totals
# below are the in-process SVD seconds of every matrix. 8b leaves out its 128256x4096 embedding
# and lm_head (a gesdd of each takes many minutes here).
SHAPES = {
    "demo": {(576, 576): 60, (576, 1536): 30, (1536, 576): 60, (192, 576): 60, (49152, 576): 1},
    "0.5b": {(896, 896): 48, (896, 4864): 24, (4864, 896): 48, (128, 896): 48, (151936, 896): 1},
    "8b": {(1024, 4096): 64, (4096, 4096): 64, (14336, 4096): 64, (4096, 14336): 32},
    # the 8b shapes halved (x 1/8 of the cost), for a machine where the real ones take too long
    "8b-half": {(512, 2048): 64, (2048, 2048): 64, (7168, 2048): 64, (2048, 7168): 32},
}


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        started = clock()
        run()
        times.append(clock() - started)
    return min(times)


def accuracy(matrix) -> float:
    """Largest relative difference of the Gram path's sigma >= 1e-3 sigma_max from float64 gesdd."""
    reference = scipy.linalg.svdvals(matrix.astype(np.float64), check_finite=False)
    sigma = singular_values_gram(matrix).astype(np.float64)
    kept = reference >= 1e-3 * reference[0]
    return float(np.max(np.abs(sigma[kept] - reference[kept]) / reference[kept]))


def measure(shape, repeats, long, check_max, rng):
    matrix = rng.standard_normal(shape, dtype=np.float32) * 0.02
    first = best_of(1, lambda: singular_values(matrix.copy()))
    gesdd = first if first > long else min(first, best_of(repeats - 1, lambda: singular_values(matrix.copy())))
    gram_seconds = best_of(repeats, lambda: gram_matrix(matrix))
    gram = gram_matrix(matrix)
    eigh_seconds = best_of(repeats, lambda: gram_eigenvalues(gram.copy(order="F")))
    error = accuracy(matrix) if matrix.size <= check_max else float("nan")
    return gesdd, gram_seconds, eigh_seconds, error


def drivers(shape, repeats, rng):
    """syevr against the other eigenvalue-only drivers on one Gram matrix."""
    matrix = rng.standard_normal(shape, dtype=np.float32) * 0.02
    gram = gram_matrix(matrix)
    return {driver: best_of(repeats, lambda: scipy.linalg.eigh(gram.copy(order="F"), lower=False, eigvals_only=True,
                                                                driver=driver, check_finite=False, overwrite_a=True))
            for driver in ("ev", "evd", "evr", "evx")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--long", type=float, default=20.0, help="a gesdd slower than this runs once")
    parser.add_argument("--check-max", type=int, default=10_000_000, help="accuracy check up to this many elements")
    parser.add_argument("--only", default="demo,0.5b,8b")
    parser.add_argument("--drivers", action="store_true", help="time syev/syevd/syevr/syevx on each Gram")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="cpu: this process's CPU seconds, robust on a machine shared with other jobs "
                             "(run with OPENBLAS_NUM_THREADS=1 so that no thread waits on a busy core)")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    rng = np.random.default_rng(0)
    print(f"gesdd vs gram on this CPU ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}), {args.clock} seconds, "
          f"float32 inputs, minimum of {args.repeats} runs (gesdd > {args.long:g} s: one run)\n")
    print("| model | shape | gesdd s | gram: Gram s | + eigh s | gram total s | gesdd / gram | faster | auto "
          "| max rel. err sigma >= 1e-3 sigma_max |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model in args.only.split(","):
        totals = {"gesdd": 0.0, "gram": 0.0, "auto": 0.0}
        for shape, count in SHAPES[model].items():
            gesdd, gram, eigh, error = measure(shape, args.repeats, args.long, args.check_max, rng)
            faster = "gram" if gram + eigh < gesdd else "gesdd"
            auto = svd_method_for("auto", shape, np.float32)
            totals["gesdd"] += count * gesdd
            totals["gram"] += count * (gram + eigh)
            totals["auto"] += count * (gram + eigh if auto == "gram" else gesdd)
            print(f"| {model} | {shape[0]}x{shape[1]} | {gesdd:.3f} | {gram:.3f} | {eigh:.3f} | {gram + eigh:.3f} "
                  f"| {gesdd / (gram + eigh):.2f} | {faster} | {auto}{'' if auto == faster else ' (!)'} "
                  f"| {error:.1e} |", flush=True)
            if args.drivers:
                print("    eigh drivers:", {k: round(v, 3) for k, v in drivers(shape, args.repeats, rng).items()},
                      flush=True)
        print(f"| {model} | all {sum(SHAPES[model].values())} matrices (x count) | {totals['gesdd']:.1f} | | "
              f"| {totals['gram']:.1f} | {totals['gesdd'] / totals['gram']:.2f} | | auto {totals['auto']:.1f} "
              f"(auto / gesdd {totals['auto'] / totals['gesdd']:.2f}) | |", flush=True)

if __name__ == "__main__":
    main()
