"""The oracle plan (greedy knapsack under the additive model) against brute force on tiny models."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from blockscope.compression.formats import bits_per_weight
from blockscope.compression.oracle import oracle_plan, plan_bits, predicted_kl

FORMATS = ["int4", "int8", "bf16"]
GROUP = 32


def tiny_model(kls: dict, cols=None, params=None):
    """estimates and matrices of matrices named by kls' keys; kls[name] = KL per FORMATS entry."""
    names = list(kls)
    cols = cols or {n: 64 for n in names}
    params = params or {n: 64 * 64 for n in names}
    estimates = pd.DataFrame([{"param_name": n, "perturbation": f, "estimated_kl": kl, "cols": cols[n],
                               "rows": params[n] // cols[n], "params": params[n]}
                              for n in names for f, kl in zip(FORMATS, kls[n])])
    matrices = pd.DataFrame({"param_name": names, "params": [params[n] for n in names]})
    return estimates, matrices


def brute_force(kls: dict, cols: dict, params: dict, budget: float):
    """The lowest summed KL over every plan within the budget (parameter-weighted mean bits)."""
    names, total = list(kls), sum(params.values())
    best = (math.inf, None)
    for choice in itertools.product(range(len(FORMATS)), repeat=len(names)):
        bits = sum(bits_per_weight(FORMATS[c], cols[n], GROUP) * params[n] for c, n in zip(choice, names)) / total
        if bits <= budget + 1e-12:
            kl = sum(kls[n][c] for c, n in zip(choice, names))
            best = min(best, (kl, choice), key=lambda b: b[0])
    return best


def test_greedy_is_optimal_on_a_convex_case_worked_by_hand():
    """Convex curves; the budget leaves 15 bits per 4096 weights above int4 for every matrix:
    a -> bf16 (11.375) and b -> int8 (3.625) gain 14, the best of all 81 plans (four int8 gain 12.8)."""
    kls = {"a": [10, 2, 0], "b": [5, 1, 0], "c": [1, 0.5, 0], "d": [0.4, 0.1, 0]}
    estimates, matrices = tiny_model(kls)
    budget = (4 * bits_per_weight("int4", 64, GROUP) + 15) / 4
    plan = oracle_plan(estimates, matrices, FORMATS, budget, GROUP)
    assert plan.to_dict() == {"a": "bf16", "b": "int8", "c": "int4", "d": "int4"}
    best_kl, best_choice = brute_force(kls, {n: 64 for n in kls}, {n: 4096 for n in kls}, budget)
    assert predicted_kl(plan, estimates) == pytest.approx(best_kl) == pytest.approx(0 + 1 + 1 + 0.4)
    assert [FORMATS[c] for c in best_choice] == plan.tolist()


@pytest.mark.parametrize("seed", range(40))
def test_greedy_within_the_knapsack_gap_of_brute_force(seed):
    """Random (not always convex or monotone) KLs, shapes and budgets: the plan never exceeds the
    budget, never beats the optimum, and falls short of it by at most the largest KL change one
    matrix can make (the greedy bound of the multiple-choice knapsack)."""
    rng = np.random.default_rng(seed)
    names = list("abcd")
    cols = {n: int(rng.choice([32, 48, 64, 128])) for n in names}
    params = {n: cols[n] * int(rng.integers(8, 200)) for n in names}
    kls = {n: sorted(rng.exponential(1.0, 3), reverse=True) if seed % 2 else list(rng.exponential(1.0, 3))
           for n in names}
    estimates, matrices = tiny_model(kls, cols, params)
    total = sum(params.values())
    low = sum(bits_per_weight("int4", cols[n], GROUP) * params[n] for n in names) / total
    budget = float(rng.uniform(low, 16))
    plan = oracle_plan(estimates, matrices, FORMATS, budget, GROUP)
    bits = sum(bits_per_weight(plan[n], cols[n], GROUP) * params[n] for n in names) / total
    assert bits <= budget + 1e-9
    assert plan_bits(plan, matrices, GROUP, estimates) == pytest.approx(bits)
    best_kl, _ = brute_force(kls, cols, params, budget)
    got = predicted_kl(plan, estimates)
    gap = max(max(k) - min(k) for k in kls.values())
    assert best_kl - 1e-12 <= got <= best_kl + gap


def test_budget_below_the_lowest_formats_is_refused():
    estimates, matrices = tiny_model({"a": [1, 0.5, 0], "b": [1, 0.5, 0]})
    with pytest.raises(ValueError, match="below the lowest"):
        oracle_plan(estimates, matrices, FORMATS, 4.0, GROUP)


def test_budget_of_the_highest_format_takes_it_everywhere_and_kl_is_the_sum():
    kls = {"a": [1.0, 0.25, 0.0], "b": [2.0, 0.5, 0.125]}
    estimates, matrices = tiny_model(kls)
    plan = oracle_plan(estimates, matrices, FORMATS, 16.0, GROUP)
    assert plan.tolist() == ["bf16", "bf16"]
    assert predicted_kl(plan, estimates) == pytest.approx(0.125)
    assert predicted_kl(pd.Series({"a": "int4", "b": "int8"}), estimates) == pytest.approx(1.5)
    assert math.isnan(predicted_kl(pd.Series({"a": "fp8-e4m3", "b": "int8"}), estimates))


def test_a_format_that_costs_more_and_helps_less_is_skipped():
    """int8 is worse than int4 for `a`: the greedy jumps straight to bf16 when the budget allows."""
    kls = {"a": [1.0, 1.5, 0.0], "b": [0.1, 0.05, 0.0]}
    estimates, matrices = tiny_model(kls)
    plan = oracle_plan(estimates, matrices, FORMATS, (16 + bits_per_weight("int4", 64, GROUP)) / 2, GROUP)
    assert plan.to_dict() == {"a": "bf16", "b": "int4"}


def test_a_budget_taken_from_a_plans_mean_bits_admits_as_many_stored_bits_and_no_more():
    """Shapes of SmolLM2's projections: the budget is a hint-like plan's float mean bits; the
    oracle's stored bits (whole scales and zero points) never exceed that plan's, counted exactly."""
    shapes = {"q": (576, 576), "k": (192, 576), "up": (1536, 576), "down": (576, 1536)}
    kls = {"q": [0.02, 0.004, 0.0], "k": [0.05, 0.01, 0.0], "up": [0.01, 0.003, 0.0], "down": [0.2, 0.03, 0.001]}
    cols = {n: c for n, (r, c) in shapes.items()}
    params = {n: r * c for n, (r, c) in shapes.items()}
    estimates, matrices = tiny_model(kls, cols, params)
    matrices["cols"] = matrices["param_name"].map(cols)

    def stored(plan):
        return sum(round(bits_per_weight(f, cols[n], GROUP) * params[n]) for n, f in plan.items())

    for chosen in ({"q": "int8", "k": "bf16", "up": "int4", "down": "int8"},
                   {"q": "int4", "k": "int4", "up": "int4", "down": "bf16"}):
        budget = sum(bits_per_weight(f, cols[n], GROUP) * params[n] for n, f in chosen.items()) / sum(params.values())
        plan = oracle_plan(estimates, matrices, FORMATS, budget, GROUP)
        assert stored(plan) <= stored(chosen)
        assert plan_bits(plan, matrices, GROUP) <= budget + 1e-12
