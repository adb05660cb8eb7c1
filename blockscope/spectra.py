"""Singular values of every weight matrix of a unit, on LAPACK (CPU) or torch (CUDA).

Precision policy: weights are read as stored, upcast exactly to `compute_dtype` (float32 by
default, float64 available), and every SVD runs in that dtype. Rows record source_dtype,
compute_dtype and backend. The CPU path never imports torch, so a per-layer job starts fast.
"""

import logging
import time
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import scipy.linalg

from .device import torch_device
from .dtypes import numpy_dtype, precision_dtype, safetensors_dtype

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


def singular_values(matrix: np.ndarray) -> np.ndarray:
    """All singular values, descending, by LAPACK's divide-and-conquer (gesdd) in matrix.dtype."""
    if matrix.size == 0:
        return np.zeros(0, matrix.dtype)
    return scipy.linalg.svdvals(matrix, check_finite=False, overwrite_a=True)


class CudaOutOfMemory(RuntimeError):
    pass


def singular_values_torch(matrices: list, device: str) -> list:
    """Batched torch.linalg.svdvals over same-shape matrices on `device` (cuda, or cpu for tests)."""
    import torch

    by_shape = {}
    for index, matrix in enumerate(matrices):
        by_shape.setdefault(matrix.shape, []).append(index)
    result = [None] * len(matrices)
    try:
        for shape, indices in by_shape.items():
            batch = torch.from_numpy(np.stack([matrices[i] for i in indices])).to(device)
            sigma = torch.linalg.svdvals(batch).cpu().numpy()
            for row, i in enumerate(indices):
                result[i] = sigma[row]
            del batch
    except torch.cuda.OutOfMemoryError as exc:
        raise CudaOutOfMemory(str(exc)) from None
    return result


def compute_spectra(matrices: list, backend: str):
    """sigma for each matrix, the seconds each took and the backend that ran it.

    backend "cuda" (or "torch-cpu", the same code on the CPU) falls back to LAPACK on a CUDA
    out-of-memory or where no GPU turned up, with a warning in the log.
    """
    if backend == "cuda" and torch_device(backend) != "cuda":
        backend = "cpu"
    if backend != "cpu" and matrices:
        device = "cuda" if backend == "cuda" else "cpu"
        started = time.perf_counter()
        try:
            sigmas = singular_values_torch(matrices, device)
            per = (time.perf_counter() - started) / len(matrices)
            return sigmas, [per] * len(matrices), backend
        except CudaOutOfMemory as exc:
            log.warning("CUDA out of memory (%s): falling back to CPU LAPACK for this unit", exc)
    sigmas, seconds = [], []
    for matrix in matrices:
        started = time.perf_counter()
        sigmas.append(singular_values(matrix.copy()))
        seconds.append(time.perf_counter() - started)
    return sigmas, seconds, "cpu"


# --- precision sweep -----------------------------------------------------------------------

# Formats with a small range are used with a per-tensor scale (amax -> format max), as FP8
# inference does; the others are cast as they are.
SCALED_PRECISIONS = {"fp8-e4m3": float(ml_dtypes.finfo(ml_dtypes.float8_e4m3fn).max)}


def svd_dtype(precision: str, compute_dtype) -> np.dtype:
    """The dtype a precision's SVD runs in: the wider of `compute_dtype` and the precision's own
    compute type (float64 for fp64, float32 for every narrower format). fp64 is thus measured in
    float64 whatever compute_dtype says; fp32 and below run in compute_dtype, as the spectra do."""
    natural = np.float64 if precision == "fp64" else np.float32
    return np.promote_types(natural, np.dtype(compute_dtype))


def cast_round_trip(matrix: np.ndarray, precision: str, compute_dtype) -> np.ndarray:
    """The matrix rounded to `precision` and back, in `compute_dtype`. Rounding starts from the
    matrix as given (read it in float64 and the fp64 round trip keeps every bit); the result is
    then held in compute_dtype (see svd_dtype for the dtype each precision needs)."""
    matrix = np.asarray(matrix)
    if matrix.dtype.kind != "f":
        matrix = matrix.astype(np.float64)
    compute_dtype = np.dtype(compute_dtype).type
    scale = 1.0
    if precision in SCALED_PRECISIONS:
        amax = float(np.max(np.abs(matrix))) if matrix.size else 0.0
        scale = amax / SCALED_PRECISIONS[precision] if amax > 0 and np.isfinite(amax) else 1.0
    scaled = matrix / matrix.dtype.type(scale) if scale != 1.0 else matrix
    rounded = scaled.astype(precision_dtype(precision)).astype(compute_dtype)
    return rounded * compute_dtype(scale) if scale != 1.0 else rounded
