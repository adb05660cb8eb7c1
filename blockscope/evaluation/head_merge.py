"""Similar attention heads, grouped and merged: similarity measures, merge plans, merged weights.

Similarities between query heads i, j of one layer:
  wq  cosine of the flattened W_Q slices (simple; not invariant to per-head reparameterisation)
  qk  cosine of the QK kernels W_Q,i^T W_K,g(i) and W_Q,j^T W_K,g(j)
  ov  cosine of the OV circuits W_O,i W_V,g(i) and W_O,j W_V,g(j)
qk and ov are invariant to the transforms that leave a head's function unchanged (W_Q -> M W_Q,
W_K -> M^-T W_K; W_V -> N W_V, W_O -> W_O N^-1) and are computed through d x d products.

A merge groups heads whose similarity exceeds a threshold (connected components) and sets
every head of a group to the group's mean Q slice and mean O slice (O averaged too, so that
sum_h W_O,h z_h keeps its scale once the heads compute the same z). K and V are per key/value
head: under grouped-query attention they are averaged only over key/value heads whose whole
query group lies inside the merged group (no head outside the group changes); otherwise each
head keeps reading its own K/V, and only Q and O merge. Head count and architecture stay.
"""

import numpy as np
import pandas as pd

from blockscope.analysis.heads import AttentionWeights
from blockscope.layout import SIMILARITY_COLUMNS

MEASURES = ("wq", "qk", "ov")
# Long form of every layer's similarity matrices (what the plots read back).


def cosine_matrix(inner: np.ndarray) -> np.ndarray:
    """Gram of inner products -> cosine similarities."""
    norms = np.sqrt(np.clip(np.diag(inner), 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        return inner / np.outer(norms, norms)


def similarities(weights: AttentionWeights) -> dict:
    """measure -> H x H cosine matrix."""
    queries = weights.q.reshape(weights.heads, -1).astype(np.float64)
    return {"wq": cosine_matrix(queries @ queries.T),
            "qk": cosine_matrix(weights.qk.gram()),
            "ov": cosine_matrix(weights.ov.gram())}


def upper_triangle(similarity: np.ndarray) -> np.ndarray:
    """The pairwise values s[i, j], i < j, of a symmetric matrix."""
    return similarity[np.triu_indices_from(similarity, 1)]


def similarity_histogram(similarity: np.ndarray, bins: int = 20) -> dict:
    """Counts of the pairwise similarities of one layer over [-1, 1]."""
    counts, edges = np.histogram(upper_triangle(similarity), bins=bins, range=(-1, 1))
    return {"edges": np.round(edges, 3).tolist(), "counts": counts.tolist()}


def similarity_table(sims: dict) -> pd.DataFrame:
    """layer -> measure -> H x H matrix, as one long table (SIMILARITY_COLUMNS)."""
    frames = []
    for layer, per_measure in sims.items():
        for measure, matrix in per_measure.items():
            i, j = np.indices(matrix.shape)
            frames.append(pd.DataFrame({"layer": layer, "measure": measure, "head_i": i.ravel(), "head_j": j.ravel(),
                                        "similarity": matrix.ravel()}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SIMILARITY_COLUMNS)


def similarity_matrices(table: pd.DataFrame) -> dict:
    """The inverse of similarity_table."""
    sims = {}
    for (layer, measure), rows in table.groupby(["layer", "measure"], sort=True):
        heads = int(rows["head_i"].max()) + 1
        matrix = np.full((heads, heads), np.nan)
        matrix[rows["head_i"].to_numpy(), rows["head_j"].to_numpy()] = rows["similarity"].to_numpy()
        sims.setdefault(int(layer), {})[measure] = matrix
    return sims


def pairs_above(similarity: np.ndarray, threshold: float) -> list:
    """[i, j, s] for i < j with s > threshold."""
    i, j = np.triu_indices(similarity.shape[0], k=1)
    keep = similarity[i, j] > threshold
    return [[int(a), int(b), float(s)] for a, b, s in zip(i[keep], j[keep], similarity[i, j][keep])]


def components(heads: int, pairs) -> list:
    """Connected components (size > 1) of the graph with these edges, as sorted lists."""
    parent = list(range(heads))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, *_ in pairs:
        parent[find(a)] = find(b)
    groups = {}
    for h in range(heads):
        groups.setdefault(find(h), []).append(h)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def random_pairs(heads: int, count: int, rng: np.random.Generator) -> list:
    """`count` distinct random head pairs (the control for a similarity-driven merge)."""
    i, j = np.triu_indices(heads, k=1)
    chosen = rng.choice(i.size, size=min(count, i.size), replace=False)
    return [[int(i[c]), int(j[c]), float("nan")] for c in sorted(chosen)]


def merge_groups(arrays: dict, groups: list, heads: int, kv_heads: int, head_dim: int) -> dict:
    """Merged copies of q, k, v, o (and q/k/v biases) for these head groups.

    arrays: q (H*d, D), k, v (G*d, D), o (D, H*d), optional q_bias (H*d), k_bias, v_bias (G*d).
    """
    out = {name: (None if a is None else np.array(a, copy=True)) for name, a in arrays.items()}
    per_kv = heads // kv_heads
    rows = lambda h: slice(h * head_dim, (h + 1) * head_dim)  # noqa: E731
    for group in groups:
        for name in ("q", "q_bias"):
            if out.get(name) is not None:
                mean = np.mean([arrays[name][rows(h)] for h in group], axis=0)
                for h in group:
                    out[name][rows(h)] = mean
        mean_o = np.mean([arrays["o"][:, rows(h)] for h in group], axis=0)
        for h in group:
            out["o"][:, rows(h)] = mean_o
        kv = sorted({h // per_kv for h in group})
        whole = [g for g in kv if all(q in group for q in range(g * per_kv, (g + 1) * per_kv))]
        if len(whole) > 1:  # only K/V heads no outside query head reads
            for name in ("k", "v", "k_bias", "v_bias"):
                if out.get(name) is not None:
                    mean = np.mean([arrays[name][rows(g)] for g in whole], axis=0)
                    for g in whole:
                        out[name][rows(g)] = mean
    return out
