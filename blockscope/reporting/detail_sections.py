"""report.md sections of the detail tables (blockscope.aggregation.detail_tables):
heatmap statistics, heads per head index and per layer, the deep dives' eigenvalue summaries,
the down projections, layer x weight-type pivots and per-phase statistics."""

import os

import pandas as pd

from blockscope.aggregation.detail_tables import layer_pivot
from blockscope.layout import DETAIL_TABLES
from blockscope.reporting.markdown import has
from blockscope.reporting.markdown import table as markdown

PHASE_REPORT_METRICS = ("alpha", "effective_rank")  # the rest stay in phase_statistics.csv
PIVOT_METRICS = ("effective_rank", "alpha")


def table(frame: pd.DataFrame, digits: int = 3) -> str:
    """markdown.table with integer columns kept integers (an all-numeric frame would print 4 as 4.000)."""
    ints = [c for c in frame.columns if pd.api.types.is_integer_dtype(frame[c])]
    return markdown(frame.astype({c: object for c in ints}), digits)


def table_link(name: str) -> str:
    """A markdown link to a view table, relative to the model's report."""
    path = DETAIL_TABLES[name].removeprefix("results/{model}/")
    return f"[{path}]({path})"


def figure_link(plots, stem: str, link) -> str:
    """A markdown link to the first of the report's plots whose name starts with `stem`, else ''."""
    found = [p for p in plots if os.path.basename(p).startswith(stem)]
    return f" Figure: [{os.path.basename(found[0])}]({link(found[0])})." if found else ""


def heads_section(details: dict) -> list:
    """The heads heatmap in numbers, heads per head index (with LOW / MID / HIGH), per layer."""
    by_head, by_layer = details.get("heads_by_head"), details.get("heads_by_layer")
    if not has(by_head, "head"):
        return []
    return ["## Attention heads: detail tables", "",
            f"Heatmap statistics over every (layer, head) ({table_link('heads_heatmap_statistics')}):", "",
            table(details.get("heads_heatmap_statistics", pd.DataFrame())), "",
            "Per head index across layers, QK effective rank: `rank_class` is LOW / MID / HIGH, "
            "below the 25 % / above the 75 % quantile of these per-head means (else MID). The per-(layer, head) "
            "`tag` of the section Attention heads is different: the lowest / highest quartile of the mean of QK and OV "
            f"effective rank over every (layer, head) ({table_link('heads_by_head')}):",
            "", table(by_head), "",
            f"Per layer over its heads ({table_link('heads_by_layer')}):", "",
            table(by_layer if by_layer is not None else pd.DataFrame()), ""]


def deep_dive_section(details: dict) -> list:
    """Each deep-dive head's |lambda| percentiles, real / imaginary ranges, sign counts and milestones."""
    summary = details.get("deep_dive_summary")
    if not has(summary, "layer", "head"):
        return []
    return ["### Deep dives: eigenvalue summary", "",
            "|λ| percentiles, the ranges of the real and imaginary parts, how many eigenvalues have a positive "
            "and a negative real part, and energy_rank_50 ... _99 (n50 ... n99): the eigenvalues "
            f"(largest |λ| first) that hold 50/75/90/95/99 % of Σ|λ|² ({table_link('deep_dive_summary')}).", "",
            table(summary, 4), ""]


def down_projection_section(details: dict, plots, link) -> list:
    """The W_down analysis for every layer."""
    down = details.get("down_projections")
    if down is None:
        return []
    return ["## Down projections (W_down)", "",
            "Per layer: σ_max, σ_min, condition number σ_max / σ_min and the components reaching 50/75/90/95/99 % "
            f"of Σσ² ({table_link('down_projections')})."
            + figure_link(plots, "down_proj_variance", link), "", table(down, 4), ""]


def pivot_section(metrics: pd.DataFrame) -> list:
    """Layers x weight types of effective rank and alpha (mean per cell)."""
    lines = []
    for metric in PIVOT_METRICS:
        grid = layer_pivot(metrics, metric)
        if len(grid):
            lines += [f"## {metric} by layer and weight type", "", table(grid), ""]
    return lines


def phase_statistics_section(details: dict) -> list:
    """Per-phase statistics of a few metrics per weight type and over all types."""
    phases = details.get("phase_statistics")
    if not has(phases, "metric"):
        return []
    shown = phases[phases["metric"].isin(PHASE_REPORT_METRICS) & (phases["count"] > 0)]  # no empty phase
    return ["## Phase statistics (early / middle / late thirds of depth)", "",
            f"Per weight type and over all types (`all`); {', '.join(PHASE_REPORT_METRICS)} here, every metric in "
            f"{table_link('phase_statistics')}. cv = std / |mean|.", "",
            table(shown), ""]


def detail_report_sections(details: dict, metrics: pd.DataFrame, plots, link) -> list:
    """Every section of this module, in report order. details: DETAIL_TABLES name -> table."""
    return [*heads_section(details), *deep_dive_section(details),
            *down_projection_section(details, plots, link), *pivot_section(metrics),
            *phase_statistics_section(details)]
