"""Comparisons of evaluated variants scored on the same corpus windows: the paired t interval of
their per-window mean difference, a percentile bootstrap of it (for reference), the rank of a plan
among random plans as a p-value, the verdict a finding states, and a row of the comparisons table
(layout.COMPARISON_COLUMNS). docs/metrics.md, "Comparisons".

Windows are the unit of replication: two variants scored on the same windows are paired by
window, so the variation the windows share (some text is harder for every variant) cancels in
their difference. The t interval treats each window's mean difference per token as one
observation; the windows of one evaluation hold equal tokens (seq_len - 1 predictions each), so
this mean equals the token-weighted one. The bootstrap weights windows by their tokens.
"""

import math

import numpy as np
from scipy import stats

from blockscope import layout


def window_means(sums, tokens) -> np.ndarray:
    """Per-window mean per token: m_w = s_w / t_w (a WindowScores field's sum over its tokens)."""
    return np.asarray(sums, dtype=float) / np.asarray(tokens, dtype=float)


def t_quantile(level: float, df):
    """The two-sided Student t quantile: t_{(1 + level) / 2, df}."""
    return stats.t.ppf((1 + level) / 2, df)


def paired_t_interval(differences, level: float = 0.95) -> tuple:
    """Student t interval of the mean of n paired differences d_1..d_n (over the last axis):
    estimate d̄ = Σ d_w / n, d̄ ∓ t_{(1+level)/2, n-1} · s / √n with s the sample standard deviation
    (ddof 1). n == 1: (d, -inf, inf), nothing to estimate a spread from. A 2-D array gives arrays
    (one interval per row), so that simulations need no loop."""
    d = np.asarray(differences, dtype=float)
    n = d.shape[-1]
    if n == 0:
        raise ValueError("paired_t_interval needs at least one difference")
    estimate = d.mean(axis=-1)
    if n == 1:
        half = np.full_like(estimate, np.inf)
    else:
        half = t_quantile(level, n - 1) * d.std(axis=-1, ddof=1) / math.sqrt(n)
    low, high = estimate - half, estimate + half
    if d.ndim == 1:
        return float(estimate), float(low), float(high)
    return estimate, low, high


def control_means(other, field: str) -> np.ndarray:
    """Per-window means of a control: one WindowScores', or the mean over several of theirs
    (the random plans' mean: m_w = (1/k) Σ_j m_{j,w})."""
    controls = other if isinstance(other, (list, tuple)) else [other]
    if not controls:
        raise ValueError("no control to compare with")
    return np.mean([window_means(getattr(c, field), c.tokens) for c in controls], axis=0)


def per_window_differences(plan, other, field: str) -> tuple:
    """(d_w, t_w): per window, plan's mean `field` per token minus the control's, and the tokens.
    The variants must have been scored on the same windows (same tokens per window)."""
    controls = other if isinstance(other, (list, tuple)) else [other]
    tokens = np.asarray(plan.tokens, dtype=float)
    for control in controls:
        if len(control.tokens) != len(tokens) or not np.array_equal(np.asarray(control.tokens, dtype=float), tokens):
            raise ValueError(f"not scored on the same windows: {len(control.tokens)} against {len(tokens)} windows "
                             "or different tokens per window")
    return window_means(getattr(plan, field), plan.tokens) - control_means(other, field), tokens


def welch_df(a: float, df_a: int, b: float, df_b: int) -> float:
    """Welch-Satterthwaite degrees of freedom of a variance a + b estimated from two parts:
    (a + b)^2 / (a^2 / df_a + b^2 / df_b)."""
    denominator = a * a / df_a + b * b / df_b
    return (a + b) ** 2 / denominator if denominator > 0 else float(max(df_a, 1))


def random_plans_t_interval(differences, plan_means, level: float = 0.95) -> tuple:
    """Plan minus the expected random plan, not only these k: d̄ ∓ t_{df} · √(s_w²/n + s_p²/k), with
    s_w the sd of the n per-window differences (paired_t_interval's part) and s_p the sd of the k
    random plans' own means (the spread between draws, which a fixed set of plans would ignore);
    df by Welch-Satterthwaite. k == 1: paired_t_interval."""
    d, plan_means = np.asarray(differences, dtype=float), np.asarray(plan_means, dtype=float)
    n, k = len(d), len(plan_means)
    if k < 2 or n < 2:
        return paired_t_interval(d, level)
    windows_part, plans_part = d.var(ddof=1) / n, plan_means.var(ddof=1) / k
    half = t_quantile(level, welch_df(windows_part, n - 1, plans_part, k - 1)) * math.sqrt(windows_part + plans_part)
    estimate = float(d.mean())
    return estimate, estimate - half, estimate + half


