"""Findings: a report's answers first. Each finding is one sentence with its number and a
Markdown link to the table or figure behind it, computed from the aggregated tables (never
from anything the tables do not hold). Thresholds come from config `report.findings`.

A finding whose table is missing or empty is left out (the report's sections say why);
`extra` sentences (the compression experiments' answers, once they exist) are appended as given.
See docs/metrics.md "Findings" for the formulas.
"""

import numpy as np
import pandas as pd

from blockscope.aggregation.model_tables import spectral_rows
from blockscope.evaluation.head_merge import headline_index, nll_tolerance
from blockscope.layout import HEADMERGE_FIGURES

DEFAULTS = {"alpha_range": [2.0, 6.0], "zscore": 3.5, "ppl_tolerance": 0.05}
MAD_TO_SIGMA = 0.6745  # the normal quantile at 0.75: MAD / 0.6745 estimates sigma (Iglewicz & Hoaglin)
UNUSUAL_LISTED = 5  # matrices named in the robust z-score finding
MIN_PER_TYPE = 3  # a weight type needs this many matrices before one of them can stand out


def md_link(text: str, target: str) -> str:
    return f"[{text}]({target})"


def links(prefix: str, ext: str) -> dict:
    """The tables and figures findings link to, for a report in `prefix` relative to the model's
    results folder ("" for its own report.md, "../{model}/" for the cross-model one)."""
    return {"alpha_figure": md_link("α by layer", f"{prefix}plots/alpha_by_layer.{ext}"),
            "metrics": md_link("metrics.csv", f"{prefix}metrics.csv"),
            "precision_figure": md_link("precision sensitivity", f"{prefix}plots/precision_sensitivity.{ext}"),
            "precision": md_link("precision_alpha_hill.csv", f"{prefix}precision_alpha_hill.csv"),
            "headmerge_figure": md_link("head-merge sweep", f"{prefix}headmerge/{HEADMERGE_FIGURES[0]}.{ext}"),
            "headmerge": md_link("headmerge/summary.parquet", f"{prefix}headmerge/summary.parquet")}


def layer_ranges(layers) -> str:
    """Layer indices as compact ranges: [0, 1, 2, 5] -> "0-2, 5"."""
    values = sorted({int(layer) for layer in layers})
    runs = []
    for value in values:
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def measured(metrics: pd.DataFrame | None, metric: str = "alpha") -> pd.DataFrame:
    """Matrices with a finite value of `metric` (no 1-D statistics-only rows, no failed fits)."""
    if metrics is None or metrics.empty or metric not in metrics or "block_type" not in metrics:
        return pd.DataFrame(columns=["block_type", "layer_index", metric])
    rows = spectral_rows(metrics)
    return rows[np.isfinite(rows[metric].astype(float))]


def where(row) -> str:
    """A matrix for a sentence: "down_proj layer 3", or its name outside the blocks."""
    layer = row.get("layer_index")
    if layer is not None and not pd.isna(layer):
        return f"{row['block_type']} layer {int(layer)}"
    return str(row.get("matrix", row.get("param_name", row["block_type"])))


# --- trained against its random-init twin -----------------------------------------------------

def twin_comparison(metrics: pd.DataFrame, control: pd.DataFrame, metric: str = "alpha") -> pd.DataFrame:
    """Per weight type in both: median `metric` of the trained model and of its twin, and
    difference = trained - random; furthest apart first."""
    trained = measured(metrics, metric).groupby("block_type")[metric].median()
    random = measured(control, metric).groupby("block_type")[metric].median()
    both = pd.DataFrame({"trained": trained, "random": random}).dropna()
    both["difference"] = both["trained"] - both["random"]
    return both.reindex(both["difference"].abs().sort_values(ascending=False, kind="stable").index) \
        .rename_axis("block_type").reset_index()


def twin_finding(metrics, control, link: dict) -> str | None:
    comparison = twin_comparison(metrics, control)
    if comparison.empty:
        return None
    twin = control["model"].iloc[0] if "model" in control else "the random twin"
    pairs = ", ".join(f"{r.block_type} {r.trained:.2f} vs {r.random:.2f}" for r in comparison.itertuples())
    far = comparison.iloc[0]
    return (f"Trained against its random-init twin {twin}, median α by weight type is {pairs}; "
            f"furthest apart: {far.block_type}, {abs(far.difference):.2f} {'below' if far.difference < 0 else 'above'} "
            f"the twin ({link['alpha_figure']}, {link['metrics']}).")


