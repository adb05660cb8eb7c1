"""Singular values of every weight matrix of a unit, on LAPACK (CPU) or torch (CUDA): the choice
of method per matrix and the dispatch to the backend.

Precision policy: weights are read as stored, upcast exactly to `compute_dtype` (float32 by
default, float64 available; matrices.upcast). Two methods (config `svd_method`, docs/metrics.md):
`gesdd`, the SVD in that dtype, and `gram`, the eigenvalues of the smaller Gram matrix formed in
float64 (gram.py); `auto` picks per matrix by shape and dtype (svd_method_for). Rows record
source_dtype, compute_dtype, backend and svd_method. The CPU path never imports torch
(svd_torch.py does, when called), so a per-layer job starts fast.
"""

import logging
import time

import numpy as np

from blockscope.analysis.gram import singular_values_gram
from blockscope.analysis.matrices import work
from blockscope.analysis.svd_torch import CudaOutOfMemory, singular_values_torch
from blockscope.runtime.device import torch_device

log = logging.getLogger(__name__)

# Importing scipy.linalg costs a per-unit job ~0.3 CPU s, more than every SVD of a small model's
# unit (benchmarks/job_start.py), so small matrices go through numpy's LAPACK and scipy is
# imported only for large ones, where it pays: its gesdd measured 2x faster than numpy's from
# 576 x 576 up. Sizes are rows x cols x min(rows, cols) (matrices.work; the Gram path's own
# threshold is gram.NUMPY_GRAM_MAX).
NUMPY_GESDD_MAX = 2e8   # numpy's gesdd up to 576 x 576 (+0.04 s there against scipy's)


def singular_values(matrix: np.ndarray) -> np.ndarray:
    """All singular values, descending, by LAPACK's divide-and-conquer (gesdd) in matrix.dtype."""
    if matrix.size == 0:
        return np.zeros(0, matrix.dtype)
    if work(matrix.shape) <= NUMPY_GESDD_MAX:
        return np.linalg.svd(matrix, compute_uv=False)
    import scipy.linalg

    return scipy.linalg.svdvals(matrix, check_finite=False, overwrite_a=True)


# auto's shape rule (measured on a 2-core CPU, docs/metrics.md "SVD method"): gram when the matrix
# is at least GRAM_ASPECT times longer than wide or its short side is at least GRAM_MIN_SIDE.
GRAM_ASPECT, GRAM_MIN_SIDE = 1.5, 768


def svd_method_for(method: str, shape, dtype) -> str:
    """gesdd or gram for one matrix. auto: gram for a float32 matrix of a shape where it is the
    faster (gram_pays_off), gesdd otherwise; float64 keeps gesdd, whose small singular values
    are float64-accurate where the Gram's are not (below gram.gram_floor). The Gram's float64
    values are more accurate than a float32 gesdd's everywhere above gram_floor."""
    if method != "auto":
        return method
    return "gram" if np.dtype(dtype) == np.float32 and gram_pays_off(shape) else "gesdd"


def gram_pays_off(shape) -> bool:
    """auto's shape rule: max/min >= GRAM_ASPECT or min >= GRAM_MIN_SIDE, or a matrix small enough
    for numpy's gesdd (work <= NUMPY_GESDD_MAX), which the Gram path beats 1.1-2.0x (64 to 576 square)."""
    long, short = max(shape), min(shape)
    return short > 0 and (long / short >= GRAM_ASPECT or short >= GRAM_MIN_SIDE or work(shape) <= NUMPY_GESDD_MAX)


SINGULAR_VALUES = {"gesdd": singular_values, "gram": singular_values_gram}


def compute_spectra(matrices: list, backend: str, method: str = "gesdd"):
    """sigma for each matrix, the seconds each took and the backend that ran it, each matrix by
    svd_method_for(method, its shape, its dtype) (callers record that per row).

    backend "cuda" (or "torch-cpu", the same code on the CPU) falls back to LAPACK on a CUDA
    out-of-memory or where no GPU turned up, with a warning in the log.
    """
    methods = [svd_method_for(method, matrix.shape, matrix.dtype) for matrix in matrices]
    if backend == "cuda" and torch_device(backend) != "cuda":
        backend = "cpu"
    if backend != "cpu" and matrices:
        device = "cuda" if backend == "cuda" else "cpu"
        started = time.perf_counter()
        try:
            sigmas = singular_values_torch(matrices, device, methods)
            per = (time.perf_counter() - started) / len(matrices)
            return sigmas, [per] * len(matrices), backend
        except CudaOutOfMemory as exc:
            log.warning("CUDA out of memory (%s): falling back to CPU LAPACK for this unit", exc)
    sigmas, seconds = [], []
    for matrix, chosen in zip(matrices, methods):
        started = time.perf_counter()
        sigmas.append(SINGULAR_VALUES[chosen](np.array(matrix) if chosen == "gesdd" else matrix))  # gesdd overwrites
        seconds.append(time.perf_counter() - started)
    return sigmas, seconds, "cpu"