def paired_difference(plan, other, level: float = 0.95, field: str = "nll") -> dict:
    """Plan minus control in mean `field` per token (nats for nll; negative: the plan is lower), with
    the paired t interval over windows (paired_t_interval on per-window mean differences).
    other: a WindowScores, or a list of them: their per-window mean (the random plans' mean), the
    interval then also counting the spread between the random plans (random_plans_t_interval)."""
    d, tokens = per_window_differences(plan, other, field)
    if isinstance(other, (list, tuple)) and len(other) > 1:
        means = [window_means(getattr(c, field), c.tokens).mean() for c in other]
        estimate, low, high = random_plans_t_interval(d, means, level)
    else:
        estimate, low, high = paired_t_interval(d, level)
    return {"estimate": estimate, "ci_low": low, "ci_high": high, "level": level, "windows": len(d),
            "tokens": int(tokens.sum())}


def token_weighted_difference(d, tokens):
    """The difference over all tokens: Σ t_w d_w / Σ t_w (over the last axis)."""
    return (np.asarray(d) * tokens).sum(axis=-1) / np.asarray(tokens).sum(axis=-1)


def bootstrap_difference(plan, other, samples: int = 1000, seed: int = 0, level: float = 0.95,
                         field: str = "nll") -> dict:
    """The same difference, its interval from a percentile bootstrap over windows (Efron and
    Tibshirani 1993, ch. 13): draw n windows with replacement `samples` times, each draw's
    statistic Σ t_w d_w / Σ t_w over the drawn windows, the (1 ∓ level)/2 quantiles. The estimate
    is the token-weighted difference of all windows. Kept for reference: verdicts use the t
    interval, since with 8-16 windows the percentile bootstrap's interval is too narrow (it
    ignores the (n-1)/n shrinkage of the plug-in variance and uses normal, not t, tails)."""
    d, tokens = per_window_differences(plan, other, field)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(d), size=(samples, len(d)))
    statistic = token_weighted_difference(d[pick], tokens[pick])
    tail = (1 - level) / 2
    return {"estimate": float(token_weighted_difference(d, tokens)), "ci_low": float(np.quantile(statistic, tail)),
            "ci_high": float(np.quantile(statistic, 1 - tail)), "level": level, "windows": len(d),
            "tokens": int(tokens.sum())}


def rank_p_value(value: float, null_values) -> float:
    """One-sided p-value of a plan among n random plans, lower is better: (1 + #{null <= value}) / (n + 1)
    (Phipson and Smyth 2010: the plan counts as one of the draws, so p is never 0). Ties count
    against the plan, so P(p <= a) <= a for exchangeable plans."""
    null = np.asarray(null_values, dtype=float)
    return float((1 + np.count_nonzero(null <= value)) / (len(null) + 1))


def verdict(estimate: float, low: float, high: float, min_effect: float) -> str:
    """What a finding may say (layout.VERDICTS), for plan minus control (negative: the plan better):
    "better" if high < 0 and -estimate >= min_effect, "worse" if low > 0 and estimate >= min_effect,
    "below minimum effect" if the interval excludes 0 but |estimate| < min_effect, else
    "no detectable difference" (also for NaN)."""
    if high < 0:
        return "better" if -estimate >= min_effect else "below minimum effect"
    if low > 0:
        return "worse" if estimate >= min_effect else "below minimum effect"
    return "no detectable difference"


def spread(values) -> dict:
    """A distribution of random plans: its median, 5 % and 95 % quantiles (linear interpolation)
    and count; NaN quantiles when empty."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {"median": math.nan, "q05": math.nan, "q95": math.nan, "n": 0}
    q05, median, q95 = np.quantile(v, [0.05, 0.5, 0.95])
    return {"median": float(median), "q05": float(q05), "q95": float(q95), "n": int(v.size)}


def comparison_row(model: str, experiment: str, plan: str, against: str, against_plan: str, result: dict,
                   min_effect: float, p_value: float | None = None, n_random: int | None = None,
                   articles: int | None = None, metric: str = "nll") -> dict:
    """One row of the comparisons table (layout.COMPARISON_COLUMNS) from paired_difference's result;
    the verdict from its interval and min_effect; NaN for a p-value, count of random plans or
    article count not given."""
    row = {"model": model, "experiment": experiment, "plan": plan, "against": against, "against_plan": against_plan,
           "metric": metric, "estimate": result["estimate"], "ci_low": result["ci_low"], "ci_high": result["ci_high"],
           "level": result["level"], "min_effect": min_effect,
           "verdict": verdict(result["estimate"], result["ci_low"], result["ci_high"], min_effect),
           "p_value": math.nan if p_value is None else p_value,
           "n_random": math.nan if n_random is None else n_random, "windows": result["windows"],
           "tokens": result["tokens"], "articles": math.nan if articles is None else articles}
    return {column: row[column] for column in layout.COMPARISON_COLUMNS}
