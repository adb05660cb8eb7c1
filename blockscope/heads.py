"""Per-head QK and OV circuits of one layer, from its projection matrices.

Layouts handled: separate q/k/v/o projections (Llama, Mistral, Qwen2, Gemma, BERT, OPT, ...),
GPT-2's fused c_attn (Conv1D, [Q; K; V] along the output after transposition), GPT-NeoX's
query_key_value (per-head interleaved: rows are heads x (q, k, v) x head_dim) and Phi-3's
qkv_proj ([Q; K; V] with grouped K/V). Biases are ignored: the kernels are the bilinear
parts W_Q^T W_K and W_O W_V of the circuits (a bias adds a rank-one or constant term).
"""

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from .errors import BlockscopeError
from .factored import FactoredMatrix, r_factor
from .metrics import effective_rank, energy_rank


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

    def query(self, h):
        return self.q[h * self.head_dim:(h + 1) * self.head_dim]

    def key(self, g):
        return self.k[g * self.head_dim:(g + 1) * self.head_dim]

    def value(self, g):
        return self.v[g * self.head_dim:(g + 1) * self.head_dim]

    def output(self, h):
        return self.o[:, h * self.head_dim:(h + 1) * self.head_dim]

    def kv_head(self, h) -> int:
        """Grouped-query attention: query head h reads key/value head h // (H / G)."""
        return h // (self.heads // self.kv_heads)

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
        keys = self._stack(self.k, self.kv_heads)
        r_keys = r_factor(np.swapaxes(keys, -1, -2))  # once per K/V head, shared by its group
        g = self.kv_of_heads
        return FactoredMatrix(queries_t, keys[g], r_right=r_keys[g])

    @cached_property
    def ov(self) -> FactoredMatrix:
        """W_O,h W_V,g (D x D) for every query head h, stacked and factored."""
        outputs = np.swapaxes(self._stack(self.o.T, self.heads), -1, -2)
        values = self._stack(self.v, self.kv_heads)
        r_values = r_factor(np.swapaxes(values, -1, -2))
        g = self.kv_of_heads
        return FactoredMatrix(outputs, values[g], r_right=r_values[g])


def split_qkv(fused: np.ndarray, dims: dict):
    """q, k, v rows of a fused projection (weight rows or bias entries), out-major."""
    heads, kv_heads, head_dim = dims["heads"], dims["kv_heads"], dims["head_dim"]
    if dims.get("model_type") == "gpt_neox":  # rows: heads x (q, k, v) x head_dim
        per_head = fused.reshape(heads, 3, head_dim, *fused.shape[1:])
        return tuple(per_head[:, i].reshape(heads * head_dim, *fused.shape[1:]) for i in range(3))
    sizes = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
    if fused.shape[0] != sum(sizes):
        raise ValueError(f"fused qkv has {fused.shape[0]} rows, expected {sum(sizes)} for {heads} heads, "
                         f"{kv_heads} kv heads of size {head_dim}")
    return tuple(np.split(fused, np.cumsum(sizes)[:2]))


def join_qkv(q, k, v, dims: dict) -> np.ndarray:
    """The inverse of split_qkv."""
    if dims.get("model_type") == "gpt_neox":
        per_head = np.stack([m.reshape(dims["heads"], dims["head_dim"], *m.shape[1:]) for m in (q, k, v)], axis=1)
        return per_head.reshape(q.shape[0] * 3, *q.shape[1:])
    return np.concatenate([q, k, v])


def projection_names(inventory: pd.DataFrame) -> dict:
    """(q|k|v|o|qkv, weight|bias) -> (parameter name, layout) for one layer's attention."""
    kinds = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "qkv_fused": "qkv"}
    names = {}
    for row in inventory.itertuples():
        if row.block_type in kinds:
            part = "weight" if len(row.shape) == 2 else "bias" if row.param_name.endswith("bias") else None
            if part:
                names.setdefault((kinds[row.block_type], part), (row.param_name, row.layout))
    return names


def has_attention(names: dict) -> bool:
    """Whether projection_names found a complete attention (q, k, v, o or fused qkv + o)."""
    return ("o", "weight") in names and (("qkv", "weight") in names or all((k, "weight") in names for k in "qkv"))