# --- WeightWatcher's well-trained range ---------------------------------------------------------

def outside_range(metrics: pd.DataFrame, alpha_range) -> pd.DataFrame:
    """Matrices whose alpha is below alpha_range[0] or above alpha_range[1], with side "below"/"above"."""
    low, high = alpha_range
    rows = measured(metrics)
    out = rows[(rows["alpha"] < low) | (rows["alpha"] > high)].copy()
    out["side"] = np.where(out["alpha"] < low, "below", "above")
    return out


def range_finding(metrics, alpha_range, link: dict) -> str | None:
    rows = measured(metrics)
    if rows.empty:
        return None
    low, high = alpha_range
    out = outside_range(metrics, alpha_range)
    parts = []
    for side, bound in (("below", low), ("above", high)):
        part = out[out["side"] == side]
        groups = [f"{kind} {len(group)}" + (f" (layers {layer_ranges(group['layer_index'].dropna())})"
                                             if group["layer_index"].notna().any() else "")
                  for kind, group in part.groupby("block_type")]
        parts.append(f"{side} {bound:g}: {'; '.join(groups) if groups else 'none'}")
    return (f"{len(out)} of {len(rows)} matrices have α outside WeightWatcher's well-trained range "
            f"[{low:g}, {high:g}] ({'; '.join(parts)}) ({link['metrics']}, {link['alpha_figure']}).")


# --- the most unusual layers ----------------------------------------------------------------------

def robust_zscore(values) -> np.ndarray:
    """0.6745 (x - median) / MAD, MAD = median |x - median| (Iglewicz & Hoaglin's modified
    z-score); NaN everywhere when MAD is 0 (more than half the values equal)."""
    values = np.asarray(values, dtype=np.float64)
    median = np.median(values)
    mad = np.median(np.abs(values - median))
    if mad == 0:
        return np.full(values.shape, np.nan)
    return MAD_TO_SIGMA * (values - median) / mad


def zscores_by_type(metrics: pd.DataFrame, metric: str = "alpha") -> pd.DataFrame:
    """Every matrix with its robust z-score of `metric` within its weight type (column `zscore`),
    types of fewer than MIN_PER_TYPE matrices left out; largest |z| first."""
    rows = measured(metrics, metric)
    parts = [group.assign(zscore=robust_zscore(group[metric])) for _, group in rows.groupby("block_type")
             if len(group) >= MIN_PER_TYPE]
    if not parts:
        return rows.assign(zscore=pd.Series(dtype=float)).iloc[:0]
    scored = pd.concat(parts).dropna(subset=["zscore"])
    return scored.reindex(scored["zscore"].abs().sort_values(ascending=False, kind="stable").index)


def unusual_finding(metrics, threshold: float, link: dict) -> str | None:
    scored = zscores_by_type(metrics)
    if scored.empty:
        return None
    unusual = scored[scored["zscore"].abs() > threshold]
    if unusual.empty:
        top = scored.iloc[0]
        return (f"No matrix has an unusual α for its weight type: every robust z-score is within ±{threshold:g} "
                f"(largest: {where(top)}, α {top['alpha']:.2f}, z {top['zscore']:+.1f}) ({link['alpha_figure']}).")
    named = ", ".join(f"{where(row)} (α {row['alpha']:.2f}, z {row['zscore']:+.1f})"
                      for _, row in unusual.head(UNUSUAL_LISTED).iterrows())
    more = f" and {len(unusual) - UNUSUAL_LISTED} more" if len(unusual) > UNUSUAL_LISTED else ""
    return (f"{len(unusual)} of {len(scored)} matrices have an unusual α for their weight type "
            f"(|robust z| > {threshold:g}): {named}{more} ({link['alpha_figure']}, {link['metrics']}).")


# --- precision sensitivity --------------------------------------------------------------------------

