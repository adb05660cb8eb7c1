"""Localisation of a matrix's top-k singular vectors (WeightWatcher 0.7.7's vectors=True, in the
spirit of RMT_Util.py localization_ratio / participation_ratio / vector_entropy; our definitions are
the standard ones of random-matrix theory, docs/metrics.md says how they relate to WeightWatcher's).

For a unit vector v of length n, p_i = v_i^2 is a distribution over its entries: the inverse
participation ratio sum p_i^2 is 1/n when the mass is spread evenly and 1 on a single entry (about
3/n for a random Gaussian vector); the entropy of p, over ln n, is 1 spread and 0 on one entry; the
top-entry mass is the share of p in the m largest entries.

The vectors come from the float64 Gram matrix of the short side: its top-k eigenvectors are one side's
singular vectors, W or W^T times them over sigma the other's (on the CPU distances.top_singular_vectors,
which the deltas' subspace distances use too; on a GPU top_singular_vectors_torch, batched by shape)."""

import logging

import numpy as np

from blockscope.analysis.distances import top_singular_vectors
from blockscope.analysis.gram import gram_floor
from blockscope.analysis.svd_torch import CudaOutOfMemory
from blockscope.diagnostic_layout import VECTOR_COLUMNS
from blockscope.runtime.device import torch_device

log = logging.getLogger(__name__)


def inverse_participation_ratio(v: np.ndarray) -> float:
    """sum v_i^4 / (sum v_i^2)^2: 1/n delocalised, 1 on one entry."""
    p = _mass(v)
    return float(np.sum(p * p))


def vector_entropy(v: np.ndarray) -> float:
    """-sum p_i ln p_i / ln n with p_i = v_i^2 / |v|^2 (natural log, normalised by its maximum ln n:
    1 spread evenly, 0 on one entry, about 1 - 0.73 / ln n for a random Gaussian vector); NaN for n < 2."""
    p = _mass(v)
    if p.size < 2:
        return float("nan")
    held = p[p > 0]
    return float(-np.sum(held * np.log(held)) / np.log(p.size))


def top_entry_mass(v: np.ndarray, m: int) -> float:
    """The share of |v|^2 in the m largest v_i^2."""
    p = _mass(v)
    m = min(int(m), p.size)
    return float(np.sum(np.partition(p, p.size - m)[p.size - m:])) if m > 0 else 0.0


def _mass(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    squared = v * v
    return squared / squared.sum()


def singular_vector_pairs(matrices: list, k: int, backend: str) -> list:
    """(U_k, V_k) of each matrix: backend "cuda" (or "torch-cpu") through top_singular_vectors_torch,
    falling back to the CPU where no GPU turned up or on a CUDA out-of-memory, as
    spectra.compute_spectra does; else distances.top_singular_vectors one matrix at a time."""
    if backend == "cuda" and torch_device(backend) != "cuda":
        backend = "cpu"
    if backend != "cpu" and matrices:
        try:
            return top_singular_vectors_torch(matrices, k, "cuda" if backend == "cuda" else "cpu")
        except CudaOutOfMemory as exc:
            log.warning("CUDA out of memory (%s): singular vectors on the CPU for this unit", exc)
    return [top_singular_vectors(matrix, k)[::2] for matrix in matrices]


def top_singular_vectors_torch(matrices: list, k: int, device: str) -> list:
    """(U_k, V_k) of each matrix as distances.top_singular_vectors, on torch (CUDA, or the CPU for
    tests), batched over the matrices of one shape: float64 Gram of the short side, torch.linalg.eigh,
    the other side as W V / sigma (or W^T U / sigma); singular values at or below the Gram's
    rounding floor left out. A CUDA out-of-memory raises CudaOutOfMemory."""
    import torch

    batches, result = {}, [None] * len(matrices)
    for index, matrix in enumerate(matrices):
        batches.setdefault(matrix.shape, []).append(index)
    try:
        for shape, indices in batches.items():
            batch = torch.from_numpy(np.stack([matrices[i] for i in indices])).to(device, torch.float64)
            wide = shape[0] < shape[1]  # the Gram is W W^T: its eigenvectors are the left ones
            eigs, vectors = torch.linalg.eigh(batch @ batch.mT if wide else batch.mT @ batch)
            eigs, vectors = eigs.flip(-1).cpu().numpy(), vectors.flip(-1)
            for row, i in enumerate(indices):
                floor = gram_floor(max(float(eigs[row][0]), 0.0), eigs.shape[-1])
                kept = min(int(k), int(np.count_nonzero(eigs[row] > floor)))
                short = vectors[row, :, :kept]
                sigma = torch.from_numpy(np.sqrt(eigs[row][:kept])).to(device)
                other = ((batch[row].mT if wide else batch[row]) @ short / sigma).cpu().numpy()
                result[i] = (short.cpu().numpy(), other) if wide else (other, short.cpu().numpy())
            del batch, vectors
    except torch.cuda.OutOfMemoryError as exc:
        raise CudaOutOfMemory(str(exc)) from None
    return result


def vector_metrics(left: np.ndarray, right: np.ndarray, top_entries: int) -> dict:
    """VECTOR_COLUMNS over the columns of left and right (k of each): vector_k, the mean and the
    largest inverse participation ratio, the mean and the smallest entropy, the mean and the largest
    top-entry mass. vector_k None and the rest NaN without a vector."""
    vectors = [*np.asarray(left).T, *np.asarray(right).T]
    if not vectors:
        return {"vector_k": None, **dict.fromkeys(VECTOR_COLUMNS[1:], float("nan"))}
    ipr = np.array([inverse_participation_ratio(v) for v in vectors])
    entropy = np.array([vector_entropy(v) for v in vectors])  # NaN only for a vector of one entry
    mass = np.array([top_entry_mass(v, top_entries) for v in vectors])
    with np.errstate(invalid="ignore"):
        low_entropy = float(np.nanmin(entropy)) if np.isfinite(entropy).any() else float("nan")
        mean_entropy = float(np.nanmean(entropy)) if np.isfinite(entropy).any() else float("nan")
    return {"vector_k": int(np.shape(left)[1]), "vector_ipr_mean": float(ipr.mean()),
            "vector_ipr_max": float(ipr.max()), "vector_entropy_mean": mean_entropy, "vector_entropy_min": low_entropy,
            "vector_top_mass_mean": float(mass.mean()), "vector_top_mass_max": float(mass.max())}
