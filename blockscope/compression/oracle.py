"""The oracle quantisation plan: formats allocated from the measured (or estimated) per-matrix
sensitivities at a budget of bits per weight, by a greedy knapsack under the additive model (a
plan's KL to the base is the sum of its matrices' KLs when each is quantised alone). It is the
reference a spectral plan of the same budget is compared with: a bound only as good as the
estimates (on the CPU most are a proxy's) and the greedy allocation; predicted_kl is the additive
model's prediction, checked against the measured KL of every evaluated plan.
docs/metrics.md "Per-matrix sensitivity and what predicts it".
"""

import math

import numpy as np
import pandas as pd

from blockscope.compression.formats import bits_per_weight

BUDGET_SLACK = 1e-12  # relative: a budget taken from a plan's mean bits admits that plan despite float rounding


def kl_table(estimates: pd.DataFrame) -> dict:
    """(param_name, format) -> estimated_kl, from the long estimates table (one row per pair)."""
    rows = estimates.dropna(subset=["estimated_kl"])
    doubled = rows.duplicated(["param_name", "perturbation"])
    if doubled.any():
        pairs = rows.loc[doubled, ["param_name", "perturbation"]].head(3).values.tolist()
        raise ValueError(f"estimates hold more than one row for {pairs}")
    return {(p, f): float(kl) for p, f, kl in zip(rows["param_name"], rows["perturbation"], rows["estimated_kl"])}


def matrix_shapes(estimates: pd.DataFrame, matrices: pd.DataFrame) -> pd.DataFrame:
    """param_name, params, cols of every matrix in `matrices` (cols from `matrices` when it has
    them, else from `estimates`)."""
    shapes = matrices[["param_name", "params", *(["cols"] if "cols" in matrices else [])]].drop_duplicates("param_name")
    if "cols" not in shapes:
        cols = estimates.drop_duplicates("param_name").set_index("param_name")["cols"]
        shapes = shapes.assign(cols=shapes["param_name"].map(cols))
    if shapes["cols"].isna().any():
        raise ValueError(f"no input size for {shapes.loc[shapes['cols'].isna(), 'param_name'].head(3).tolist()}")
    return shapes.reset_index(drop=True)


def stored_bits(fmt: str, cols: int, params: int, group_size: int) -> int:
    """A matrix's stored bits in `fmt` (bits_per_weight x params, an integer: rows x cols x bits plus
    whole scales and zero points), so that a budget compares exactly."""
    return int(round(bits_per_weight(fmt, int(cols), group_size) * int(params)))


def budget_total(budget_bits: float, params: int) -> int:
    """The budget in whole stored bits: the largest integer at most budget_bits x params, allowing for
    float rounding (a budget taken from a plan's own mean bits admits that plan)."""
    total = budget_bits * params
    return int(math.floor(total + max(1e-6, abs(total) * BUDGET_SLACK)))


def options(param: str, cols: int, params: int, formats, group_size: int, kl: dict) -> list:
    """A matrix's choices [(stored bits, KL, format)] by bits, for the formats with a KL; of formats
    with equal bits (bf16 and fp16) only the lowest KL (the first listed on a tie)."""
    best = {}
    for fmt in formats:
        if (param, fmt) not in kl:
            continue
        bits, value = stored_bits(fmt, cols, params, group_size), kl[(param, fmt)]
        if bits not in best or value < best[bits][1]:
            best[bits] = (bits, value, fmt)
    return [best[b] for b in sorted(best)]


def upgrade_ratio(current: tuple, target: tuple) -> float:
    """KL reduction per extra stored bit of moving a matrix from one choice to a higher one."""
    return (current[1] - target[1]) / (target[0] - current[0])


def best_upgrade(choices: list, at: int, room: int):
    """The matrix's upgrade with the largest KL reduction per extra bit that fits in `room` bits
    and lowers KL: (ratio, index) or None. Over every higher choice, not only the next: the
    steepest one is the next vertex of the lower convex hull of (bits, KL), which is the next
    format when the KL curve is convex and skips a format that costs more and helps less."""
    found = None
    for index in range(at + 1, len(choices)):
        if choices[index][1] >= choices[at][1] or choices[index][0] - choices[at][0] > room:
            continue
        ratio = upgrade_ratio(choices[at], choices[index])
        if found is None or ratio > found[0]:
            found = (ratio, index)
    return found


def oracle_plan(estimates: pd.DataFrame, matrices: pd.DataFrame, formats, budget_bits: float,
                group_size: int) -> pd.Series:
    """param_name -> format: every matrix of `matrices` starts at its lowest-bit format; then,
    repeatedly, the upgrade (a matrix to a higher format) with the largest KL reduction per extra
    bit that keeps the parameter-weighted mean bits per weight (bits_per_weight, scales included)
    at or below budget_bits is taken, until none fits or lowers KL. A format without an estimate
    for a matrix is not offered to it; a budget below the lowest formats raises ValueError."""
    kl, shapes = kl_table(estimates), matrix_shapes(estimates, matrices)
    params = [int(n) for n in shapes["params"]]
    choices = [options(p, c, n, formats, group_size, kl)
               for p, c, n in zip(shapes["param_name"], shapes["cols"], params)]
    missing = [p for p, c in zip(shapes["param_name"], choices) if not c]
    if missing:
        raise ValueError(f"no estimated KL for any of {list(formats)} for {missing[:3]}")
    lowest = sum(c[0][0] for c in choices)
    room = budget_total(budget_bits, sum(params)) - lowest
    if room < 0:
        raise ValueError(f"budget {budget_bits:g} bits per weight is below the lowest formats' "
                         f"{lowest / sum(params):.4f}")
    at = [0] * len(choices)
    while True:
        moves = [(move[0], i, move[1]) for i in range(len(choices))
                 if (move := best_upgrade(choices[i], at[i], room)) is not None]
        if not moves:
            break
        _, i, index = max(moves, key=lambda m: (m[0], -m[1]))  # ties: the first matrix
        room -= choices[i][index][0] - choices[i][at[i]][0]
        at[i] = index
    return pd.Series([c[a][2] for c, a in zip(choices, at)], index=pd.Index(shapes["param_name"], name="param_name"),
                     name="format")


def plan_bits(plan: pd.Series, matrices: pd.DataFrame, group_size: int, estimates: pd.DataFrame = None) -> float:
    """The parameter-weighted mean bits per weight of a plan (param_name -> format)."""
    shapes = matrix_shapes(estimates if estimates is not None else matrices, matrices).set_index("param_name")
    shapes = shapes.loc[list(plan.index)]
    bits = [bits_per_weight(f, int(c), group_size) for f, c in zip(plan.to_numpy(), shapes["cols"])]
    return float(np.dot(bits, shapes["params"].astype(float)) / shapes["params"].astype(float).sum())


def predicted_kl(plan: pd.Series, estimates: pd.DataFrame) -> float:
    """The additive model's KL of a plan: the sum of estimated_kl over its (param_name, format)
    pairs; NaN when one pair has no estimate."""
    kl = kl_table(estimates)
    values = [kl.get((param, fmt), math.nan) for param, fmt in plan.items()]
    return float(sum(values)) if values else 0.0
