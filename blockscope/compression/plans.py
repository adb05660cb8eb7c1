"""Compression plans from the spectra: which format, or which sparsity, each weight matrix gets.

A plan is a pandas Series indexed by param_name: a format name (quantisation) or a sparsity in
[0, 1) (pruning). Plans cover the linear matrices of the transformer blocks (attention and MLP
projections, not expert stacks) that have a usable spectrum; embeddings, the LM head, norms and
matrices without one stay as stored in every plan. A mirror or a random permutation moves
formats only between matrices of the same shape (the budget kept exactly), and a pruning
allocation is rescaled to the target after any reordering. The control plans drawn from these
(random ones drawn distinct, budget-matched ones across shapes): blockscope.compression.controls.
"""

import numpy as np
import pandas as pd

from blockscope.compression.formats import bits_per_weight, hint_format
from blockscope.compression.hints import quantization_config, quantization_hints
from blockscope.compression.presets import resolve_quantization
from blockscope.errors import BlockscopeError

PLANNED_BLOCK_TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_fused", "gate_proj", "up_proj", "gate_up_fused",
                       "down_proj")
ALPHA_METRICS = ("alpha", "alpha_hill", "alpha_peak", "alpha_mid")


def plan_matrices(metrics: pd.DataFrame, needed=ALPHA_METRICS) -> pd.DataFrame:
    """The metrics rows plans cover: block linear matrices (no expert stack) with status ok and
    every exponent in `needed` finite, indexed by param_name, with their parameter count."""
    rows = metrics[metrics["block_type"].isin(PLANNED_BLOCK_TYPES) & metrics["layer_index"].notna()]
    if "expert" in rows:
        rows = rows[rows["expert"].isna()]
    if "status" in rows:
        rows = rows[rows["status"] == "ok"]
    finite = np.isfinite(rows[list(needed)].apply(pd.to_numeric, errors="coerce")).all(axis=1)
    rows = rows[finite].copy()
    rows["layer_index"] = rows["layer_index"].astype(int)
    rows["params"] = rows["rows"].astype(np.int64) * rows["cols"].astype(np.int64)
    rows = rows.sort_values(["layer_index", "param_name"], kind="stable")
    return rows.set_index("param_name", drop=False).rename_axis(None)


# --- orderings shared by quantisation and pruning ---------------------------------------------------------

def reversed_order(values: pd.Series, key: pd.Series, groups: pd.Series) -> pd.Series:
    """The mirror: within each group, the item of rank r in `key` (ascending) gets the value of
    the item of rank n - 1 - r. The multiset of values in each group is unchanged."""
    out = values.copy()
    for _, index in groups.groupby(groups, sort=False).groups.items():
        order = key[index].sort_values(kind="stable").index
        out[order] = values[order].to_numpy()[::-1]
    return out


def permuted(values: pd.Series, groups: pd.Series, rng: np.random.Generator) -> pd.Series:
    """A random control: the values shuffled within each group (the same multiset per group)."""
    out = values.copy()
    for _, index in groups.groupby(groups, sort=False).groups.items():
        out[index] = rng.permutation(values[index].to_numpy())
    return out


def shape_groups(matrices: pd.DataFrame) -> pd.Series:
    """Matrices that may trade formats without changing the bit budget: those of one shape."""
    return matrices["rows"].astype(str) + "x" + matrices["cols"].astype(str)


# --- quantisation plans --------------------------------------------------------------------------------

def uniform_plan(matrices: pd.DataFrame, fmt: str) -> pd.Series:
    return pd.Series(fmt, index=matrices.index, dtype=object)


def preset_settings(preset: str, group_size: int) -> dict:
    """A named preset's complete rule (blockscope.compression.presets), as the quantization section resolves it."""
    return resolve_quantization({"preset": preset, "group_size": group_size})


def hint_plan(matrices: pd.DataFrame, settings: dict) -> tuple:
    """(plan of simulated formats, the hint table): the hint rule of hints.quantization_hints
    applied to the plan's matrices."""
    hints = quantization_hints(matrices.reset_index(drop=True), settings)
    plan = pd.Series([hint_format(f) for f in hints["suggested_format"]], index=matrices.index, dtype=object)
    return plan, hints


def hint_export(model: str, hints: pd.DataFrame, settings: dict) -> dict:
    """The per-parameter JSON users apply (quantization_config.json's layout) for this plan."""
    return quantization_config(model, hints, settings)


def mirror_plan(plan: pd.Series, matrices: pd.DataFrame, metric: str) -> pd.Series:
    """The same formats assigned in the reversed order of `metric`, within each shape."""
    return reversed_order(plan, matrices[metric], shape_groups(matrices))


def random_plan(plan: pd.Series, matrices: pd.DataFrame, seed: int) -> pd.Series:
    return permuted(plan, shape_groups(matrices), np.random.default_rng(seed))


def average_bits(plan: pd.Series, matrices: pd.DataFrame, group_size: int) -> float:
    """Parameter-weighted mean bits per weight of a plan, scales and zero points counted."""
    bits = [bits_per_weight(fmt, int(cols), group_size) for fmt, cols in zip(plan, matrices.loc[plan.index, "cols"])]
    params = matrices.loc[plan.index, "params"].to_numpy()
    return float(np.dot(bits, params) / params.sum())


def stored_bits(fmt: str, rows: int, cols: int, group_size: int) -> int:
    """A matrix's stored bits in `fmt`, scales and zero points included: an integer (rows x cols
    x bits_per_weight), so that budgets compare exactly."""
    return int(round(rows * cols * bits_per_weight(fmt, int(cols), group_size)))


