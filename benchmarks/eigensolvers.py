"""The Gram path's eigenvalues: LAPACK's two-stage syevd (spectra.two_stage_eigenvalues) against
numpy's eigvalsh (one-stage syevd, the peer), per Gram side n, in one run.

Each n: a random symmetric float64 matrix (the Gram of a random n-wide matrix), both solvers on
it, best of --repeats, CPU seconds of one thread (run with OPENBLAS_NUM_THREADS=1, as a job does),
and the largest difference of their eigenvalues relative to lambda_max. Where two-stage wins is
where spectra.TWO_STAGE_MIN_N should sit (docs/metrics.md "SVD method").

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/eigensolvers.py [--sizes 896,2048,3072,4096] [--repeats 2]
"""

import argparse

import numpy as np

from blockscope.analysis.gram import TWO_STAGE_MIN_N, two_stage_eigenvalues
from blockscope.planning.calibration import best_seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="896,2048,3072,4096")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    solver = two_stage_eigenvalues()
    if solver is None:
        raise SystemExit("this numpy's LAPACK has no two-stage syevd: numpy's eigvalsh serves every size")
    print(f"TWO_STAGE_MIN_N = {TWO_STAGE_MIN_N}")
    print("| n | syevd (numpy eigvalsh) s | two-stage s | syevd / two-stage | max diff / lambda_max |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for n in map(int, args.sizes.split(",")):
        wide = rng.standard_normal((n, 2 * n))
        gram = wide @ wide.T
        one = best_seconds(lambda: np.linalg.eigvalsh(gram), args.repeats)
        two = best_seconds(lambda: solver(gram), args.repeats)
        expected = np.linalg.eigvalsh(gram)
        diff = np.max(np.abs(solver(gram) - expected)) / expected[-1]
        print(f"| {n} | {one:.3f} | {two:.3f} | {one / two:.2f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
