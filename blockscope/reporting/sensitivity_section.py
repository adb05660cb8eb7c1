"""The per-matrix sensitivity in the report: what was measured and how much was estimated (with
the proxy's agreement), which metric predicts the measured KL (the correlation table and its
figures), and the findings' sentences: which metric, if any, predicts sensitivity on this model,
the best spectral metric against the best plain baseline. Reads the tables of rules
compress_sensitivity and sensitivity_metrics; nothing here measures a matrix."""

import math

import numpy as np
import pandas as pd

from blockscope.compression.metric_prediction import (
    BASELINES,
    SPECTRAL_METRICS,
    best_predictor,
    bonferroni,
    measured_mask,
    metric_column,
    metric_label,
    perturbations_of,
    rho_difference_interval,
)
from blockscope.layout import ALL_TYPES, COMPRESS_SENSITIVITY
from blockscope.reporting.markdown import has, table

PRUNE_PREFIX = "prune_"


def perturbation_words(perturbation: str) -> str:
    """int4 -> "quantised to int4"; prune_0.5 -> "magnitude-pruned to 50 % sparsity"."""
    if perturbation.startswith(PRUNE_PREFIX):
        try:
            return f"magnitude-pruned to {100 * float(perturbation.removeprefix(PRUNE_PREFIX)):g} % sparsity"
        except ValueError:
            return perturbation
    return f"quantised to {perturbation}"


def model_of(*frames) -> str:
    """The model a table belongs to (its `model` column), '' when none says."""
    return next((str(f["model"].iloc[0]) for f in frames if has(f, "model")), "")


def measured_counts(matrices: pd.DataFrame, agreement: dict | None) -> pd.DataFrame:
    """Per perturbation: matrices measured and estimated, and the proxy's agreement with the
    measured ones (Spearman's rho and its n; the calibration used; exp(rmse) of the log fit, the
    typical factor an estimate is off by)."""
    per = (agreement or {}).get("perturbations", {}) or {}
    rows = []
    for perturbation in perturbations_of(matrices):
        measured = int(measured_mask(matrices, perturbation).sum())
        fit = (per.get(perturbation) or {}).get("fit") or {}
        found = per.get(perturbation) or {}
        rows.append({"perturbation": perturbation, "measured": measured, "estimated": len(matrices) - measured,
                     "proxy rho": found.get("spearman", np.nan), "proxy n": found.get("n"),
                     "calibration": found.get("calibration", ""),
                     "error factor": math.exp(fit["rmse_log"]) if fit.get("rmse_log") is not None else np.nan})
    frame = pd.DataFrame(rows)
    return frame.assign(**{"proxy n": frame["proxy n"].astype("Int64")}) if len(frame) else frame


def overall_table(correlations: pd.DataFrame) -> pd.DataFrame:
    """The report's view of the correlations: the rows over all matrices, metrics by their names."""
    rows = correlations[correlations["block_type"] == ALL_TYPES]
    return pd.DataFrame({"perturbation": rows["perturbation"], "metric": rows["metric"].map(metric_label),
                         "kind": ["baseline" if m in BASELINES else "spectral" for m in rows["metric"]],
                         "matrices": rows["matrices"], "rho": rows["spearman"], "ci_low": rows["ci_low"],
                         "ci_high": rows["ci_high"], "p_value": rows["p_value"]})


def sensitivity_section(matrices: pd.DataFrame | None, correlations: pd.DataFrame | None, agreement: dict | None,
                        link, figures=(), level: float = 0.95) -> list:
    """Markdown lines: what was measured, measured against estimated matrices and the proxy's
    agreement, the correlations over all matrices (per block type in the linked table), the
    figures (figures: (name, path) pairs). link: path -> the link the report writes."""
    lines = ["## Per-matrix sensitivity and what predicts it", ""]
    if (agreement or {}).get("skipped"):
        return lines + [f"Skipped: {agreement['skipped']}.", ""]
    if not has(matrices, "param_name") or not perturbations_of(matrices):
        return lines + ["_(no matrix was measured)_", ""]
    perturbations = perturbations_of(matrices)
    lines += [f"Each of the {len(matrices)} analysed projection matrices was perturbed alone, everything else as "
              f"stored: {'; '.join(perturbation_words(p) for p in perturbations)}. Its sensitivity is the KL "
              "divergence of the next-token distribution to the base model's (nats per token) on the base "
              "evaluation's windows (for an encoder: the mean embedding loss, 1 - cosine to the base's sentence "
              "embeddings). Matrices not measured are estimated from an output-error proxy "
              "calibrated on the measured ones; the table gives the proxy's agreement with them.", "",
              table(measured_counts(matrices, agreement), 3), ""]
    model = model_of(correlations, matrices)
    csv = f"{COMPRESS_SENSITIVITY}/metric_correlations.csv".format(model=model)
    if has(correlations, "metric", "spearman"):
        lines += ["Spearman's rho of each metric with the measured KL, over the measured matrices only (the "
                  "estimated KLs come from the proxy and would flatter any metric it resembles), with a "
                  f"{100 * level:g} % percentile bootstrap interval over matrices and a two-sided p-value (t "
                  "approximation); block types with under 5 measured matrices have none; within each block type "
                  f"in [the correlation table]({link(csv)}).", "", table(overall_table(correlations), 3), ""]
    lines += [f"- [{name}]({link(path)})" for name, path in figures] + ([""] if figures else [])
    return lines


