"""A series of models in the summary report: per main metric a trend finding on the medians over
all matrices (Kendall's tau of the metric against the members' order, with its exact p-value:
with few members a normal approximation would be wrong), a trend named only where p < 1 - level;
the largest step between consecutive members; the members' table and figures. Reads the series
table (blockscope.aggregation.series_tables); nothing here measures a matrix."""

import math
import os

import numpy as np
import pandas as pd
from scipy import stats

from blockscope.aggregation.delta_tables import numbers
from blockscope.aggregation.series_tables import SERIES_METRICS
from blockscope.layout import ALL_TYPES, SUMMARY
from blockscope.pair_layout import SERIES_CSV
from blockscope.reporting.delta_section import number, text_table
from blockscope.reporting.markdown import has

MIN_MEMBERS = 3  # Kendall's tau of 2 points is ±1 whatever they are: no trend can be tested below 3
METRIC_WORDS = {"alpha": "α", "alpha_hill": "α-Hill", "effective_rank": "effective rank",
                "stable_rank": "stable rank", "spectral_norm": "spectral norm", "frobenius_norm": "Frobenius norm"}


def series_folder(name: str) -> str:
    """A series' folder relative to the summary report (results/summary/report.md)."""
    return os.path.relpath(os.path.dirname(SERIES_CSV.format(series=name)), SUMMARY) + "/"


def overall_rows(series: pd.DataFrame, name: str) -> pd.DataFrame:
    """One series' ALL_TYPES rows, in member order."""
    rows = series[(series["series"] == name) & (series["block_type"] == ALL_TYPES)]
    return rows.sort_values("position", kind="stable").reset_index(drop=True)


def kendall_trend(values) -> tuple:
    """(tau, p, exact) of the values against their order 0, 1, ..., n-1: Kendall's tau with scipy's
    exact two-sided p-value, or its normal approximation where values tie (exact: False)."""
    values = np.asarray(values, dtype=float)
    order = np.arange(values.size)
    exact = np.unique(values).size == values.size
    result = stats.kendalltau(order, values, method="exact" if exact else "asymptotic")
    return float(result.statistic), float(result.pvalue), exact


def smallest_exact_p(n: int) -> float:
    """The smallest two-sided exact p of Kendall's tau over n untied values: 2 / n! (a perfect order)."""
    return min(1.0, 2 / math.factorial(n))


def trend_finding(rows: pd.DataFrame, name: str, metric: str, level: float = 0.95) -> str | None:
    """Whether the median `metric` rises or falls along the series, only where p < 1 - level."""
    values = numbers(rows, metric)
    finite = np.isfinite(values)
    kept, members = values[finite], rows.loc[finite, "model"].astype(str).tolist()
    label = f"Series {name}: the median {METRIC_WORDS.get(metric, metric)} over all matrices"
    if kept.size < MIN_MEMBERS:
        return None if kept.size == 0 else (f"{label} is finite for {kept.size} members only: no trend can be "
                                            f"tested (Kendall's tau needs at least {MIN_MEMBERS}).")
    if np.all(kept == kept[0]):
        return f"{label} is the same, {kept[0]:.4g}, for all {kept.size} members: no trend."
    tau, p, exact = kendall_trend(kept)
    test = f"Kendall's tau = {tau:+.2f}, {'exact' if exact else 'normal-approximation (tied values)'} p = {p:.2g}"
    if p < 1 - level:
        way = "rises" if tau > 0 else "falls"
        return (f"{label} {way} along the series, {kept[0]:.4g} ({members[0]}) to {kept[-1]:.4g} ({members[-1]}) "
                f"({test}, {kept.size} members).")
    bound = smallest_exact_p(kept.size)
    reach = (f"; with {kept.size} members no order can reach p < {1 - level:g}" if bound >= 1 - level else "")
    return f"{label} shows no detectable trend over {kept.size} members ({test}{reach})."


