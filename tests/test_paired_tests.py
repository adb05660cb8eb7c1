"""The statistics every comparison uses (blockscope.evaluation.paired_tests), each against an
independent computation: the t interval worked by hand and by scipy's paired t test, the bootstrap
against exact enumeration of its resamples, the rank p-value against every permutation of a tiny
set, and the finding rule's false-positive rate in a null simulation (with the old rule's beside it)."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from blockscope import layout
from blockscope.evaluation.paired_tests import (
    bootstrap_difference,
    comparison_row,
    paired_difference,
    paired_t_interval,
    rank_p_value,
    spread,
    verdict,
    window_means,
)
from blockscope.evaluation.scores import WindowScores


def scores(means, tokens):
    """WindowScores whose per-window mean NLL per token is `means` (sums = means x tokens)."""
    means, tokens = np.asarray(means, dtype=float), np.asarray(tokens)
    return WindowScores(nll=list(means * tokens), correct=[0] * len(tokens), tokens=list(tokens))


def test_window_means_divide_each_sum_by_its_tokens():
    assert window_means([3.0, 5.0, 0.0], [1, 2, 4]).tolist() == [3.0, 2.5, 0.0]


def test_t_interval_worked_by_hand():
    # d = 1, 2, 3, 6: mean 3; squared deviations 4, 1, 0, 9 -> s^2 = 14 / 3; se = s / sqrt(4)
    se = math.sqrt(14 / 3) / 2
    t_975_3, t_95_3 = 3.182446305284263, 2.353363434801823  # Student t quantiles, 3 degrees of freedom
    assert paired_t_interval([1, 2, 3, 6]) == pytest.approx((3.0, 3 - t_975_3 * se, 3 + t_975_3 * se), abs=1e-12)
    assert paired_t_interval([6, 3, 2, 1], level=0.90) == pytest.approx((3.0, 3 - t_95_3 * se, 3 + t_95_3 * se),
                                                                        abs=1e-12)
    assert paired_t_interval([0.25]) == (0.25, -math.inf, math.inf)  # one window: no spread to estimate
    assert paired_t_interval([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)      # no spread: the interval is the point


def test_paired_difference_equals_scipys_paired_t_test():
    rng = np.random.default_rng(3)
    other_means = rng.normal(3.0, 0.4, size=12)
    plan_means = other_means + rng.normal(-0.01, 0.02, size=12)
    tokens = [255] * 12
    result = paired_difference(scores(plan_means, tokens), scores(other_means, tokens), level=0.9)
    reference = stats.ttest_rel(plan_means, other_means).confidence_interval(0.9)
    assert result["estimate"] == pytest.approx(np.mean(plan_means - other_means), abs=1e-12)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((reference.low, reference.high), abs=1e-12)
    assert (result["level"], result["windows"], result["tokens"]) == (0.9, 12, 12 * 255)


def test_difference_against_several_controls_uses_their_per_window_mean():
    plan = scores([1.0, 2.0, 4.0], [2, 2, 2])
    controls = [scores([1.5, 2.5, 3.0], [2, 2, 2]), scores([0.5, 2.5, 4.0], [2, 2, 2])]
    # the controls' mean per window: 1.0, 2.5, 3.5 -> differences 0, -0.5, 0.5
    result = paired_difference(plan, controls)
    assert result["estimate"] == pytest.approx(0.0, abs=1e-15)
    # s = 0.5; t with 2 degrees of freedom has the closed form t_p = (2p - 1) / sqrt(2 p (1 - p))
    t_975_2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)
    assert result["ci_high"] == pytest.approx(t_975_2 * 0.5 / math.sqrt(3), abs=1e-12)
    with pytest.raises(ValueError, match="same windows"):
        paired_difference(plan, scores([1.0, 2.0], [2, 2]))


def test_bootstrap_worked_by_hand_weights_windows_by_tokens():
    # windows of 1 and 3 tokens, differences 0 and 1 per token: the difference over all tokens is
    # 3/4 (an unweighted mean would say 1/2). Resamples: {0,0} -> 0 (1/4), {0,1} -> 3/4 (1/2),
    # {1,1} -> 1 (1/4); so the 30 % and 70 % quantiles are 3/4, the 5 % and 95 % ones 0 and 1.
    plan, other = scores([0.0, 1.0], [1, 3]), scores([0.0, 0.0], [1, 3])
    narrow = bootstrap_difference(plan, other, samples=20000, level=0.4)
    assert (narrow["estimate"], narrow["ci_low"], narrow["ci_high"]) == (0.75, 0.75, 0.75)
    wide = bootstrap_difference(plan, other, samples=20000, level=0.9)
    assert (wide["ci_low"], wide["ci_high"], wide["windows"], wide["tokens"]) == (0.0, 1.0, 2, 4)


def exact_quantile(values, q):
    """The smallest value v with P(X <= v) >= q, for equally likely values."""
    ordered = np.sort(values)
    return ordered[math.ceil(q * len(ordered) - 1e-12) - 1]


def test_bootstrap_interval_matches_exact_enumeration_of_its_resamples():
    """n = 3 windows of unequal tokens: the 27 equally likely resamples give the bootstrap's exact
    distribution; with many samples its percentile interval is that distribution's quantiles."""
    d, tokens = np.array([0.1, -0.4, 0.7]), np.array([2, 1, 3])
    exact = np.array([(d[list(p)] * tokens[list(p)]).sum() / tokens[list(p)].sum()
                      for p in itertools.product(range(3), repeat=3)])
    cdf_steps = np.unique(np.searchsorted(np.sort(exact), exact, side="right") / 27)
    samples = 50000
    plan, other = scores(d + 2.0, tokens), scores(np.full(3, 2.0), tokens)
    for level in (0.6, 0.8, 0.95):
        tails = ((1 - level) / 2, (1 + level) / 2)
        # the quantile is well defined: no step of the exact CDF within 5 Monte Carlo sd of a tail
        assert all(np.abs(cdf_steps - q).min() > 5 * math.sqrt(q * (1 - q) / samples) for q in tails)
        result = bootstrap_difference(plan, other, samples=samples, seed=1, level=level)
        assert (result["ci_low"], result["ci_high"]) == pytest.approx(tuple(exact_quantile(exact, q) for q in tails),
                                                                      abs=1e-9)
        assert result["estimate"] == pytest.approx((d * tokens).sum() / tokens.sum(), abs=1e-12)


