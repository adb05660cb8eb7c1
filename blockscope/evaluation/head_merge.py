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

The random control of a merge plan is the same groups under a random relabelling of each layer's
heads (a permutation per layer): group sizes, and so heads removed, per layer are the plan's.
Random pairs would not be: similar pairs cluster (the 6 pairs of a 4-clique remove 3 heads; 6
random pairs among 9 heads remove 5.7 on average), which would make the control harsher than
the plan.

The headline threshold (headline_index) is chosen on one half of the windows and reported on the
other (evaluation.head_merge_sweep.half_columns).
"""

import math
from collections import Counter

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


def heads_removed(groups) -> int:
    """Heads a layer's merge removes: a group of k heads computes one head's function, k - 1 gone."""
    return sum(len(group) - 1 for group in groups)


def relabel(groups, permutation) -> list:
    """The same groups with head h renamed permutation[h], in components()'s sorted form."""
    return sorted(sorted(int(permutation[h]) for h in group) for group in groups)


def distinct_relabellings(groups, heads: int) -> int:
    """How many different group sets relabelling a layer's groups gives (the groups themselves
    included): H! / ((H - k)! prod_g s_g! prod_s m_s!), k heads in groups of sizes s_g, m_s groups
    of size s (groups of one size are interchangeable, as are the heads inside a group)."""
    sizes = [len(group) for group in groups]
    denominator = math.factorial(heads - sum(sizes))
    for size in sizes:
        denominator *= math.factorial(size)
    for multiplicity in Counter(sizes).values():
        denominator *= math.factorial(multiplicity)
    return math.factorial(heads) // denominator


def plan_key(plan: dict) -> tuple:
    """A merge plan (layer -> groups) in one hashable form: equal keys merge the same heads."""
    return tuple(sorted((int(layer), tuple(tuple(sorted(g)) for g in sorted(groups)))
                        for layer, groups in plan.items() if groups))


def possible_controls(plan: dict, heads: int) -> int:
    """Distinct relabelled controls a plan has: every relabelling of every layer, less the plan."""
    return math.prod(distinct_relabellings(groups, heads) for groups in plan.values()) - 1


def relabelled_controls(plan: dict, heads: int, count: int, seed: int = 0) -> list:
    """Up to `count` distinct random controls of a merge plan (layer -> groups): each layer's groups
    under a random permutation of its heads, never the plan itself; seeded; fewer when fewer
    exist (possible_controls)."""
    wanted = min(count, possible_controls(plan, heads))
    rng = np.random.default_rng(seed)
    seen, controls = {plan_key(plan)}, []
    for _ in range(1000 * max(count, 1)):  # rejection of repeats: a few draws unless nearly all are taken
        if len(controls) >= wanted:
            break
        control = {layer: relabel(plan[layer], rng.permutation(heads)) for layer in sorted(plan)}
        if plan_key(control) not in seen:
            seen.add(plan_key(control))
            controls.append(control)
    return controls


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


# --- the headline threshold (the headmerge rule's `selected`, and the report's finding) -----------------

def nll_tolerance(ppl_tolerance: float) -> float:
    """A perplexity ratio within 1 + tolerance as a mean NLL difference: log(1 + tolerance) nats per token."""
    return float(np.log1p(ppl_tolerance))


def within_tolerance(summary: pd.DataFrame, ppl_tolerance: float) -> pd.Series:
    """Thresholds whose merged minus base NLL on the selection half has its interval's upper end
    (select_ci_high) within nll_tolerance: perplexity within (1 + tolerance) x the base's."""
    return summary["select_ci_high"] <= nll_tolerance(ppl_tolerance)


def headline_index(summary: pd.DataFrame, ppl_tolerance: float):
    """The headline threshold's row label, chosen on the selection half alone: of the thresholds
    that remove a head and are within_tolerance, the one removing the most heads (ties: the lowest
    threshold); None when none is."""
    kept = summary[(summary["heads_removed"] > 0) & within_tolerance(summary, ppl_tolerance)]
    if kept.empty:
        return None
    return kept.sort_values(["heads_removed", "threshold"], ascending=[False, True], kind="stable").index[0]