def step_finding(rows: pd.DataFrame, name: str, prefix: str) -> str | None:
    """The largest pooled relative change between consecutive members."""
    if len(rows) < 2:
        return None
    change = numbers(rows, "relative_change_from_previous")
    source = f"[{os.path.basename(SERIES_CSV)}]({prefix}{os.path.basename(SERIES_CSV)})"
    if not np.isfinite(change).any():
        return (f"No consecutive members of series {name} share a matrix of one shape: no change between members "
                f"was measured ({source}).")
    at = int(np.nanargmax(np.where(np.isfinite(change), change, -np.inf)))
    row = rows.iloc[at]
    steps = change[np.isfinite(change)]
    return (f"The largest step along series {name}: {row['model']} from {row['previous']}, a pooled relative change "
            f"of {change[at]:.3g} (sqrt(Σ‖ΔW‖²_F / Σ‖W_previous‖²_F) over {int(row['shared_matrices'])} shared "
            f"matrices; median step {np.median(steps):.3g} over {steps.size} steps) ({source}).")


def series_findings(series: pd.DataFrame | None, level: float = 0.95, prefix: str | None = None) -> list:
    """Per series in the table: a trend finding per SERIES_METRICS column (or one sentence that no trend
    can be tested with under 3 members), then the largest step. prefix: the series' folder relative to
    the report (default: from the summary report)."""
    if not has(series, "series", "position", "block_type"):
        return []
    found = []
    for name in dict.fromkeys(series["series"]):
        rows = overall_rows(series, name)
        folder = series_folder(name) if prefix is None else prefix
        if len(rows) < MIN_MEMBERS:
            found.append(f"Series {name} has {len(rows)} members: no trend can be tested (Kendall's tau needs at "
                         f"least {MIN_MEMBERS}).")
        else:
            found += [trend_finding(rows, name, metric, level) for metric in SERIES_METRICS]
        found.append(step_finding(rows, name, folder))
    return [sentence for sentence in found if sentence]


MEMBER_COLUMNS = ["model", "position", "matrices", *SERIES_METRICS, "shared_matrices", "relative_change_from_previous"]


def member_cell(column: str, value) -> str:
    """Counts as integers, the change from the previous member to 3 significant digits (it can be
    1e-6), the medians to 4."""
    if column == "model":
        return str(value)
    if value is None or pd.isna(value):
        return ""
    if column in ("position", "matrices", "shared_matrices"):
        return str(int(value))
    return number(value) if column == "relative_change_from_previous" else f"{float(value):.4g}"


def member_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The ALL_TYPES rows for the report, as text."""
    shown = rows.reindex(columns=MEMBER_COLUMNS)
    return pd.DataFrame({column: [member_cell(column, v) for v in shown[column]] for column in MEMBER_COLUMNS})


def series_section(series: pd.DataFrame | None, figures: dict, level: float = 0.95,
                   prefix: str | None = None) -> str:
    """Markdown: per series, the findings, the members' medians over all matrices (per block type in
    the members table), the figures (name -> path relative to the report)."""
    if not has(series, "series", "position", "block_type"):
        return "\n".join(["## Series", "", "_(no series: the series table is empty)_", ""])
    lines = []
    for name in dict.fromkeys(series["series"]):
        folder = series_folder(name) if prefix is None else prefix
        part = series[series["series"] == name]
        lines += [f"## Series {name}", "",
                  "Per member, the medians of its metrics over its 2-D matrices (failed fits left out) and the "
                  "pooled relative change from the member before it over the matrices both hold with one shape. "
                  f"A trend is Kendall's tau of a median against the members' order, named only where its exact "
                  f"p < {1 - level:g}.", "",
                  *[f"- {sentence}" for sentence in series_findings(part, level, folder)], "",
                  f"Over all matrices (per block type in [{os.path.basename(SERIES_CSV)}]"
                  f"({folder}{os.path.basename(SERIES_CSV)})):", "",
                  text_table(member_table(overall_rows(series, name))), ""]
    lines += [f"- [{label}]({path})" for label, path in (figures or {}).items()] + ([""] if figures else [])
    return "\n".join(lines)