def rho_words(row) -> str:
    """rho = 0.61 [0.32, 0.80], p = 0.003 from a correlation row."""
    return f"rho = {row['spearman']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}], p = {row['p_value']:.2g}"


def overall_row(correlations: pd.DataFrame, perturbation: str, metric: str):
    rows = correlations[(correlations["perturbation"] == perturbation) & (correlations["metric"] == metric)
                        & (correlations["block_type"] == ALL_TYPES)]
    return rows.iloc[0]


def direction(row, metric: str) -> str:
    """Which way a positive or negative rho reads."""
    return f"higher {metric_label(metric)}, {'more' if row['spearman'] > 0 else 'less'} sensitive"


def comparison_words(matrices, perturbation: str, spectral: str, baseline: str, level: float = 0.95) -> str:
    """The best spectral metric against the best baseline: |rho| difference with its paired interval."""
    chosen = matrices[measured_mask(matrices, perturbation)]
    values = [pd.to_numeric(chosen[metric_column(m, perturbation)], errors="coerce") for m in (spectral, baseline)]
    estimate, low, high = rho_difference_interval(*values, pd.to_numeric(chosen[f"{perturbation}_kl"]),
                                                  level=level)
    if not np.isfinite(low):
        return "their difference has no interval"
    verdict = ("the spectral metric ranks sensitivity better" if low > 0 else
               "the baseline ranks sensitivity better" if high < 0 else "no detectable difference between them")
    return f"|rho| difference {estimate:+.2f} [{low:+.2f}, {high:+.2f}]: {verdict}"


def perturbation_finding(correlations: pd.DataFrame, matrices: pd.DataFrame, perturbation: str,
                         level: float = 0.95) -> str | None:
    """One sentence: which metric predicts the sensitivity to one perturbation, spectral against baseline."""
    rows = correlations[(correlations["perturbation"] == perturbation) & (correlations["block_type"] == ALL_TYPES)]
    if rows.empty or not np.isfinite(rows["spearman"]).any():
        return None
    measured = int(rows["matrices"].max())
    lead = (f"Per-matrix sensitivity, {perturbation_words(perturbation)} one matrix at a time ({measured} "
            f"measured; Spearman's rho with {100 * level:g} % bootstrap intervals)")
    spectral = best_predictor(correlations, SPECTRAL_METRICS, perturbation)
    baseline = best_predictor(correlations, BASELINES, perturbation)
    if spectral is None and baseline is None:
        return f"{lead}: no metric's interval excludes zero; none predicts it at this sample size."
    if spectral is None:
        row = overall_row(correlations, perturbation, baseline)
        return (f"{lead}: no spectral metric's interval excludes zero; the plain baseline {metric_label(baseline)} "
                f"does, {rho_words(row)} ({direction(row, baseline)}).")
    row = overall_row(correlations, perturbation, spectral)
    tested = int(np.isfinite(rows[rows["metric"].isin(SPECTRAL_METRICS)]["spearman"]).sum())
    adjusted = bonferroni(row["p_value"], tested)
    chance = ("" if adjusted < 1 - level else
              "; not beyond chance once the choice among them is counted")
    sentence = f"{lead}: {metric_label(spectral)} predicts it best of the spectral metrics, {rho_words(row)} " \
               f"({direction(row, spectral)}; p = {adjusted:.2g} after Bonferroni over the {tested} spectral " \
               f"metrics tested{chance})"
    if baseline is None:
        return f"{sentence}; no plain baseline's interval excludes zero."
    other = overall_row(correlations, perturbation, baseline)
    return (f"{sentence}; the best plain baseline, {metric_label(baseline)}, has {rho_words(other)}; "
            f"{comparison_words(matrices, perturbation, spectral, baseline, level)}.")


def sensitivity_findings(correlations: pd.DataFrame | None, matrices: pd.DataFrame | None, link,
                         level: float = 0.95) -> list:
    """The findings' sentences, one per perturbation, each linked to the correlation table."""
    if not has(correlations, "perturbation", "metric", "spearman") or not has(matrices, "param_name"):
        return []
    csv = f"{COMPRESS_SENSITIVITY}/metric_correlations.csv".format(model=model_of(correlations, matrices))
    found = [perturbation_finding(correlations, matrices, p, level) for p in dict.fromkeys(correlations["perturbation"])
             if f"{p}_kl" in matrices]
    return [f"{sentence} ([table]({link(csv)}))" for sentence in found if sentence]
