"""Per-head QK and OV circuits of one layer, from its projection matrices.

The checkpoint's layouts are decoded in attention_layout. Biases are ignored: the kernels are
the bilinear parts W_Q^T W_K and W_O W_V of the circuits (a bias adds a rank-one or constant term).
"""

import logging
import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from blockscope.analysis.factored import FactoredMatrix
from blockscope.analysis.matrix_formulas import effective_rank, energy_rank
from blockscope.checkpoint.attention_layout import projection_names, read_projections
from blockscope.io.tables import table_from_rows
from blockscope.layout import (
    EIGENVALUE_COLUMNS,
    HEAD_COLUMNS,
    HEAD_ENERGY_FRACTIONS,
    HEAD_METRIC_COLUMNS,
    energy_column,
)

log = logging.getLogger(__name__)


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


def attention_weights(tensors: dict, inventory, dims: dict, model: str = None):
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


NONFINITE_TAG = "non-finite weights"  # the tag of a head whose QK or OV kernel has a NaN or Inf factor
QK_COLUMNS = [c for c in HEAD_METRIC_COLUMNS if c.startswith("qk_")]
OV_COLUMNS = [c for c in HEAD_METRIC_COLUMNS if c.startswith("ov_")]


def finite_kernels(weights: AttentionWeights) -> tuple:
    """(qk_ok, ov_ok): per query head, whether the factors of its QK kernel (its q rows, its kv
    head's k rows) and of its OV kernel (its o columns, its kv head's v rows) are all finite."""
    def per_head(matrix, count):
        return np.isfinite(np.asarray(matrix).reshape(count, -1)).all(axis=1)

    kv = weights.kv_of_heads
    q, o = per_head(weights.q, weights.heads), per_head(weights._stack(weights.o.T, weights.heads), weights.heads)
    k, v = per_head(weights.k, weights.kv_heads)[kv], per_head(weights.v, weights.kv_heads)[kv]
    return q & k, o & v


def qk_metrics(qk: FactoredMatrix, head_dim: int) -> list:
    """The qk_ columns of every product of a stack of QK kernels."""
    sigma, eigs, asymmetry, norm = qk.singular_values, qk.eigenvalues, qk.asymmetry(), qk.frobenius_norm
    rows = []
    for h in range(len(sigma)):
        row = {"qk_effective_rank": effective_rank(sigma[h]), "qk_eig_effective_rank": eigen_effective_rank(eigs[h]),
               "qk_asymmetry": float(asymmetry[h]), "qk_complex_fraction": complex_fraction(eigs[h]),
               "qk_top_dhead_energy": top_eigen_energy(eigs[h], norm[h], head_dim),
               "qk_frobenius_norm": float(norm[h])}
        rows.append(row | {energy_column(f, "qk_"): energy_rank(sigma[h], f) for f in HEAD_ENERGY_FRACTIONS})
    return rows


def ov_metrics(ov: FactoredMatrix) -> list:
    """The ov_ columns of every product of a stack of OV kernels."""
    sigma, norm = ov.singular_values, ov.frobenius_norm
    return [{"ov_effective_rank": effective_rank(sigma[h]), "ov_frobenius_norm": float(norm[h]),
             **{energy_column(f, "ov_"): energy_rank(sigma[h], f) for f in HEAD_ENERGY_FRACTIONS}}
            for h in range(len(sigma))]


def _on_finite(metrics, stack: FactoredMatrix, ok: np.ndarray, *args) -> dict:
    """head -> metrics, computed on the heads whose kernel is finite only (none: no work)."""
    heads = np.flatnonzero(ok)
    return dict(zip(heads.tolist(), metrics(stack[heads], *args))) if heads.size else {}


def head_rows(weights: AttentionWeights) -> list:
    """Metrics of every query head, from the stacked factored kernels; the QK (OV) columns of a
    head whose QK (OV) factors are not all finite are NaN."""
    qk_ok, ov_ok = finite_kernels(weights)
    qk = _on_finite(qk_metrics, weights.qk, qk_ok, weights.head_dim)
    ov = _on_finite(ov_metrics, weights.ov, ov_ok)
    nan = dict.fromkeys(HEAD_METRIC_COLUMNS, float("nan"))
    return [{"head": h, "kv_head": weights.kv_head(h), **nan, **qk.get(h, {}), **ov.get(h, {})}
            for h in range(weights.heads)]


def mean_effective_rank(qk_rank, ov_rank):
    """A head's rank in one number: the mean of its QK and OV effective ranks."""
    return (qk_rank + ov_rank) / 2