def p_values_of_every_permutation(values):
    return np.array([rank_p_value(order[0], order[1:]) for order in itertools.permutations(values)])


def test_rank_p_value_is_exact_for_exchangeable_plans():
    """All 120 orders of 5 distinct values, the first the plan: P(p <= k/5) = k/5 exactly."""
    p = p_values_of_every_permutation([0.3, 0.1, 0.9, 0.5, 0.2])
    for k in range(1, 6):
        assert np.mean(p <= k / 5 + 1e-12) == pytest.approx(k / 5, abs=1e-12)


def test_rank_p_value_with_ties_stays_valid():
    """Ties count against the plan: P(p <= a) <= a for every attainable a."""
    p = p_values_of_every_permutation([1.0, 1.0, 2.0, 3.0, 3.0])
    for a in np.unique(p):
        assert np.mean(p <= a + 1e-12) <= a + 1e-12
    assert rank_p_value(0.2, [0.1, 0.2, 0.3, 0.4]) == 3 / 5   # one lower, one tied
    assert rank_p_value(0.0, [0.1, 0.2, 0.3, 0.4]) == 1 / 5   # best of all: never 0
    assert rank_p_value(0.5, [0.5, 0.5]) == 1.0
    assert rank_p_value(0.5, []) == 1.0


def test_verdict_four_outcomes():
    assert verdict(-0.01, -0.015, -0.005, 0.002) == "better"
    assert verdict(0.01, 0.005, 0.015, 0.002) == "worse"
    assert verdict(-0.001, -0.0015, -0.0005, 0.002) == "below minimum effect"
    assert verdict(0.001, 0.0005, 0.0015, 0.002) == "below minimum effect"
    assert verdict(-0.01, -0.03, 0.01, 0.002) == "no detectable difference"   # a large effect, not resolved
    assert verdict(-0.002, -0.003, -0.001, 0.002) == "better"                 # exactly the minimum counts
    assert verdict(math.nan, math.nan, math.nan, 0.002) == "no detectable difference"
    assert verdict(0.0, 0.0, 0.0, 0.0) == "no detectable difference"          # identical plans
    assert set(layout.VERDICTS) == {"better", "worse", "below minimum effect", "no detectable difference"}