def read_projections(tensors: dict, names: dict, dims: dict) -> dict | None:
    """q, k, v, o weights (out x in, float32) and q/k/v biases of one layer; None without attention."""
    def get(kind, part):
        if (kind, part) not in names:
            return None
        name, layout = names[(kind, part)]
        array = np.asarray(tensors[name], dtype=np.float32)
        return array.T if (layout == "in_out" and array.ndim == 2) else array

    if not has_attention(names):
        return None
    arrays = {}
    if ("qkv", "weight") in names:
        arrays["q"], arrays["k"], arrays["v"] = split_qkv(get("qkv", "weight"), dims)
        bias = get("qkv", "bias")
        arrays["q_bias"], arrays["k_bias"], arrays["v_bias"] = split_qkv(bias, dims) if bias is not None else (None,) * 3
    else:
        for kind in "qkv":
            arrays[kind], arrays[f"{kind}_bias"] = get(kind, "weight"), get(kind, "bias")
    arrays["o"] = get("o", "weight")
    return arrays


def write_projections(arrays: dict, names: dict, dims: dict) -> dict:
    """Parameter name -> array in the checkpoint's layout: the inverse of read_projections."""
    out = {}

    def put(kind, part, array):
        name, layout = names[(kind, part)]
        out[name] = array.T if (layout == "in_out" and array.ndim == 2) else array

    if ("qkv", "weight") in names:
        put("qkv", "weight", join_qkv(arrays["q"], arrays["k"], arrays["v"], dims))
        if ("qkv", "bias") in names:
            put("qkv", "bias", join_qkv(arrays["q_bias"], arrays["k_bias"], arrays["v_bias"], dims))
    else:
        for kind in "qkv":
            put(kind, "weight", arrays[kind])
            if (kind, "bias") in names:
                put(kind, "bias", arrays[f"{kind}_bias"])
    put("o", "weight", arrays["o"])
    return out


def attention_weights(tensors: dict, inventory: pd.DataFrame, dims: dict, model: str = None):
    """AttentionWeights for one layer, or (None, reason) when the layer has no usable attention."""
    heads, kv_heads, head_dim = dims["heads"], dims["kv_heads"], dims["head_dim"]
    try:
        arrays = read_projections(tensors, projection_names(inventory), dims)
    except ValueError as exc:
        raise BlockscopeError(str(exc), model=model, path="config.json",
                              fix="check num_attention_heads / num_key_value_heads") from None
    if arrays is None:
        return None, "no attention projections (q, k, v, o) recognised in this unit"
    q, k, v, o = (arrays[kind] for kind in "qkvo")
    for name, matrix, count in (("q", q, heads), ("k", k, kv_heads), ("v", v, kv_heads)):
        if matrix.shape[0] != count * head_dim:
            raise BlockscopeError(
                f"{name} projection has {matrix.shape[0]} outputs, not {count} heads x {head_dim}",
                model=model, path="config.json", fix="check num_attention_heads, num_key_value_heads and head_dim")
    if heads % kv_heads:
        raise BlockscopeError(f"{heads} query heads do not divide into {kv_heads} key/value heads", model=model,
                              path="config.json", fix="check num_key_value_heads")
    if o.shape[1] != heads * head_dim:
        raise BlockscopeError(f"o projection has {o.shape[1]} inputs, not {heads} x {head_dim}", model=model,
                              path="config.json", fix="check num_attention_heads and head_dim")
    return AttentionWeights(q, k, v, o, heads, kv_heads, head_dim), None


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
        for fraction in (0.5, 0.9, 0.99):
            row[f"qk_energy_rank_{int(fraction * 100)}"] = energy_rank(qk_sigma[h], fraction)
            row[f"ov_energy_rank_{int(fraction * 100)}"] = energy_rank(ov_sigma[h], fraction)
        rows.append(row)
    return rows


HEAD_COLUMNS = ["model", "unit", "layer_index", "head", "kv_head", "qk_effective_rank", "qk_eig_effective_rank",
                "qk_asymmetry", "qk_complex_fraction", "qk_top_dhead_energy", "qk_frobenius_norm",
                "qk_energy_rank_50", "qk_energy_rank_90", "qk_energy_rank_99", "ov_effective_rank",
                "ov_frobenius_norm", "ov_energy_rank_50", "ov_energy_rank_90", "ov_energy_rank_99",
                "mean_effective_rank", "tag"]


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
    table["mean_effective_rank"] = (table["qk_effective_rank"] + table["ov_effective_rank"]) / 2
    table["tag"] = quartile_tags(table["mean_effective_rank"])
    return table[HEAD_COLUMNS]


def eigenvalue_table(weights: AttentionWeights, h: int) -> pd.DataFrame:
    """Every eigenvalue of one head's QK kernel: real, imaginary, magnitude, cumulative energy."""
    eigs = weights.qk[h].eigenvalues
    energy = np.cumsum(np.abs(eigs) ** 2)
    return pd.DataFrame({"rank": np.arange(1, eigs.size + 1), "real": eigs.real, "imag": eigs.imag,
                         "magnitude": np.abs(eigs), "cumulative_energy": energy / energy[-1] if energy[-1] else energy})
