"""The plans each experiment scores, with the controls that test a spectral plan's claim.

Quantisation (quant_plans): a uniform plan per configured format; per preset its hint plan, the
mirror (the same formats in the reversed order of the metric, within each shape), the oracle plan
at the hint's budget when per-matrix sensitivity estimates exist, `seeds` random plans (the hint's
formats permuted within each shape: the same budget, only the order within a shape differs) and
`budget_seeds` budget-matched random plans (the preset's formats spread over all matrices
regardless of shape, at most the hint's stored bits: these test the across-type part of the rule,
k/v against q/o against the MLP). Pruning (prune_plans): per target the uniform, alpha and mirror
allocations and `seeds` random permutations of the alpha allocation over layers.

Every random plan differs from every other plan of its experiment: a duplicate would be scored,
and counted among the controls, twice. Seeds 0, 1, ... are drawn until `count` distinct plans are
kept, every distinct plan there is was kept, or ATTEMPTS_PER_PLAN x count seeds were tried; the
summary table then holds fewer (its rows say how many).
"""

import logging
import math
from collections import Counter

import numpy as np
import pandas as pd

from blockscope.compression import plans
from blockscope.compression.hints import DIRECTION_WORDS
from blockscope.compression.oracle import oracle_plan
from blockscope.compression.presets import PRESETS

ATTEMPTS_PER_PLAN = 50  # seeds tried per wanted plan before settling for fewer
BUDGET_SLACK = 1e-12  # relative: a uniform plan exactly at the hint's budget counts as at or below it


# --- distinct draws -----------------------------------------------------------------------------------

def format_key(plan: pd.Series) -> tuple:
    """What makes two quantisation plans the same weights: their (param_name, format) pairs."""
    return tuple(plan.items())


def allocation_key(allocation: pd.Series) -> tuple:
    """The same for a pruning allocation: its per-layer sparsities (rounded past float noise)."""
    return tuple(np.round(allocation.to_numpy(float), 12))


def distinct_permutations(values: pd.Series, groups: pd.Series) -> int:
    """How many distinct plans permuting `values` within each group gives: the product over groups
    of the multinomial n! / (k_1! ... k_m!) (n values, k_i of the i-th distinct one)."""
    total = 1
    for _, index in groups.groupby(groups, sort=False).groups.items():
        counts = Counter(values[index].tolist()).values()
        total *= math.factorial(len(index)) // math.prod(math.factorial(k) for k in counts)
    return total


def is_permutation(plan: pd.Series, other: pd.Series, groups: pd.Series) -> bool:
    """Whether `other` holds the same values as `plan` in every group (one of its permutations)."""
    return all(Counter(plan[index].tolist()) == Counter(other[index].tolist())
               for _, index in groups.groupby(groups, sort=False).groups.items())


def distinct_draws(draw, key, count: int, taken: dict, available: int | None = None) -> list:
    """[(seed, plan)]: plan = draw(seed) for seed = 0, 1, ..., kept when key(plan) is not in `taken`
    (the experiment's plans so far, key -> plan; a kept plan joins it), until `count` are kept,
    `available` are kept (every distinct plan there is), or ATTEMPTS_PER_PLAN x count seeds."""
    out, wanted = [], count if available is None else min(count, max(available, 0))
    for seed in range(ATTEMPTS_PER_PLAN * count):
        if len(out) >= wanted:
            break
        plan = draw(seed)
        if key(plan) not in taken:
            taken[key(plan)] = plan
            out.append((seed, plan))
    return out


def within_shape_random_plans(plan: pd.Series, matrices: pd.DataFrame, count: int, taken: dict) -> list:
    """[(seed, plan)]: up to `count` distinct permutations of the plan's formats within each shape,
    none equal to a plan in `taken`. A shape of one matrix, or one format per shape, allows none."""
    groups = plans.shape_groups(matrices)
    available = distinct_permutations(plan, groups) - sum(is_permutation(plan, other, groups)
                                                          for other in taken.values())
    return distinct_draws(lambda seed: plans.random_plan(plan, matrices, seed), format_key, count, taken, available)


# --- budget-matched random plans across shapes ------------------------------------------------------

