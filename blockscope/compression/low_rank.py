"""Low-rank edits: planned matrices replaced by truncated SVDs, the plans that choose the ranks from
the spectra, and their controls. Applied, scored and compared like the pruning plans by
blockscope.compression.low_rank_experiment.

A matrix W (m x n) edited to rank r is its best rank-r approximation W_r = U_r S_r V_r^T
(Eckart-Young: no matrix of rank r is closer in Frobenius norm, and ||W - W_r||_F = sqrt(sum of the
dropped sigma^2)), computed in float64 from the weights as loaded, stored back in the weight's
dtype. Kept as its factors it holds r (m + n) of the m n parameters, so every plan's ranks stay in
[1, floor(m n / (m + n))] (`break_even_rank`: beyond it the factors are no smaller than W).

A plan is a pandas Series of ranks indexed by param_name over the planned matrices; 0 means the
matrix is left as stored (a LASER plan edits one matrix). Ranks move between matrices of one shape
(up to transposition: the same r (m + n) per rank, the same break-even rank), so a mirror, a
uniform spread or a random permutation of a plan's ranks within each shape keeps its parameters
exactly. The plans at a budget b, the share of the planned matrices' parameters kept:

- energy: every matrix at the smallest rank keeping a fraction E of its energy (sum sigma^2; at
  most its break-even rank), E the largest for which the plan keeps at most b (`energy_plan`);
- alpha: within each shape the budget's ranks allocated by AlphaPruning's linear map (Lu et al.
  2024, arXiv:2410.10912): a matrix of lower alpha (a heavier tail, more trained structure) keeps
  more rank (`alpha_weights`);
- effective_rank: within each shape, ranks in proportion to the matrices' effective rank;
- their controls: `mirror` (the ranks reversed over the plan's metric within each shape),
  `uniform` (the plan's ranks per shape spread evenly: every matrix the same kept share up to one
  rank), `random` (distinct permutations of the plan's ranks within each shape).
- laser (Sharma et al. 2023, "The Truth is in There", arXiv:2312.13558): one late MLP matrix at a
  time reduced to a small fraction of its rank, against the base and against a matrix of the same
  type and shape from another layer reduced alike (`laser_specs`).
"""

import math

import numpy as np
import pandas as pd

from blockscope.compression import controls, plans
from blockscope.errors import BlockscopeError

FAMILIES = ("energy", "alpha", "effective_rank")
LASER_TYPES = ("down_proj", "up_proj", "gate_proj")
# What each plan says it does, and what its mirror does (the summary's direction).
DIRECTIONS = {"energy": ("every matrix at the rank keeping one energy fraction",
                         "the energy plan's ranks reversed within each shape"),
              "alpha": ("lower {metric} keeps more rank (AlphaPruning's rule)", "higher {metric} keeps more rank"),
              "effective_rank": ("rank in proportion to effective rank", "lower effective rank keeps more rank")}


# --- the truncation ------------------------------------------------------------------------------------

def svd64(w) -> tuple:
    """(U, sigma, V^T) of w in float64 on its device, the thin SVD (sigma descending)."""
    import torch

    return torch.linalg.svd(w.to(torch.float64), full_matrices=False)


def truncated(u, s, vh, rank: int):
    """The best rank-r approximation U_r S_r V_r^T from the factors (torch or numpy arrays)."""
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def truncation_error(s, rank: int) -> float:
    """||W - W_r||_F = sqrt(sum_{j > r} sigma_j^2) (Eckart-Young)."""
    dropped = np.asarray(s, dtype=np.float64)[rank:]
    return float(np.sqrt(np.sum(dropped * dropped)))


def factor_params(rows: int, cols: int, rank: int) -> int:
    """Parameters of the rank-r factors of an m x n matrix: r (m + n)."""
    return int(rank) * (int(rows) + int(cols))


def break_even_rank(rows: int, cols: int) -> int:
    """The largest rank whose factors hold no more parameters than the matrix: floor(m n / (m + n))."""
    return int(rows) * int(cols) // (int(rows) + int(cols))


