"""Singular values of every weight matrix of a unit, on LAPACK (CPU) or torch (CUDA).

Precision policy: weights are read as stored, upcast exactly to `compute_dtype` (float32 by
default, float64 available). Two methods (config `svd_method`, docs/metrics.md): `gesdd`, the
SVD in that dtype, and `gram`, the eigenvalues of the smaller Gram matrix formed in float64;
`auto` picks per matrix by shape and dtype (svd_method_for). Rows record source_dtype,
compute_dtype, backend and svd_method. The CPU path never imports torch, so a per-layer job
starts fast.
"""

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from blockscope.runtime.device import torch_device
from blockscope.io.dtypes import numpy_dtype, precision_dtype, safetensors_dtype

log = logging.getLogger(__name__)


@dataclass
class Matrix:
    """One 2-D weight matrix, out x in, with where it came from."""
    param_name: str
    expert: int | None
    values: np.ndarray

    @property
    def name(self) -> str:
        return self.param_name if self.expert is None else f"{self.param_name}[{self.expert}]"


EXPERT_STACK = "moe_expert"  # the block type whose 3-D tensors stack one matrix per expert


def not_a_matrix(dtype: str, shape, block_type: str) -> str | None:
    """Why a stored tensor of rank 2 or more holds no weight matrix to analyse (None when it
    does). Integer and bool tensors are indices, masks or packed codes, not weights; a 3-D
    tensor is split only as an expert stack; rank 4 and more is never guessed at."""
    kind = numpy_dtype(dtype).kind
    if kind in "iub":
        what = "bool" if kind == "b" else "integer"
        return f"{what} tensor ({dtype}): not a weight matrix"
    rank, dims = len(shape), "x".join(map(str, shape))
    if rank == 3 and block_type != EXPERT_STACK:
        return f"3-D tensor ({dims}) that is not an expert stack: not analysed"
    if rank >= 4:
        return f"{rank}-D tensor ({dims}): not analysed"
    return None


def matrices_of(param_name: str, array: np.ndarray, layout: str = "out_in", block_type: str | None = None):
    """The 2-D matrices in a stored tensor: itself, transposed when stored in x out (GPT-2
    Conv1D), or one per expert for a 3-D expert stack (block_type moe_expert). 1-D tensors hold
    none; any other tensor is refused (ValueError): not_a_matrix says why, and the caller
    reports it instead of analysing a guess."""
    if array.ndim < 2:
        return
    problem = not_a_matrix(safetensors_dtype(array.dtype), array.shape, block_type)
    if problem is not None:
        raise ValueError(f"{param_name}: {problem}")
    if array.ndim == 2:
        yield Matrix(param_name, None, array.T if layout == "in_out" else array)
    else:
        for expert in range(array.shape[0]):
            yield Matrix(param_name, expert, array[expert])


def upcast(matrix: np.ndarray, compute_dtype) -> np.ndarray:
    """Exact upcast of a stored matrix (bf16/fp16/fp8/fp32) to the compute dtype."""
    return np.ascontiguousarray(matrix, dtype=compute_dtype)


# Importing scipy.linalg costs a per-unit job ~0.3 CPU s, more than every SVD of a small model's
# unit (benchmarks/job_start.py), so small matrices go through numpy's LAPACK and scipy is
# imported only for large ones, where it pays: its gesdd measured 2x faster than numpy's from
# 576 x 576 up, and BLAS dsyrk forms a large Gram matrix with half gemm's flops. Sizes are
# rows x cols x min(rows, cols) (the work of either method).
NUMPY_GESDD_MAX = 2e8   # numpy's gesdd up to 576 x 576 (+0.04 s there against scipy's)
NUMPY_GRAM_MAX = 3e10   # numpy's Gram product within 12 % of dsyrk up to 6144 x 2048


def work(shape) -> float:
    """rows x cols x min(rows, cols): what an SVD or a Gram product of the matrix scales with."""
    rows, cols = shape
    return float(rows) * cols * min(rows, cols)


def singular_values(matrix: np.ndarray) -> np.ndarray:
    """All singular values, descending, by LAPACK's divide-and-conquer (gesdd) in matrix.dtype."""
    if matrix.size == 0:
        return np.zeros(0, matrix.dtype)
    if work(matrix.shape) <= NUMPY_GESDD_MAX:
        return np.linalg.svd(matrix, compute_uv=False)
    import scipy.linalg

    return scipy.linalg.svdvals(matrix, check_finite=False, overwrite_a=True)


# --- the Gram path: eigenvalues of the n x n Gram matrix, n = min(rows, cols) ------------------

# auto's shape rule (measured on a 2-core CPU, docs/metrics.md "SVD method"): gram when the matrix
# is at least GRAM_ASPECT times longer than wide or its short side is at least GRAM_MIN_SIDE.
GRAM_ASPECT, GRAM_MIN_SIDE = 1.5, 768
# Entries upcast to float64 at a time (16 MB): the Gram's extra memory stays small, and the block,
# with the rounding temporaries of a precision sweep, stays below glibc's largest mmap threshold
# (32 MB), so it is reused from the heap instead of mapped and faulted in anew for every block.
GRAM_BLOCK_ENTRIES = 1 << 21
EPS64 = float(np.finfo(np.float64).eps)


