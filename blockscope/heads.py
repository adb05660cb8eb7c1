"""Per-head QK and OV circuits of one layer, from its projection matrices.

The checkpoint's layouts are decoded in attention_layout. Biases are ignored: the kernels are
the bilinear parts W_Q^T W_K and W_O W_V of the circuits (a bias adds a rank-one or constant term).
"""

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from .attention_layout import projection_names, read_projections
from .factored import FactoredMatrix
from .layout import EIGENVALUE_COLUMNS, HEAD_COLUMNS, HEAD_ENERGY_FRACTIONS, energy_column
from .metrics import effective_rank, energy_rank


def kv_head(h: int, heads: int, kv_heads: int) -> int:
    """Grouped-query attention: query head h reads key/value head h // (H / G)."""
    return h // (heads // kv_heads)


@dataclass(eq=False)
class AttentionWeights:
    """One layer's projections, out x in: q (H*d, D), k and v (G*d, D), o (D, H*d)."""
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    o: np.ndarray
    heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def from_projections(cls, arrays: dict, dims: dict) -> "AttentionWeights":
        """From attention_layout.read_projections' arrays and the model's dims."""
        q, k, v, o = (arrays[part] for part in "qkvo")
        return cls(q, k, v, o, dims["heads"], dims["kv_heads"], dims["head_dim"])

    def kv_head(self, h) -> int:
        return kv_head(h, self.heads, self.kv_heads)

    @cached_property
    def kv_of_heads(self) -> np.ndarray:
        return np.array([self.kv_head(h) for h in range(self.heads)])

    def _stack(self, matrix, count):
        """(count * d, D) -> (count, d, D)."""
        return np.asarray(matrix, dtype=np.float64).reshape(count, self.head_dim, -1)

    @cached_property
    def qk(self) -> FactoredMatrix:
        """W_Q,h^T W_K,g (D x D) for every query head h, stacked and factored."""
        queries_t = np.swapaxes(self._stack(self.q, self.heads), -1, -2)
        return FactoredMatrix.grouped(queries_t, self._stack(self.k, self.kv_heads), self.kv_of_heads)

    @cached_property
    def ov(self) -> FactoredMatrix:
        """W_O,h W_V,g (D x D) for every query head h, stacked and factored."""
        outputs = np.swapaxes(self._stack(self.o.T, self.heads), -1, -2)
        return FactoredMatrix.grouped(outputs, self._stack(self.v, self.kv_heads), self.kv_of_heads)


def attention_weights(tensors: dict, inventory: pd.DataFrame, dims: dict, model: str = None):
    """AttentionWeights of one layer, None when it has no attention; BlockscopeError on bad shapes."""
    arrays = read_projections(tensors, projection_names(inventory), dims, model)
    return None if arrays is None else AttentionWeights.from_projections(arrays, dims)


def eigen_effective_rank(eigs: np.ndarray) -> float:
    """exp of the entropy of |lambda| / sum |lambda|."""
    return effective_rank(np.abs(eigs))


def complex_fraction(eigs: np.ndarray, tol: float = 1e-6) -> float:
    """Share of eigenvalues with |imag| > tol * max |lambda|."""
    if eigs.size == 0 or np.max(np.abs(eigs)) == 0:
        return float("nan")
    return float(np.mean(np.abs(eigs.imag) > tol * np.max(np.abs(eigs))))


def top_eigen_energy(eigs: np.ndarray, norm: float, count: int) -> float:
    """sum of the top `count` |lambda|^2 over ||A||_F^2 (Schur: <= 1, = 1 for a normal A)."""
    return float(np.sum(np.abs(eigs[:count]) ** 2) / norm**2) if norm > 0 else float("nan")


def head_rows(weights: AttentionWeights) -> list:
    """Metrics of every query head, from the stacked factored kernels."""
    qk, ov = weights.qk, weights.ov
    qk_sigma, ov_sigma, eigs = qk.singular_values, ov.singular_values, qk.eigenvalues
    asymmetry, qk_norm, ov_norm = qk.asymmetry(), qk.frobenius_norm, ov.frobenius_norm
    rows = []
    for h in range(weights.heads):
        row = {"head": h, "kv_head": weights.kv_head(h),
               "qk_effective_rank": effective_rank(qk_sigma[h]),
               "qk_eig_effective_rank": eigen_effective_rank(eigs[h]),
               "qk_asymmetry": float(asymmetry[h]),
               "qk_complex_fraction": complex_fraction(eigs[h]),
               "qk_top_dhead_energy": top_eigen_energy(eigs[h], qk_norm[h], weights.head_dim),
               "qk_frobenius_norm": float(qk_norm[h]),
               "ov_effective_rank": effective_rank(ov_sigma[h]),
               "ov_frobenius_norm": float(ov_norm[h])}
        for fraction in HEAD_ENERGY_FRACTIONS:
            row[energy_column(fraction, "qk_")] = energy_rank(qk_sigma[h], fraction)
            row[energy_column(fraction, "ov_")] = energy_rank(ov_sigma[h], fraction)
        rows.append(row)
    return rows


def mean_effective_rank(qk_rank, ov_rank):
    """A head's rank in one number: the mean of its QK and OV effective ranks."""
    return (qk_rank + ov_rank) / 2


def quartile_tags(values: pd.Series) -> pd.Series:
    """low-rank / high-rank for the lowest / highest quartile of values, else empty."""
    low, high = values.quantile(0.25), values.quantile(0.75)
    return pd.Series(np.where(values <= low, "low-rank", np.where(values >= high, "high-rank", "")),
                     index=values.index)


def heads_table(model: str, unit: str, layer_index, weights: AttentionWeights | None) -> pd.DataFrame:
    """One row per query head; `tag` by quartiles of mean effective rank within this table."""
    if weights is None:
        return pd.DataFrame(columns=HEAD_COLUMNS)
    rows = [{"model": model, "unit": unit, "layer_index": layer_index, **row} for row in head_rows(weights)]
    table = pd.DataFrame(rows)
    table["mean_effective_rank"] = mean_effective_rank(table["qk_effective_rank"], table["ov_effective_rank"])
    table["tag"] = quartile_tags(table["mean_effective_rank"])
    return table[HEAD_COLUMNS]


def eigenvalue_table(weights: AttentionWeights, h: int) -> pd.DataFrame:
    """Every eigenvalue of one head's QK kernel: real, imaginary, magnitude, cumulative energy."""
    eigs = weights.qk[h].eigenvalues
    columns = (np.arange(1, eigs.size + 1), eigs.real, eigs.imag, np.abs(eigs), cumulative_energy(eigs))
    return pd.DataFrame(dict(zip(EIGENVALUE_COLUMNS, columns)))


def cumulative_energy(eigs: np.ndarray) -> np.ndarray:
    """Running sum of |lambda|^2 over its total (zeros for an all-zero spectrum)."""
    energy = np.cumsum(np.abs(eigs) ** 2)
    return energy / energy[-1] if energy.size and energy[-1] else energy