def energy_curve(s) -> np.ndarray:
    """c_r = sum_{j <= r} sigma_j^2 / sum_j sigma_j^2 for r = 1..k (a zero matrix: all 1)."""
    energy = np.asarray(s, dtype=np.float64) ** 2
    total = energy.sum()
    return np.ones(len(energy)) if total == 0 else np.cumsum(energy) / total


def energy_rank(curve: np.ndarray, fraction: float) -> int:
    """The smallest rank r >= 1 with c_r >= fraction (curve: energy_curve)."""
    return min(int(np.searchsorted(curve, fraction, side="left")) + 1, len(curve))


def kept_energy(s, rank: int) -> float:
    """The share of a matrix's energy its rank-r approximation keeps: 1 - ||W - W_r||_F^2 / ||W||_F^2."""
    return 1.0 if rank <= 0 else float(energy_curve(s)[min(rank, len(s)) - 1])


class Factors:
    """Each planned matrix's SVD, computed once per job in float64 (on `device`) from the weights as
    loaded (originals: name -> CPU tensor), kept on the CPU up to the largest rank a plan can ask
    (its break-even rank, or keep_rank)."""

    def __init__(self, originals: dict, device: str = "cpu"):
        self.originals, self.device, self.kept = originals, device, {}

    def compute(self, name: str, keep_rank: int | None = None):
        if name in self.kept:
            return
        w = self.originals[name]
        u, s, vh = svd64(w.to(self.device))
        keep = break_even_rank(*w.shape) if keep_rank is None else keep_rank
        # clone: a slice of a CPU tensor would keep all of U and V^T alive
        self.kept[name] = (u[:, :keep].cpu().clone(), s.cpu(), vh[:keep].cpu().clone())

    def trim(self, name: str, rank: int):
        """Keep the factors only up to `rank` (the most any plan asks of the matrix): less memory."""
        u, s, vh = self.kept[name]
        self.kept[name] = (u[:, :rank].clone(), s, vh[:rank].clone())

    def sigma(self, name: str) -> np.ndarray:
        self.compute(name)
        return self.kept[name][1].numpy()

    def weight(self, name: str, rank: int, like):
        """W_r of the matrix in like's dtype and on like's device."""
        self.compute(name)
        u, s, vh = (x.to(like.device) for x in self.kept[name])
        return truncated(u, s, vh, rank).to(like.dtype)


# --- the plans' matrices and their groups ------------------------------------------------------------

def lowrank_matrices(metrics: pd.DataFrame, needed, block_types=None, last_layers: int | None = None) -> pd.DataFrame:
    """The planned matrices (plans.plan_matrices with the metrics `needed` finite), of `block_types`
    (None: all) in the last `last_layers` layers (None: all), with their break-even and full rank."""
    rows = plans.plan_matrices(metrics, list(needed))
    if block_types:
        rows = rows[rows["block_type"].isin(list(block_types))]
    if last_layers:
        rows = rows[rows["layer_index"].isin(sorted(rows["layer_index"].unique())[-int(last_layers):])]
    rows = rows.copy()
    rows["full_rank"] = np.minimum(rows["rows"], rows["cols"]).astype(np.int64)
    rows["break_even_rank"] = [break_even_rank(r, c) for r, c in zip(rows["rows"], rows["cols"])]
    return rows


def rank_groups(matrices: pd.DataFrame) -> pd.Series:
    """Matrices that may trade ranks at the same parameter cost: one shape up to transposition."""
    low, high = np.minimum(matrices["rows"], matrices["cols"]), np.maximum(matrices["rows"], matrices["cols"])
    return pd.Series([f"{a}x{b}" for a, b in zip(low, high)], index=matrices.index)


def plan_params(ranks: pd.Series, matrices: pd.DataFrame) -> int:
    """Parameters a plan keeps: r (m + n) per edited matrix, m n per matrix left as stored."""
    rows, cols = matrices.loc[ranks.index, "rows"], matrices.loc[ranks.index, "cols"]
    return int(sum(factor_params(m, n, r) if r else int(m) * int(n) for r, m, n in zip(ranks, rows, cols)))


def rank_key(ranks: pd.Series) -> tuple:
    """What makes two plans the same weights: their ranks."""
    return tuple(int(r) for r in ranks.to_numpy())


# --- allocations within each shape -------------------------------------------------------------------