def svd_method_for(method: str, shape, dtype) -> str:
    """gesdd or gram for one matrix. auto: gram for a float32 matrix of a shape where it is the
    faster (gram_pays_off), gesdd otherwise; float64 keeps gesdd, whose small singular values
    are float64-accurate where the Gram's are not (below gram_floor). The Gram's float64 values
    are more accurate than a float32 gesdd's everywhere above gram_floor."""
    if method != "auto":
        return method
    return "gram" if np.dtype(dtype) == np.float32 and gram_pays_off(shape) else "gesdd"


def gram_pays_off(shape) -> bool:
    """auto's shape rule: max/min >= GRAM_ASPECT or min >= GRAM_MIN_SIDE, or a matrix small enough
    for numpy's gesdd (work <= NUMPY_GESDD_MAX), which the Gram path beats 1.1-2.0x (64 to 576 square)."""
    long, short = max(shape), min(shape)
    return short > 0 and (long / short >= GRAM_ASPECT or short >= GRAM_MIN_SIDE or work(shape) <= NUMPY_GESDD_MAX)


def gram_block_rows(n: int) -> int:
    """Rows of a Gram block for a short side of n: GRAM_BLOCK_ENTRIES entries, at least 256 rows
    (BLAS-3 keeps its speed down to there)."""
    return max(256, GRAM_BLOCK_ENTRIES // max(n, 1))


def gram_matrix(matrix) -> np.ndarray:
    """W^T W of a tall matrix, W W^T of a wide one: n x n, n = min(rows, cols), in float64,
    accumulated over row blocks (gram_block_rows) copied into one float64 buffer, by numpy's
    product (both triangles) up to NUMPY_GRAM_MAX, by BLAS dsyrk (upper triangle only) above.
    `matrix`: an array, or anything that slices like one (a RoundTrip rounds each block)."""
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


SINGULAR_VALUES = {"gesdd": singular_values, "gram": singular_values_gram}


class CudaOutOfMemory(RuntimeError):
    pass


def singular_values_torch(matrices: list, device: str, method: str = "gesdd") -> list:
    """Batched over same-shape matrices on `device` (cuda, or cpu for tests): torch.linalg.svdvals
    (method gesdd) or the Gram path (gram_singular_values_torch); auto resolved per shape."""
    import torch

    by_shape = {}
    for index, matrix in enumerate(matrices):
        by_shape.setdefault(matrix.shape, []).append(index)
    result = [None] * len(matrices)
    try:
        for shape, indices in by_shape.items():
            batch = torch.from_numpy(np.stack([matrices[i] for i in indices])).to(device)
            gram = svd_method_for(method, shape, matrices[indices[0]].dtype) == "gram"
            sigma = (gram_singular_values_torch(batch) if gram else torch.linalg.svdvals(batch)).cpu().numpy()
            for row, i in enumerate(indices):
                result[i] = sigma[row]
            del batch
    except torch.cuda.OutOfMemoryError as exc:
        raise CudaOutOfMemory(str(exc)) from None
    return result


def gram_singular_values_torch(batch):
    """The Gram path in torch: float64 Gram of the short side, torch.linalg.eigvalsh, sigma as in
    sigma_from_gram (below gram_floor: 0), descending, in the batch's dtype."""
    import torch

    wide = batch.shape[-2] < batch.shape[-1]
    values = batch.to(torch.float64)
    gram = values @ values.mT if wide else values.mT @ values
    del values
    eigs = torch.linalg.eigvalsh(gram).flip(-1)
    floor = gram_floor(1.0, eigs.shape[-1]) * eigs[..., :1].clamp_min(0)
    return torch.where(eigs > floor, eigs, 0.0).sqrt().to(batch.dtype)


def compute_spectra(matrices: list, backend: str, method: str = "gesdd"):
    """sigma for each matrix, the seconds each took and the backend that ran it, each matrix by
    svd_method_for(method, its shape, its dtype) (callers record that per row).

    backend "cuda" (or "torch-cpu", the same code on the CPU) falls back to LAPACK on a CUDA
    out-of-memory or where no GPU turned up, with a warning in the log.
    """
    if backend == "cuda" and torch_device(backend) != "cuda":
        backend = "cpu"
    if backend != "cpu" and matrices:
        device = "cuda" if backend == "cuda" else "cpu"
        started = time.perf_counter()
        try:
            sigmas = singular_values_torch(matrices, device, method)
            per = (time.perf_counter() - started) / len(matrices)
            return sigmas, [per] * len(matrices), backend
        except CudaOutOfMemory as exc:
            log.warning("CUDA out of memory (%s): falling back to CPU LAPACK for this unit", exc)
    sigmas, seconds = [], []
    for matrix in matrices:
        started = time.perf_counter()
        chosen = svd_method_for(method, matrix.shape, matrix.dtype)
        sigmas.append(SINGULAR_VALUES[chosen](np.array(matrix) if chosen == "gesdd" else matrix))  # gesdd overwrites
        seconds.append(time.perf_counter() - started)
    return sigmas, seconds, "cpu"


# --- precision sweep -----------------------------------------------------------------------

# Formats with a small range are used with a per-tensor scale (amax -> format max), as FP8
# inference does; the others are cast as they are.
SCALED_PRECISIONS = {"fp8-e4m3": float(ml_dtypes.finfo(ml_dtypes.float8_e4m3fn).max)}


# A round trip through a precision changes no value of a tensor stored in these dtypes: every
# value of the stored format is a value of the precision's (the precision sweep then reuses the
# spectra's singular values without casting).
EXACT_ROUND_TRIPS = {
    "fp64": {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"},
    "fp32": {"F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"},
    "fp16": {"F16", "F8_E4M3", "F8_E5M2"},
    "bf16": {"BF16", "F8_E4M3", "F8_E5M2"},
}


def round_trip_is_exact(stored_dtype: str, precision: str) -> bool:
    """True when every value stored as `stored_dtype` (safetensors spelling) survives a round trip
    through `precision` unchanged (EXACT_ROUND_TRIPS)."""
    return stored_dtype in EXACT_ROUND_TRIPS.get(precision, ())


def svd_dtype(precision: str, compute_dtype) -> np.dtype:
    """The dtype a precision's SVD runs in: the wider of `compute_dtype` and the precision's own
    compute type (float64 for fp64, float32 for every narrower format). fp64 is thus measured in
    float64 whatever compute_dtype says; fp32 and below run in compute_dtype, as the spectra do."""
    natural = np.float64 if precision == "fp64" else np.float32
    return np.promote_types(natural, np.dtype(compute_dtype))


def round_trip_scale(matrix, precision: str) -> float:
    """The per-tensor scale of a SCALED_PRECISIONS format (amax / format max; 1.0 for the others,
    for a zero matrix and for a non-finite amax)."""
    if precision not in SCALED_PRECISIONS or not matrix.size:
        return 1.0
    amax = max(float(np.max(matrix)), -float(np.min(matrix)))  # no |matrix| copy; NaN stays NaN
    return amax / SCALED_PRECISIONS[precision] if amax > 0 and np.isfinite(amax) else 1.0


def cast_round_trip(matrix: np.ndarray, precision: str, compute_dtype, scale: float | None = None) -> np.ndarray:
    """The matrix rounded to `precision` and back, in `compute_dtype`. Rounding starts from the
    matrix as given (read it in float64 and the fp64 round trip keeps every bit); the result is
    then held in compute_dtype (see svd_dtype for the dtype each precision needs). scale: the
    whole tensor's round_trip_scale, for a caller that rounds it a block at a time."""
    matrix = np.asarray(matrix)
    if matrix.dtype.kind != "f":
        matrix = matrix.astype(np.float64)
    compute_dtype = np.dtype(compute_dtype).type
    scale = round_trip_scale(matrix, precision) if scale is None else scale
    scaled = matrix / matrix.dtype.type(scale) if scale != 1.0 else matrix
    rounded = scaled.astype(precision_dtype(precision)).astype(compute_dtype)
    return rounded * compute_dtype(scale) if scale != 1.0 else rounded


class RoundTrip:
    """A matrix rounded to `precision` and back in `dtype` (cast_round_trip), rounded as it is
    read: indexing rounds what it selects (rounding is elementwise, so it commutes with any slice
    and with the transpose), np.asarray rounds it all. The Gram path reads it a block at a time,
    so the precision sweep never holds a rounded copy of a large matrix."""

    def __init__(self, source: np.ndarray, precision: str, dtype, scale: float | None = None):
        self.source, self.precision, self.dtype = source, precision, np.dtype(dtype)
        self.scale = round_trip_scale(source, precision) if scale is None else scale
        self.shape, self.size = source.shape, source.size

    @property
    def T(self):
        return RoundTrip(self.source.T, self.precision, self.dtype, self.scale)

    def __getitem__(self, key) -> np.ndarray:
        return cast_round_trip(self.source[key], self.precision, self.dtype, self.scale)

    def __array__(self, dtype=None, copy=None):
        if copy is False:
            raise ValueError("a RoundTrip is rounded on demand: it has no array to share without a copy")
        rounded = self[...]
        return rounded if dtype is None else rounded.astype(dtype)

    def row_blocks(self):
        """(source block, rounded block) pairs over blocks of rows, GRAM_BLOCK_ENTRIES each."""
        rows = gram_block_rows(self.shape[1])
        for start in range(0, self.shape[0], rows):
            yield self.source[start:start + rows], self[start:start + rows]