def test_spread_worked_by_hand():
    # 0, 1, ..., 20: the 5 % quantile sits at position 0.05 x 20 = 1, the 95 % one at 19
    assert spread(np.arange(21)[::-1]) == {"median": 10.0, "q05": 1.0, "q95": 19.0, "n": 21}
    empty = spread([])
    assert empty["n"] == 0 and math.isnan(empty["median"]) and math.isnan(empty["q05"])


def test_comparison_row_has_the_table_columns_and_its_verdict():
    result = paired_difference(scores([2.0, 2.1, 2.2, 2.05], [9] * 4), scores([2.1, 2.2, 2.31, 2.14], [9] * 4))
    row = comparison_row("m", "quant", "hint_balanced", "random", "mean of 5 random plans", result, 0.002,
                         p_value=1 / 6, n_random=5, articles=3)
    assert list(row) == layout.COMPARISON_COLUMNS
    assert row["verdict"] == verdict(result["estimate"], result["ci_low"], result["ci_high"], 0.002) == "better"
    assert (row["p_value"], row["n_random"], row["articles"], row["windows"], row["tokens"]) == (1 / 6, 5, 3, 4, 36)
    bare = comparison_row("m", "prune", "alpha", "mirror", "alpha_mirror", result, 0.5)
    assert bare["verdict"] == "below minimum effect" and math.isnan(bare["p_value"]) and math.isnan(bare["articles"])


def null_plans(rng, replicates, plans, windows, noise=0.01):
    """Mean NLL per token of exchangeable plans on shared windows: a per-window difficulty every
    plan shares (sd 0.3 nats) plus each plan's own per-window noise; no plan is better."""
    difficulty = 3.0 + rng.normal(0, 0.3, size=(replicates, 1, windows))
    return difficulty + rng.normal(0, noise, size=(replicates, plans, windows))


def finding_rate(plan, control, min_effect=0.0, level=0.95):
    """The share of replicates in which the finding rule names a winner (better or worse)."""
    estimate, low, high = paired_t_interval(plan - control, level)
    named = [verdict(e, lo, hi, min_effect) in ("better", "worse") for e, lo, hi in zip(estimate, low, high)]
    return float(np.mean(named))


@pytest.mark.parametrize("windows", [8, 16])
def test_null_simulation_false_positive_rate(windows):
    """Seven exchangeable plans (a hint, its mirror, five random plans), 4000 replicates. The
    finding rule (paired t interval at 95 % excludes 0, |estimate| >= min_effect = 0) names a
    winner of hint against mirror in 4.7 % (8 windows) and 5.2 % (16 windows) of replicates: its
    level, within Monte Carlo error (sd 0.35 %). The old rule (the perplexity gap between hint and
    mirror beyond 2 population sd, ddof 0, of the 5 random plans' perplexities) fired in 28.1 % and
    26.8 % of the same replicates."""
    rng = np.random.default_rng(windows)
    nll = null_plans(rng, 4000, 7, windows)
    new_rate = finding_rate(nll[:, 0], nll[:, 1])
    assert new_rate <= 0.05 + 0.015
    assert new_rate >= 0.05 - 0.015  # and not by never naming one
    perplexity = np.exp(nll.mean(axis=-1))
    old_rate = np.mean(np.abs(perplexity[:, 0] - perplexity[:, 1]) > 2 * perplexity[:, 2:].std(axis=-1, ddof=0))
    assert old_rate > 0.2


def test_the_finding_rule_detects_a_real_effect_and_respects_min_effect():
    """A plan 0.015 nats per token better on each window (1.5 noise sd), 16 windows: the rule
    names it better almost always; with min_effect above the effect, it says below minimum."""
    rng = np.random.default_rng(7)
    nll = null_plans(rng, 2000, 2, 16)
    nll[:, 0] -= 0.015
    assert finding_rate(nll[:, 0], nll[:, 1]) > 0.95
    assert finding_rate(nll[:, 0], nll[:, 1], min_effect=0.03) < 0.01