def precision_finding(sensitivity: pd.DataFrame | None, threshold: float, link: dict) -> str | None:
    """sensitivity: one row per matrix with `matrix`, `alpha_hill_relative_range`, `precision_sensitive`
    (blockscope.analysis.precision_sensitivity.precision_sensitivity, or precision_alpha_hill.csv with
    layer_name as matrix)."""
    if sensitivity is None or sensitivity.empty or "alpha_hill_relative_range" not in sensitivity:
        return None
    ranked = sensitivity.dropna(subset=["alpha_hill_relative_range"])
    if ranked.empty:
        return None
    flagged = ranked["precision_sensitive"].astype(str).str.lower().eq("true")
    top = ranked.loc[ranked["alpha_hill_relative_range"].idxmax()]
    return (f"{int(flagged.sum())} of {len(ranked)} matrices are precision-sensitive (α-Hill moves by more than "
            f"{threshold:g} of its mean across the swept precisions); the most: {top['matrix']}, relative range "
            f"{top['alpha_hill_relative_range']:.3f} ({link['precision_figure']}, {link['precision']}).")


# --- what a comparison measures ------------------------------------------------------------------------

EMBEDDING_LOSS = "embedding_loss"  # an encoder's comparisons (evaluation.variants.comparison_metric)


def metric_words(metric: str) -> dict:
    """How the report speaks of a comparison's metric (layout.COMPARISON_COLUMNS' `metric`): `unit`
    after a difference, `what` the quantity is, `windows` and `items` for its sample. "nll": mean
    NLL per token in nats (a perplexity ratio alongside); "embedding_loss" (an encoder): mean
    1 - cosine to the base model's sentence embedding, per sentence, over groups of sentences."""
    if metric == EMBEDDING_LOSS:
        return {"unit": "in embedding loss", "windows": "windows (groups of sentences)", "items": "sentences",
                "what": "mean embedding loss per sentence (1 - cosine to the base model's sentence embedding)"}
    return {"unit": "nats per token", "windows": "windows", "items": "tokens", "what": "mean NLL per token (nats)"}


def table_metric(frame: pd.DataFrame | None) -> str:
    """The metric a summary table's plans were compared in: "embedding_loss" where its
    embedding_cosine is filled (an encoder's), else "nll"."""
    filled = frame is not None and "embedding_cosine" in frame and frame["embedding_cosine"].notna().any()
    return EMBEDDING_LOSS if filled else "nll"


# --- head merging -----------------------------------------------------------------------------------

def headmerge_headline(summary: pd.DataFrame | None, tolerance: float):
    """The row of the headline threshold, chosen on the selection half alone (head_merge.headline_index:
    the most heads removed within tolerance, ties: the lowest threshold); None when no merge is
    within it, nothing ran, or the summary predates the half split."""
    if summary is None or summary.empty or not {"heads_removed", "select_ci_high"} <= set(summary):
        return None
    chosen = headline_index(summary, tolerance)
    return None if chosen is None else summary.loc[chosen]


def percent_change(nll_difference: float) -> str:
    """A mean NLL difference (nats per token) as the perplexity change it means: 100 (e^d - 1) %."""
    return f"{100 * np.expm1(nll_difference):+.1f} %"


def against_controls(row, metric: str = "nll") -> str:
    """The held-out comparison with the random controls, named better or worse only per its verdict."""
    words = metric_words(metric)
    windows, items = int(row["heldout_windows"]), f"{int(row['heldout_tokens'])} {words['items']}"
    if not row.get("random_controls") or pd.isna(row.get("heldout_verdict")):
        return f"no random control (no other relabelling of its groups exists); {windows} windows, {items}"
    level, min_effect = 100 * row["level"], row["min_effect"]
    outcome = {"better": "better than the controls", "worse": "worse than the controls",
               "below minimum effect": f"a difference below the minimum effect of {min_effect:g} {words['unit']}",
               "no detectable difference": f"no detectable difference at {windows} windows / {items}",
               }[row["heldout_verdict"]]
    return (f"against {int(row['random_controls'])} random merges that remove as many heads per layer, "
            f"{row['heldout_vs_random']:+.4f} {words['unit']} ({level:g} % CI {row['heldout_vs_random_low']:+.4f} to "
            f"{row['heldout_vs_random_high']:+.4f}), rank p = {row['heldout_p_value']:.2f}: {outcome}")