def even_ranks(total: int, index) -> pd.Series:
    """`total` ranks spread over the matrices of `index`: each floor(total / n), the first
    total mod n one more."""
    n = len(index)
    base, extra = divmod(int(total), n)
    return pd.Series([base + (i < extra) for i in range(n)], index=index, dtype=np.int64)


def budget_totals(matrices: pd.DataFrame, budget: float) -> pd.Series:
    """Per shape group the ranks a budget b allows: floor(b n_g m n / (m + n)), within
    [n_g, n_g x break-even rank] (every matrix at least rank 1)."""
    groups, out = rank_groups(matrices), {}
    for group, index in groups.groupby(groups, sort=False).groups.items():
        first = matrices.loc[index[0]]
        ideal = math.floor(budget * len(index) * int(first["rows"]) * int(first["cols"])
                           / (int(first["rows"]) + int(first["cols"])))
        out[group] = min(max(ideal, len(index)), len(index) * int(first["break_even_rank"]))
    return pd.Series(out, dtype=np.int64)


def weighted_ranks(weights, total: int, low: int, high: int) -> np.ndarray:
    """Integer ranks in [low, high] summing to `total`, in proportion to `weights` as far as the
    bounds allow: the proportional shares, those beyond a bound fixed at it and the rest rescaled
    (repeated until none is), then floors, the remainder going one rank at a time to the largest
    fractional parts (the first on a tie)."""
    w = np.asarray(weights, dtype=np.float64)
    n = len(w)
    if not n * low <= total <= n * high:
        raise ValueError(f"{total} ranks cannot be spread over {n} matrices within [{low}, {high}]")
    target, fixed = np.zeros(n), np.zeros(n, dtype=bool)
    while not fixed.all():
        free = ~fixed
        share = w[free] / w[free].sum() if w[free].sum() > 0 else np.full(free.sum(), 1 / free.sum())
        target[free] = share * (total - target[fixed].sum())
        beyond = free & ((target < low) | (target > high))
        if not beyond.any():
            break
        target[beyond] = np.clip(target[beyond], low, high)
        fixed |= beyond
    ranks = np.clip(np.floor(target + 1e-9).astype(np.int64), low, high)
    fraction = target - ranks
    while ranks.sum() != total:  # one rank at a time: up to the largest fractions, down from the smallest
        step = 1 if ranks.sum() < total else -1
        room = ranks < high if step > 0 else ranks > low
        order = np.argsort(-fraction if step > 0 else fraction, kind="stable")
        i = next(j for j in order if room[j])
        ranks[i] += step
        fraction[i] -= step
    return ranks


def alpha_weights(alpha, eps: float) -> np.ndarray:
    """AlphaPruning's linear map turned to ranks kept: alpha onto [1 + eps, 1 - eps], the lowest
    alpha to 1 + eps (keeps the most); equal alphas give equal weights."""
    alpha = np.asarray(alpha, dtype=np.float64)
    span = alpha.max() - alpha.min()
    unit = (alpha - alpha.min()) / span if span > 0 else np.zeros_like(alpha)
    return (1 + eps) - 2 * eps * unit


def allocated_ranks(weights: pd.Series, totals: pd.Series, matrices: pd.DataFrame) -> pd.Series:
    """Each shape group's total ranks spread over its matrices in proportion to `weights`."""
    groups, out = rank_groups(matrices), pd.Series(0, index=matrices.index, dtype=np.int64)
    for group, index in groups.groupby(groups, sort=False).groups.items():
        high = int(matrices.loc[index[0], "break_even_rank"])
        out[index] = weighted_ranks(weights[index], int(totals[group]), 1, high)
    return out


def uniform_ranks(ranks: pd.Series, matrices: pd.DataFrame) -> pd.Series:
    """The plan's ranks per shape group spread evenly: the same parameters, every matrix of a shape
    the same kept share (up to one rank)."""
    groups, out = rank_groups(matrices), ranks.copy()
    for _, index in groups.groupby(groups, sort=False).groups.items():
        out[index] = even_ranks(int(ranks[index].sum()), index).to_numpy()
    return out