def plan_stored_bits(plan: pd.Series, matrices: pd.DataFrame, group_size: int) -> int:
    """A plan's stored bits over its matrices (average_bits times their parameters, exactly)."""
    shapes = matrices.loc[plan.index]
    return sum(stored_bits(f, int(r), int(c), group_size) for f, r, c in zip(plan, shapes["rows"], shapes["cols"]))


def format_counts(plan: pd.Series) -> str:
    """"int4: 60, fp8-e4m3: 150" (matrices per format)."""
    return ", ".join(f"{fmt}: {n}" for fmt, n in plan.value_counts().items())


def plan_formats(names) -> list:
    """The simulated formats of a rule's format names (hint_format), each once, in order."""
    return list(dict.fromkeys(hint_format(name) for name in names))


# What each simulated format is (blockscope.compression.formats), for plans.json's simulated_as.
SIMULATIONS = {
    "bf16": "bf16 (round to nearest even)",
    "fp16": "fp16 (round to nearest even)",
    "fp8-e4m3": "fp8-e4m3 with one fp16 scale per output row",
    "int8": "symmetric int8 with one fp16 scale per output row",
    "int4": "asymmetric int4, one fp16 scale and a 4-bit zero point per group of {group_size} inputs",
}


def simulated_as(names, group_size: int) -> dict:
    """name -> what is evaluated for it: a name like fp8/int8 (the hints bill fp8 with per-row
    scales) is evaluated as its first format only, and says so."""
    out = {}
    for name in names:
        fmt = hint_format(name)
        text = SIMULATIONS[fmt].format(group_size=group_size)
        if "/" in str(name):
            text += f"; {name} names more than one format and only {fmt} is evaluated"
        out[str(name)] = text
    return out


# --- pruning allocations (AlphaPruning) ---------------------------------------------------------------

def layer_table(matrices: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per layer: its parameters and the mean of `metric` over its matrices (AlphaPruning's
    block-wise mapping averages the matrices of a block)."""
    return matrices.groupby("layer_index").agg(params=("params", "sum"), alpha=(metric, "mean"))


def rescaled(sparsity: np.ndarray, params: np.ndarray, target: float) -> np.ndarray:
    """Scale so that the parameter-weighted mean sparsity equals the target."""
    return np.asarray(sparsity, float) * target * params.sum() / np.dot(params, sparsity)


def alpha_allocation(alpha: np.ndarray, params: np.ndarray, target: float, eps: float) -> np.ndarray:
    """AlphaPruning's layer-wise sparsity: alpha mapped linearly onto [1 - eps, 1 + eps] (the lowest
    alpha to 1 - eps), times the target, rescaled so the parameter-weighted mean is the target.
    Higher alpha (less trained structure) is pruned more. Equal alphas give the uniform allocation."""
    alpha = np.asarray(alpha, float)
    span = alpha.max() - alpha.min()
    unit = (alpha - alpha.min()) / span if span > 0 else np.zeros_like(alpha)
    return rescaled(((1 - eps) + 2 * eps * unit) * target, np.asarray(params, float), target)


def check_allocation(allocation: pd.Series, model: str = None):
    """Every sparsity must stay below 1 (a target near 1 with a wide eps would prune whole matrices)."""
    if allocation.max() >= 1:
        raise BlockscopeError(f"a layer's allocated sparsity is {allocation.max():.3f} (>= 1)", model=model,
                              path="compress.prune", fix="lower compress.prune.eps or the target sparsities")


def prune_allocations(layers: pd.DataFrame, target: float, eps: float) -> dict:
    """Per-layer sparsity of the named allocations: uniform, alpha (AlphaPruning), mirror (reversed
    alpha ranks); each rescaled to the target. The random ones: controls.random_allocations."""
    params = layers["params"].to_numpy(float)
    alpha = pd.Series(alpha_allocation(layers["alpha"], params, target, eps), index=layers.index)
    out = {"uniform": pd.Series(target, index=layers.index, dtype=float), "alpha": alpha,
           "mirror": reversed_order(alpha, layers["alpha"], one_group(layers))}
    return {name: rescaled_allocation(a, layers, target) for name, a in out.items()}


def one_group(layers: pd.DataFrame) -> pd.Series:
    """Every layer in one group: a pruning allocation is reordered over all layers."""
    return pd.Series(0, index=layers.index)


def rescaled_allocation(allocation: pd.Series, layers: pd.DataFrame, target: float) -> pd.Series:
    return pd.Series(rescaled(allocation.to_numpy(float), layers["params"].to_numpy(float), target), index=layers.index)


def random_allocation(alpha: pd.Series, layers: pd.DataFrame, target: float, seed: int) -> pd.Series:
    """The alpha allocation shuffled over layers (seeded), rescaled to the target."""
    return rescaled_allocation(permuted(alpha, one_group(layers), np.random.default_rng(seed)), layers, target)


def matrix_sparsity(allocation: pd.Series, matrices: pd.DataFrame) -> pd.Series:
    """Each matrix gets its layer's sparsity."""
    return pd.Series(allocation.loc[matrices["layer_index"]].to_numpy(), index=matrices.index)


def weighted_mean(values: pd.Series, matrices: pd.DataFrame) -> float:
    params = matrices.loc[values.index, "params"].to_numpy(float)
    return float(np.dot(values.to_numpy(float), params) / params.sum())