def budget_random_plan(formats, matrices: pd.DataFrame, budget: int, rng: np.random.Generator,
                       group_size: int) -> pd.Series:
    """A random plan of `formats` over every matrix, regardless of shape, whose stored bits
    (plans.stored_bits, scales included) are at most `budget`, and as close as the draw allows:
    1. every matrix starts at the format with the fewest bits for its shape;
    2. the matrices in a random order: each moves to a format drawn uniformly among those with more
       bits whose extra bits still fit (it stays when none does);
    3. the matrices in a fresh random order: each moves to the format with the most bits that still
       fits (spending what step 2 left, so the plan ends near the budget).
    ValueError when even step 1 is over the budget."""
    cost = {name: {fmt: plans.stored_bits(fmt, int(rows), int(cols), group_size) for fmt in formats}
            for name, rows, cols in zip(matrices.index, matrices["rows"], matrices["cols"])}
    current = {name: min(formats, key=cost[name].get) for name in matrices.index}
    room = budget - sum(cost[name][fmt] for name, fmt in current.items())
    if room < 0:
        raise ValueError(f"a budget of {budget} bits is below the {budget - room} bits of the lowest formats")

    def upgrades(name):
        now = cost[name][current[name]]
        return [fmt for fmt in formats if now < cost[name][fmt] <= now + room]

    for fill in (False, True):
        for name in rng.permutation(np.asarray(matrices.index, dtype=object)):
            options = upgrades(name)
            if options:
                pick = max(options, key=cost[name].get) if fill else options[rng.integers(len(options))]
                room -= cost[name][pick] - cost[name][current[name]]
                current[name] = pick
    return pd.Series([current[name] for name in matrices.index], index=matrices.index, dtype=object)


def budget_random_plans(plan: pd.Series, formats, matrices: pd.DataFrame, count: int, taken: dict,
                        group_size: int) -> list:
    """[(seed, plan)]: up to `count` distinct budget_random_plan draws (rng seeded by the seed) at
    the stored bits of `plan`, none equal to a plan in `taken`."""
    budget = plans.plan_stored_bits(plan, matrices, group_size)
    return distinct_draws(lambda seed: budget_random_plan(formats, matrices, budget, np.random.default_rng(seed),
                                                          group_size), format_key, count, taken)


def uniform_at_or_below(bits: dict, budget: float) -> str | None:
    """The uniform plan (name -> its bits per weight) with the most bits not above `budget`, the
    first listed on a tie; None when every one is above it."""
    fits = {name: b for name, b in bits.items() if b <= budget * (1 + BUDGET_SLACK)}
    return max(fits, key=fits.get) if fits else None


# --- the quantisation experiment's plans ------------------------------------------------------------

def direction_words(direction: str, metric: str, mirrored: bool) -> str:
    """'lower alpha keeps more bits' for a hint plan; its mirror says the opposite."""
    word = DIRECTION_WORDS[direction]
    if mirrored:
        word = "higher" if word == "lower" else "lower"
    return f"{word} {metric} keeps more bits"


def quant_spec(name: str, kind: str, formats: pd.Series, simulated: dict, of=None, seed=None, direction=None) -> dict:
    return {"plan": name, "kind": kind, "of": of, "seed": seed, "direction": direction, "formats": formats,
            "simulated_as": simulated}


def unestimated_formats(formats, matrices: pd.DataFrame, estimates: pd.DataFrame) -> list:
    """The formats some planned matrix has no estimated KL for: an oracle without them would be the
    best plan of fewer formats, not the upper bound of the hint's."""
    known = estimates.dropna(subset=["estimated_kl"])
    known = set(zip(known["param_name"], known["perturbation"]))
    return [fmt for fmt in formats if any((name, fmt) not in known for name in matrices.index)]


def oracle_spec(preset: str, hint: pd.Series, settings: dict, matrices: pd.DataFrame, estimates: pd.DataFrame,
                group_size: int, simulated: dict) -> tuple:
    """(the oracle plan's spec at the hint's budget from the preset's formats, None) or (None, why
    not): a format of the preset without an estimate for every matrix, or the oracle's own refusal."""
    budget, formats = plans.average_bits(hint, matrices, group_size), plans.plan_formats(settings["formats"])
    lacking = unestimated_formats(formats, matrices, estimates)
    if lacking:
        logging.warning("no oracle plan for preset %s: no sensitivity estimate of %s", preset, ", ".join(lacking))
        return None, f"no oracle plan: the sensitivity estimates lack {', '.join(lacking)}"
    try:
        formats = oracle_plan(estimates, matrices, formats, budget, group_size)
    except ValueError as error:
        logging.warning("no oracle plan for preset %s: %s", preset, error)
        return None, f"no oracle plan: {error}"
    return quant_spec(f"oracle_{preset}", "oracle", formats.reindex(matrices.index).astype(object), simulated,
                      of=preset), None