def mirror_ranks(ranks: pd.Series, metric: pd.Series, matrices: pd.DataFrame) -> pd.Series:
    """Within each shape the matrix of rank r in the metric gets the rank of the matrix of rank n - 1 - r."""
    return plans.reversed_order(ranks, metric, rank_groups(matrices))


def energy_plan(sigmas: dict, matrices: pd.DataFrame, budget: float) -> tuple:
    """(ranks, E): each matrix at energy_rank(E) (at most its break-even rank), E the largest of the
    matrices' energy levels c_r for which the plan keeps at most b of the parameters. ValueError
    when rank 1 everywhere already keeps more."""
    curves = {name: energy_curve(sigmas[name]) for name in matrices.index}
    limit = budget * float(matrices["params"].sum())

    def ranks_at(fraction):
        return pd.Series([min(energy_rank(curves[n], fraction), int(matrices.loc[n, "break_even_rank"]))
                          for n in matrices.index], index=matrices.index, dtype=np.int64)

    levels = np.unique(np.concatenate([c[: int(matrices.loc[n, "break_even_rank"])] for n, c in curves.items()]))
    low, high = 0, len(levels) - 1  # the largest level whose plan fits: plan_params grows with the level
    if plan_params(ranks_at(levels[0]), matrices) > limit:
        raise ValueError(f"rank 1 in every matrix keeps more than {budget:g} of the parameters")
    while low < high:
        middle = (low + high + 1) // 2
        if plan_params(ranks_at(levels[middle]), matrices) <= limit:
            low = middle
        else:
            high = middle - 1
    return ranks_at(levels[low]), float(levels[low])


# --- the plans of one budget, with their controls -----------------------------------------------------

def spec(plan: str, kind: str, ranks: pd.Series, budget=None, of=None, seed=None, direction=None, metric=None,
         values=None, matrix=None, stated_energy=None) -> dict:
    return {"plan": plan, "kind": kind, "ranks": ranks, "budget": budget, "of": of, "seed": seed,
            "direction": direction, "metric": metric, "values": values, "matrix": matrix,
            "stated_energy": stated_energy}


def spectral_plan(family: str, matrices: pd.DataFrame, sigmas: dict, budget: float, alpha_metric: str,
                  eps: float) -> tuple:
    """(ranks, metric name, metric values, stated energy or None) of a family at a budget."""
    if family == "energy":
        ranks, fraction = energy_plan(sigmas, matrices, budget)
        return ranks, "energy_rank", ranks.astype(float), fraction
    totals = budget_totals(matrices, budget)
    if family == "alpha":
        values = matrices[alpha_metric].astype(float)
        weights = pd.Series(np.ones(len(matrices)), index=matrices.index)
        for _, index in rank_groups(matrices).groupby(rank_groups(matrices), sort=False).groups.items():
            weights[index] = alpha_weights(values[index], eps)
        return allocated_ranks(weights, totals, matrices), alpha_metric, values, None
    values = matrices["effective_rank"].astype(float)
    return allocated_ranks(values, totals, matrices), "effective_rank", values, None


def budget_specs(matrices: pd.DataFrame, sigmas: dict, budget: float, families, alpha_metric: str, eps: float,
                 seeds: int) -> list:
    """Per family at the budget: its plan, mirror, uniform and up to `seeds` distinct random
    permutations, all at the plan's parameters. The uniform control is `uniform_{b}` (every shape
    at the budget's ranks: the alpha and effective_rank plans' own) when the plan's ranks per
    shape are the budget's, else `uniform_{family}_{b}` (the energy plan's ranks per shape)."""
    out, taken, groups, tag = [], {}, rank_groups(matrices), f"{budget:g}"
    budget_uniform = rank_key(uniform_ranks(allocated_ranks(pd.Series(1.0, index=matrices.index),
                                                            budget_totals(matrices, budget), matrices), matrices))
    for family in families:
        ranks, metric, values, fraction = spectral_plan(family, matrices, sigmas, budget, alpha_metric, eps)
        words, mirrored = (text.format(metric=metric) for text in DIRECTIONS[family])
        named = [spec(f"{family}_{tag}", family, ranks, budget, None, None, words, metric, values,
                      stated_energy=fraction),
                 spec(f"mirror_{family}_{tag}", "mirror", mirror_ranks(ranks, values, matrices), budget, family, None,
                      mirrored, metric, values)]
        uniform = uniform_ranks(ranks, matrices)
        shared = rank_key(uniform) == budget_uniform
        name = f"uniform_{tag}" if shared else f"uniform_{family}_{tag}"
        if name not in {s["plan"] for s in out}:
            named.append(spec(name, "uniform", uniform, budget, None if shared else family, None,
                              "every matrix of a shape the same kept share", metric, values))
        for s in named:
            taken.setdefault(rank_key(s["ranks"]), s["ranks"])
        available = controls.distinct_permutations(ranks, groups) - sum(
            controls.is_permutation(ranks, other, groups) for other in taken.values())
        drawn = controls.distinct_draws(lambda seed: plans.permuted(ranks, groups, np.random.default_rng(seed)),
                                        rank_key, seeds, taken, available)
        out += named + [spec(f"random_{family}_{seed}_{tag}", "random", r, budget, family, seed, None, metric, values)
                        for seed, r in drawn]
    return out


