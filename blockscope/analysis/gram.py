"""The Gram path: singular values as the square roots of the eigenvalues of the n x n Gram matrix
(n = min(rows, cols)), formed in float64 a block of rows at a time, its eigenvalues by LAPACK's
syevd or, for large n, its two-stage variant; sigma below the Gram's rounding floor reported as 0
(docs/metrics.md, "SVD method"). The torch version of the path is in svd_torch.py.
"""

import functools
from pathlib import Path

import numpy as np

from blockscope.analysis.matrices import work

# Importing scipy.linalg costs a per-unit job ~0.3 CPU s (benchmarks/job_start.py), so a small
# Gram matrix is formed by numpy's product and scipy is imported only for large ones, where BLAS
# dsyrk forms it with half gemm's flops. Sizes are rows x cols x min(rows, cols) (matrices.work).
NUMPY_GRAM_MAX = 3e10   # numpy's Gram product within 12 % of dsyrk up to 6144 x 2048
# Entries upcast to float64 at a time (16 MB): the Gram's extra memory stays small, and the block,
# with the rounding temporaries of a precision sweep, stays below glibc's largest mmap threshold
# (32 MB), so it is reused from the heap instead of mapped and faulted in anew for every block.
GRAM_BLOCK_ENTRIES = 1 << 21
EPS64 = float(np.finfo(np.float64).eps)


def gram_block_rows(n: int) -> int:
    """Rows of a Gram block for a short side of n: GRAM_BLOCK_ENTRIES entries, at least 256 rows
    (BLAS-3 keeps its speed down to there)."""
    return max(256, GRAM_BLOCK_ENTRIES // max(n, 1))


def gram_matrix(matrix) -> np.ndarray:
    """W^T W of a tall matrix, W W^T of a wide one: n x n, n = min(rows, cols), in float64,
    accumulated over row blocks (gram_block_rows) copied into one float64 buffer, by numpy's
    product (both triangles) up to NUMPY_GRAM_MAX, by BLAS dsyrk (upper triangle only) above.
    `matrix`: an array, or anything that slices like one (a round_trip.RoundTrip rounds each block)."""
    tall = matrix if matrix.shape[0] >= matrix.shape[1] else matrix.T
    n = tall.shape[1]
    rows = gram_block_rows(n)
    buffer = np.empty((min(rows, tall.shape[0]), n))

    def blocks():
        for start in range(0, tall.shape[0], rows):
            block = tall[start:start + rows]
            np.copyto(buffer[:len(block)], block)
            yield buffer[:len(block)]

    if work(matrix.shape) <= NUMPY_GRAM_MAX:
        with np.errstate(over="ignore"):  # an overflowing Gram is reported (GRAM_OVERFLOW), not warned
            return sum(block.T @ block for block in blocks())
    from scipy.linalg.blas import dsyrk

    gram = np.zeros((n, n), order="F")
    for block in blocks():
        gram = dsyrk(1.0, block.T, beta=1.0, c=gram, trans=0, overwrite_c=1)  # += block^T block
    return gram


# From this side up, LAPACK's two-stage tridiagonal reduction (dense -> band by BLAS-3, then band
# -> tridiagonal) beats syevd's one-stage reduction, half of whose flops are memory-bound BLAS-2
# (benchmarks/eigensolvers.py, 2-core EPYC, one thread: n = 4096 7.6 s against 10.6 s, n = 3072 3.4 vs
# 4.3 s; n = 2048 1.21 vs 1.13 s).
TWO_STAGE_MIN_N = 3072


def gram_eigenvalues(gram: np.ndarray) -> np.ndarray:
    """Eigenvalues only, ascending, of a symmetric matrix held in (at least) its upper triangle:
    LAPACK syevd through numpy (as fast as scipy's, without its import), or from TWO_STAGE_MIN_N
    up its two-stage variant (syevd_2stage, two_stage_eigenvalues) where the LAPACK numpy
    ships has it. The matrix is left as it was."""
    solver = two_stage_eigenvalues() if len(gram) >= TWO_STAGE_MIN_N else None
    return np.linalg.eigvalsh(gram, UPLO="U") if solver is None else solver(gram)


@functools.cache
def two_stage_eigenvalues():
    """gram -> its eigenvalues, ascending, by LAPACKE_dsyevd_2stage (JOBZ = N) of the OpenBLAS
    bundled with numpy's wheels (ILP64, symbols prefixed scipy_ and suffixed 64_); None where
    this numpy has no such library (a conda or system numpy): numpy's eigvalsh serves then."""
    import ctypes

    libraries = sorted((Path(np.__file__).parent.parent / "numpy.libs").glob("libscipy_openblas64_*"))
    try:
        function = ctypes.CDLL(str(libraries[0])).scipy_LAPACKE_dsyevd_2stage64_
    except (IndexError, OSError, AttributeError):
        return None
    function.restype = ctypes.c_int64
    function.argtypes = [ctypes.c_int, ctypes.c_char, ctypes.c_char, ctypes.c_int64, ctypes.c_void_p,
                         ctypes.c_int64, ctypes.c_void_p]
    column_major = 102  # LAPACK_COL_MAJOR: a Fortran-ordered copy, its upper triangle read

    def eigenvalues(gram: np.ndarray) -> np.ndarray:
        work = np.array(gram, dtype=np.float64, order="F")  # overwritten by LAPACK
        n = len(work)
        values = np.empty(n)
        info = function(column_major, b"N", b"U", n, work.ctypes.data, max(n, 1), values.ctypes.data)
        if info != 0:
            raise np.linalg.LinAlgError(f"LAPACKE_dsyevd_2stage failed (info {info})")
        return values

    return eigenvalues


def gram_floor(lambda_max: float, n: int) -> float:
    """n eps64 lambda_max: eigenvalues of the float64 Gram at or below it are rounding noise
    (numpy's matrix_rank rule applied to lambda = sigma^2), so sigma below sqrt(n eps64) sigma_max
    is not resolved."""
    return n * EPS64 * lambda_max


def sigma_from_gram(eigs: np.ndarray, dtype) -> np.ndarray:
    """sigma = sqrt(lambda), descending, in `dtype`; eigenvalues at or below gram_floor (negative
    ones included, which rounding makes of a singular Gram's zeros) are reported as sigma 0."""
    eigs = np.asarray(eigs, np.float64)[::-1]
    if eigs.size == 0:
        return np.zeros(0, dtype)
    resolved = eigs > gram_floor(max(eigs[0], 0.0), eigs.size)
    return np.sqrt(np.where(resolved, eigs, 0.0)).astype(dtype)


# Why a finite matrix has NaN singular values on the Gram path: its float64 Gram overflowed
# (entries near sqrt(float64 max), 1e154: only a float64 matrix holds such values, and its
# eigenvalues sigma^2, which every heavy-tail metric reads, overflow float64 as well).
GRAM_OVERFLOW = "the float64 Gram matrix overflows: weights near 1e154 have eigenvalues sigma^2 beyond float64"


def singular_values_gram(matrix: np.ndarray) -> np.ndarray:
    """All min(rows, cols) singular values, descending, in matrix.dtype, from the float64 Gram;
    NaN where the Gram is non-finite: a matrix with a non-finite value, or one whose Gram
    overflows float64 (GRAM_OVERFLOW)."""
    if matrix.size == 0:
        return np.zeros(0, matrix.dtype)
    gram = gram_matrix(matrix)
    if not np.isfinite(gram).all():  # a non-finite matrix (the precision sweep's overflow check)
        return np.full(len(gram), np.nan, matrix.dtype)
    return sigma_from_gram(gram_eigenvalues(gram), matrix.dtype)