def change_words(row, metric: str) -> str:
    """What merging did to the model on the held-out half, with its interval: the perplexity change,
    or an encoder's embedding loss (1 - cosine) and, over every sentence, its retrieval agreement."""
    level = f"{100 * row['level']:g} % CI"
    if metric == EMBEDDING_LOSS:
        retrieval = row.get("retrieval_agreement")
        retrieval = "" if retrieval is None or pd.isna(retrieval) else \
            f", and the top-1 retrieval agreement with the base over all sentences is {100 * retrieval:.1f} %"
        return (f"the embedding loss (1 - cosine to the base model's sentence embedding) changes by "
                f"{row['heldout_nll_change']:+.4f} per sentence ({level} {row['heldout_ci_low']:+.4f} to "
                f"{row['heldout_ci_high']:+.4f}){retrieval}")
    return (f"perplexity changes by {percent_change(row['heldout_nll_change'])} ({level} "
            f"{percent_change(row['heldout_ci_low'])} to {percent_change(row['heldout_ci_high'])})")


def held_out(row, metric: str = "nll") -> str:
    """A threshold's numbers on the held-out half: the change against the base with its interval
    (change_words), the comparison with the controls, and how many windows, tokens (sentences) and
    articles."""
    articles = row.get("heldout_articles")
    articles = "" if articles is None or pd.isna(articles) else f" from {int(articles)} WikiText articles"
    return (f"on the held-out {row['reported_on']} windows ({int(row['heldout_windows'])} windows, "
            f"{int(row['heldout_tokens'])} {metric_words(metric)['items']}{articles}) {change_words(row, metric)}; "
            f"{against_controls(row, metric)}")


def tolerance_words(level: float, tolerance: float, metric: str) -> str:
    """The headline's bound in words: a causal LM's perplexity within tolerance of the base's; an
    encoder's embedding loss within the same bound, log(1 + tolerance) (head_merge.nll_tolerance)."""
    if metric == EMBEDDING_LOSS:
        bound = nll_tolerance(tolerance)
        return (f"its embedding loss's {100 * level:g} % upper bound within {bound:.3f} (a mean cosine to the base "
                f"model's sentence embeddings of at least {1 - bound:.3f})")
    return f"its perplexity change's {100 * level:g} % upper bound within {100 * tolerance:g} % of the base"


def headmerge_finding(summary, tolerance: float, link: dict) -> str | None:
    if summary is None or summary.empty or not {"heads_removed", "select_ci_high"} <= set(summary):
        return None
    measure = summary["similarity"].iloc[0] if "similarity" in summary else "similarity"
    first, metric = summary.iloc[0], table_metric(summary)
    bound = tolerance_words(first["level"], tolerance, metric)
    best = headmerge_headline(summary, tolerance)
    sources = f"({link['headmerge_figure']}, {link['headmerge']})"
    if best is None:
        merging = summary[summary["heads_removed"] > 0]
        if merging.empty:
            return f"No {measure} threshold merges a single head pair {sources}."
        mildest = merging.sort_values(["heads_removed", "threshold"], ascending=[True, False], kind="stable").iloc[0]
        return (f"No {measure} threshold that merges heads has, on the {first['selected_on']} windows, {bound}; "
                f"the mildest merge, threshold {mildest['threshold']:g} ({int(mildest['heads_removed'])} heads "
                f"removed): {held_out(mildest, metric)} {sources}.")
    return (f"Merging heads by {measure} similarity: threshold {best['threshold']:g}, chosen on the "
            f"{best['selected_on']} windows as the largest merge (most heads removed) with {bound}, removes "
            f"{int(best['heads_removed'])} heads ({int(best['merged_pairs'])} similar pairs); "
            f"{held_out(best, metric)} {sources}.")


# --- the section ------------------------------------------------------------------------------------

def model_findings(metrics, settings: dict, link: dict, control=None, sensitivity=None, sensitivity_threshold=0.05,
                   headmerge=None, extra=()) -> list:
    """The findings of one model, in order; settings: config report.findings (DEFAULTS filled in)."""
    settings = {**DEFAULTS, **(settings or {})}
    found = [
        twin_finding(metrics, control, link) if control is not None else None,
        range_finding(metrics, settings["alpha_range"], link),
        unusual_finding(metrics, settings["zscore"], link),
        precision_finding(sensitivity, sensitivity_threshold, link),
        headmerge_finding(headmerge, settings["ppl_tolerance"], link),
        *extra,
    ]
    return [sentence for sentence in found if sentence]


def findings_section(sentences, title: str = "Findings") -> list:
    """Markdown lines: the findings as a bullet list (a line saying there is none otherwise)."""
    body = [f"- {sentence}" for sentence in sentences] or ["_(none: no table to read them from)_"]
    return [f"## {title}", "", *body, ""]