# --- LASER ------------------------------------------------------------------------------------------------

def laser_rank(full_rank: int, fraction: float) -> int:
    """LASER's reduction: floor(fraction x the matrix's full rank), at least 1."""
    return max(1, math.floor(fraction * int(full_rank)))


def laser_targets(matrices: pd.DataFrame, block_types, last_layers: int) -> list:
    """The matrices LASER reduces one at a time: `block_types` in the last `last_layers` layers."""
    layers = sorted(matrices["layer_index"].unique())[-int(last_layers):] if last_layers else []
    rows = matrices[matrices["block_type"].isin(list(block_types)) & matrices["layer_index"].isin(layers)]
    order = {t: i for i, t in enumerate(block_types)}
    return sorted(rows.index, key=lambda n: (-int(rows.loc[n, "layer_index"]), order[rows.loc[n, "block_type"]]))


def single_edit(matrices: pd.DataFrame, name: str, rank: int) -> pd.Series:
    ranks = pd.Series(0, index=matrices.index, dtype=np.int64)
    ranks[name] = rank
    return ranks


def laser_specs(matrices: pd.DataFrame, block_types, last_layers: int, fraction: float, count: int,
                seed: int) -> tuple:
    """(specs, {(laser plan, "random_matrix"): why it has no control}): per target its plan and up to `count`
    controls, matrices of the same block type and shape outside the LASER layers, drawn without
    replacement (seeded by seed and the target's position) and never one already drawn."""
    targets, out, missing, used = laser_targets(matrices, block_types, last_layers), [], {}, set()
    for i, name in enumerate(targets):
        row = matrices.loc[name]
        rank, plan = laser_rank(row["full_rank"], fraction), f"laser_{int(row['layer_index'])}_{row['block_type']}"
        words = f"rank {rank} of {int(row['full_rank'])} kept"
        out.append(spec(plan, "laser", single_edit(matrices, name, rank), direction=words, matrix=name))
        pool = [n for n in matrices.index if n not in targets and n not in used
                and matrices.loc[n, "block_type"] == row["block_type"]
                and (matrices.loc[n, "rows"], matrices.loc[n, "cols"]) == (row["rows"], row["cols"])]
        picked = [str(n) for n in np.random.default_rng([seed, i]).choice(pool, size=min(count, len(pool)),
                                                                           replace=False)] if pool and count else []
        used.update(picked)
        if not picked:
            missing[(plan, "random_matrix")] = "none drawn (compress.lowrank.laser.controls: 0)" if not count else \
                f"no other {row['block_type']} of shape {int(row['rows'])}x{int(row['cols'])} outside the LASER layers"
        for other in picked:
            layer = int(matrices.loc[other, "layer_index"])
            out.append(spec(f"laser_control_{layer}_{row['block_type']}", "laser_control",
                            single_edit(matrices, other, rank), of=plan, direction=words, matrix=other))
    return out, missing


def check_budget(budget: float, model: str = None):
    if not 0 < budget < 1:
        raise BlockscopeError(f"a low-rank budget of {budget:g} is outside (0, 1)", model=model,
                              path="compress.lowrank.budgets", fix="give budgets as the share of parameters kept")