def quant_plans(matrices: pd.DataFrame, formats, group_size: int, seeds: int, budget_seeds: int,
                estimates: pd.DataFrame = None, presets=tuple(PRESETS)) -> tuple:
    """(specs [{plan, kind, of, seed, direction, formats, simulated_as}], {preset: (settings, hint
    table)}, {(plan, against): why a control is missing}): uniform at each format; per preset its
    hint plan, the mirror, the oracle (estimates given), distinct random and budget_random plans;
    presets: which of blockscope.compression.presets (compress.quant.presets)."""
    specs = [quant_spec(f"uniform_{fmt}", "uniform", plans.uniform_plan(matrices, fmt),
                        plans.simulated_as([fmt], group_size)) for fmt in formats]
    taken = {format_key(s["formats"]): s["formats"] for s in specs}
    hints, missing = {}, {}
    for preset in presets:
        settings = plans.preset_settings(preset, group_size)
        hint, table = plans.hint_plan(matrices, settings)
        hints[preset] = (settings, table)
        metric, direction = settings["metric"], settings["direction"]
        simulated = plans.simulated_as(settings["formats"], group_size)
        named = [quant_spec(f"hint_{preset}", "hint", hint, simulated, preset, None,
                            direction_words(direction, metric, False)),
                 quant_spec(f"mirror_{preset}", "mirror", plans.mirror_plan(hint, matrices, metric), simulated, preset,
                            None, direction_words(direction, metric, True))]
        if estimates is not None:
            oracle, why = oracle_spec(preset, hint, settings, matrices, estimates, group_size, simulated)
            named += [oracle] if oracle else []
            missing.update({} if oracle else {(f"hint_{preset}", "oracle"): why})
        for spec in named:
            taken.setdefault(format_key(spec["formats"]), spec["formats"])
        randoms = within_shape_random_plans(hint, matrices, seeds, taken)
        budgeted = budget_random_plans(hint, plans.plan_formats(settings["formats"]), matrices, budget_seeds, taken,
                                       group_size)
        logging.info("preset %s: %d of %d within-shape random plans, %d of %d budget-matched ones (distinct)",
                     preset, len(randoms), seeds, len(budgeted), budget_seeds)
        specs += named
        specs += [quant_spec(f"random_{preset}_{seed}", "random", plan, simulated, preset, seed)
                  for seed, plan in randoms]
        specs += [quant_spec(f"budget_random_{preset}_{seed}", "budget_random", plan, simulated, preset, seed)
                  for seed, plan in budgeted]
    return specs, hints, missing


# --- the pruning experiment's allocations -----------------------------------------------------------

def random_allocations(named: dict, layers: pd.DataFrame, target: float, count: int) -> list:
    """[(seed, allocation)]: up to `count` distinct permutations of the alpha allocation over
    layers (rescaled to the target), none equal to a named allocation."""
    groups = plans.one_group(layers)
    taken = {allocation_key(a): a for a in named.values()}
    alpha = named["alpha"].round(12)
    available = distinct_permutations(alpha, groups) - sum(is_permutation(alpha, a.round(12), groups)
                                                           for a in taken.values())
    return distinct_draws(lambda seed: plans.random_allocation(named["alpha"], layers, target, seed), allocation_key,
                          count, taken, available)


def prune_plans(layers: pd.DataFrame, target: float, eps: float, seeds: int) -> dict:
    """name -> per-layer sparsity: uniform, alpha, mirror and random_{seed} (distinct), each at the target."""
    named = plans.prune_allocations(layers, target, eps)
    randoms = random_allocations(named, layers, target, seeds)
    logging.info("target %g: %d of %d random allocations (distinct)", target, len(randoms), seeds)
    return {**named, **{f"random_{seed}": allocation for seed, allocation in randoms}}