def quartile_tags(values) -> np.ndarray:
    """low-rank / high-rank for the lowest / highest quartile of values (NaN left out, as pandas'
    quantile does), else empty."""
    values = np.asarray(values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all NaN: no quartiles, no tags
        low, high = np.nanquantile(values, [0.25, 0.75]) if values.size else (np.nan, np.nan)
    return np.where(values <= low, "low-rank", np.where(values >= high, "high-rank", ""))


HEAD_INTEGER_COLUMNS = ["layer_index", "head", "kv_head",
                        *[energy_column(f, prefix) for prefix in ("qk_", "ov_") for f in HEAD_ENERGY_FRACTIONS]]


def heads_table(*args, **kwargs):
    """head_table_of as a DataFrame."""
    return head_table_of(*args, **kwargs).to_pandas()


def head_table_of(model: str, unit: str, layer_index, weights: AttentionWeights | None):
    """An Arrow table, one row per query head; `tag` by quartiles of mean effective rank within this
    table, or NONFINITE_TAG for a head whose kernels have non-finite factors (its metrics NaN,
    logged). model, unit and tag are text; the head indices and energy ranks int64 (as pandas
    would type them: float64 where a NaN is among them), the rest float64."""
    rows = [] if weights is None else [{"model": model, "unit": unit, "layer_index": layer_index, **row}
                                       for row in head_rows(weights)]
    for row in rows:
        row["mean_effective_rank"] = mean_effective_rank(row["qk_effective_rank"], row["ov_effective_rank"])
    for row, tag in zip(rows, quartile_tags([row["mean_effective_rank"] for row in rows])):
        row["tag"] = tag
    if weights is not None:
        qk_ok, ov_ok = finite_kernels(weights)
        if not (qk_ok.all() and ov_ok.all()):
            for h in np.flatnonzero(~(qk_ok & ov_ok)):
                rows[h]["tag"] = NONFINITE_TAG
            log.warning("[%s] %s: non-finite weights: QK metrics NaN for heads %s, OV metrics NaN for heads %s",
                        model, unit, np.flatnonzero(~qk_ok).tolist(), np.flatnonzero(~ov_ok).tolist())
    types = {"model": "str", "unit": "str", "tag": "str"}
    for column in HEAD_INTEGER_COLUMNS:
        whole = all(isinstance(row[column], (int, np.integer)) for row in rows)
        types[column] = "int64" if whole else "float64"
    return table_from_rows(HEAD_COLUMNS, rows, types)


def unit_heads_table(model: str, unit: str, tensor_path, inventory_rows: list, dims: dict, selected=None):
    """The heads table of one unit (rule anatomy): its attention projections read from the tensor
    Parquet and head_table_of; empty, with the reason logged, for a unit that is no transformer
    block, has no q, k, v and o, or whose `select` leaves one of them out."""
    from blockscope.checkpoint.selection import unselected_attention
    from blockscope.io.tensors import read_unit
    from blockscope.layout import ATTENTION_BLOCK_TYPES, unit_layer

    weights, layer_index = None, unit_layer(unit)
    attention = [row for row in inventory_rows if row["block_type"] in ATTENTION_BLOCK_TYPES]
    left_out = unselected_attention([row["param_name"] for row in attention], selected) if selected is not None else []
    if layer_index is not None and attention and left_out:
        log.info("[%s] %s: empty heads table: the selection leaves out %s (heads need q, k, v and o)",
                 model, unit, ", ".join(left_out))
    elif layer_index is not None:
        tensors = read_unit(tensor_path, names=[row["param_name"] for row in attention])
        weights = attention_weights(tensors, attention, dims, model=model)
    if weights is None and not left_out:
        log.info("[%s] %s: empty heads table: no attention projections (q, k, v, o) in this unit", model, unit)
    return head_table_of(model, unit, layer_index, weights)


def deep_dive_problem(weights: AttentionWeights | None, h: int) -> str | None:
    """Why head h of a layer has no eigenvalue table (None when it has one)."""
    if weights is None:
        return "the layer has no attention projections (q, k, v, o) that the naming rules recognise"
    if not 0 <= h < weights.heads:
        return f"the layer has {weights.heads} query heads, no head {h}"
    if not finite_kernels(weights)[0][h]:
        return f"head {h}'s QK kernel has non-finite factors (NaN or Inf in its q or k projection)"
    return None


def empty_eigenvalue_table(reason: str):
    """The deep-dive table of a head that has none: no rows, the reason in attrs["reason"]."""
    import pandas as pd

    table = pd.DataFrame({column: pd.Series(dtype=float) for column in EIGENVALUE_COLUMNS})
    table.attrs["reason"] = reason
    return table


def eigenvalue_table(weights: AttentionWeights, h: int):
    """Every eigenvalue of one head's QK kernel: real, imaginary, magnitude, cumulative energy (a DataFrame)."""
    import pandas as pd

    eigs = weights.qk[h].eigenvalues
    columns = (np.arange(1, eigs.size + 1), eigs.real, eigs.imag, np.abs(eigs), cumulative_energy(eigs))
    return pd.DataFrame(dict(zip(EIGENVALUE_COLUMNS, columns)))


def cumulative_energy(eigs: np.ndarray) -> np.ndarray:
    """Running sum of |lambda|^2 over its total (zeros for an all-zero spectrum)."""
    energy = np.cumsum(np.abs(eigs) ** 2)
    return energy / energy[-1] if energy.size and energy[-1] else energy
