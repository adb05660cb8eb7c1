"""Per-model and cross-model tables from the per-unit files. Nothing here recomputes a spectrum."""

import datetime as dt

import numpy as np
import pandas as pd

from blockscope.analysis.heads import NONFINITE_TAG, quartile_tags
from blockscope.analysis.precision_sensitivity import DEFAULT_THRESHOLD, precision_sensitivity
from blockscope.layout import (
    CHECKPOINT,
    EXPORT_FIRST_COLUMNS,
    MAIN_METRICS,
    PLOT_METRICS,
    PRECISION_SENSITIVITY_COLUMNS,
    PRECISION_SUMMARY_COLUMNS,
    PRECISION_WIDE_COLUMNS,
    RELATIVE_RANGE_ROW,
    SENSITIVE_ROW,
    STATISTICS_ONLY,
)

# The columns of statistics_by_type.csv and phase_analysis.csv (docs/outputs.md): declared, so
# that a model without a spectrum (only 1-D parameters, or every matrix refused) gets them with headers.
STATISTICS_COLUMNS = ["block_type", "metric", "count", "min", "max", "mean", "median", "std", "range", "first",
                      "last", "variance", "cv"]
PHASE_COLUMNS = ["block_type", "metric", "early", "middle", "late", "trend", "largest_drop", "largest_drop_at_layer",
                 "largest_jump", "largest_jump_at_layer"]


def stack(frames, columns=()) -> pd.DataFrame:
    """The non-empty frames one under the other; with none, an empty frame of `columns`."""
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(columns))


def spectral_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """The metrics rows that can hold a spectrum: every row but the 1-D parameters' statistics-only ones."""
    if "status" not in metrics:
        return metrics
    return metrics[metrics["status"] != STATISTICS_ONLY]


def with_provenance(metrics: pd.DataFrame, dims: dict) -> pd.DataFrame:
    """The per-matrix table with the export columns first (provenance from model.json)."""
    identity = {"model_path": CHECKPOINT.format(model=dims["model"]), "model_id": dims["model_id"],
                "revision": dims["revision"]}
    shapes = [f"{r}x{c}" if pd.notna(r) and pd.notna(c) else "" for r, c in zip(metrics["rows"], metrics["cols"])]
    table = metrics.assign(**identity, shape=shapes,
                           created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    first = [c for c in EXPORT_FIRST_COLUMNS if c in table]
    return table[first + [c for c in table.columns if c not in first]]


def series_stats(values: pd.Series) -> dict:
    """count, min, max, mean, median, std, range, first, last, variance, CV (std / |mean|)."""
    v = values.dropna()
    if v.empty:
        return {"count": 0}
    mean = v.mean()
    return {"count": int(v.size), "min": v.min(), "max": v.max(), "mean": mean, "median": v.median(),
            "std": v.std(ddof=0), "range": v.max() - v.min(), "first": v.iloc[0], "last": v.iloc[-1],
            "variance": v.var(ddof=0), "cv": v.std(ddof=0) / abs(mean) if mean else np.nan}


def statistics_by_type(metrics: pd.DataFrame, columns=MAIN_METRICS) -> pd.DataFrame:
    """One row per (block_type, metric); first/last follow layer order."""
    ordered = spectral_rows(metrics).sort_values(["layer_index", "param_name"], na_position="first")
    rows = [{"block_type": kind, "metric": metric, **series_stats(group[metric])}
            for kind, group in ordered.groupby("block_type") for metric in columns if metric in group]
    return pd.DataFrame(rows, columns=STATISTICS_COLUMNS)


def phase_of(layer: pd.Series, layers: int) -> pd.Series:
    """early / middle / late thirds of the depth."""
    third = np.floor(3 * layer / max(layers, 1)).clip(0, 2)
    return third.map({0: "early", 1: "middle", 2: "late"})


def trend(means: list) -> str:
    """U-shape, inverted-U, monotone down/up, or other, from the early/middle/late means."""
    early, middle, late = means
    if any(pd.isna(x) for x in means):
        return "other"
    if middle < early and middle < late:
        return "U-shape"
    if middle > early and middle > late:
        return "inverted-U"
    if early >= middle >= late:
        return "monotone down"
    if early <= middle <= late:
        return "monotone up"
    return "other"


def phase_row(part: pd.DataFrame, metric: str) -> dict:
    """Phase means, trend and the largest layer-over-layer drop and jump of one metric."""
    per_layer = part.groupby("layer_index")[metric].mean().sort_index()
    means = [part.loc[part["phase"] == p, metric].mean() for p in ("early", "middle", "late")]
    steps = per_layer.diff().dropna()
    empty = steps.empty
    return {"early": means[0], "middle": means[1], "late": means[2], "trend": trend(means),
            "largest_drop": np.nan if empty else steps.min(),
            "largest_drop_at_layer": np.nan if empty else steps.idxmin(),
            "largest_jump": np.nan if empty else steps.max(),
            "largest_jump_at_layer": np.nan if empty else steps.idxmax()}


def phase_analysis(metrics: pd.DataFrame, layers: int, columns=MAIN_METRICS) -> pd.DataFrame:
    """Per weight type and metric: phase means, trend, largest layer-over-layer drop and jump."""
    inside = spectral_rows(metrics).dropna(subset=["layer_index"]).assign(
        phase=lambda f: phase_of(f["layer_index"].astype(float), layers))
    rows = []
    for kind, part in inside.groupby("block_type"):
        for metric in columns:
            if metric in part and part[metric].notna().any():
                rows.append({"block_type": kind, "metric": metric, **phase_row(part, metric)})
    return pd.DataFrame(rows, columns=PHASE_COLUMNS)


def precision_wide(precision: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """layer_name, category, out_features, in_features, alpha_<precision>..., then alpha_hill_range,
    alpha_hill_relative_range, precision_sensitive (one row per matrix)."""
    if precision.empty:
        return pd.DataFrame(columns=[*PRECISION_WIDE_COLUMNS, *PRECISION_SENSITIVITY_COLUMNS])
    wide = precision.pivot_table(index="matrix", columns="precision", values="alpha_hill", sort=False, dropna=False)
    wide.columns = [f"alpha_{p}" for p in wide.columns]
    info = precision.drop_duplicates("matrix").set_index("matrix")
    out = pd.DataFrame({"layer_name": wide.index, "category": info.loc[wide.index, "block_type"].to_numpy(),
                        "out_features": info.loc[wide.index, "rows"].to_numpy(),
                        "in_features": info.loc[wide.index, "cols"].to_numpy()})
    spread = precision_sensitivity(precision, threshold).set_index("matrix").loc[wide.index]
    return pd.concat([out, wide.reset_index(drop=True),
                      spread[PRECISION_SENSITIVITY_COLUMNS].reset_index(drop=True)], axis=1)


def _quantiles(values: pd.Series) -> dict:
    v = values.dropna()
    return {"count": int(v.size), "mean": v.mean(), "std": v.std(ddof=0), "min": v.min(), "median": v.median(),
            "max": v.max(), "q25": v.quantile(0.25), "q75": v.quantile(0.75)}


def precision_summary(precision: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """precision, count, mean, std, min, median, max, q25, q75 of alpha_hill per precision; then
    two rows over matrices: alpha_hill_relative_range (its statistics over the matrices where it
    is finite) and precision_sensitive (count: matrices with relative range > threshold; mean:
    their share of those matrices; the rest NaN)."""
    rows = [{"precision": name, **_quantiles(group["alpha_hill"])}
            for name, group in precision.groupby("precision", sort=False)]
    if rows:
        spread = precision_sensitivity(precision, threshold)
        relative = spread["alpha_hill_relative_range"].dropna()
        sensitive = int(spread["precision_sensitive"].sum())
        rows.append({"precision": RELATIVE_RANGE_ROW, **_quantiles(relative)})
        rows.append({"precision": SENSITIVE_ROW, "count": sensitive,
                     "mean": sensitive / relative.size if relative.size else np.nan})
    return pd.DataFrame(rows, columns=PRECISION_SUMMARY_COLUMNS)


def tag_heads_across_layers(heads: pd.DataFrame) -> pd.DataFrame:
    """Model-level tag: quartiles of mean effective rank over every (layer, head) of the model."""
    if heads.empty:
        return heads
    tags = pd.Series(quartile_tags(heads["mean_effective_rank"]), index=heads.index)
    tags = tags.where(heads["tag"] != NONFINITE_TAG, NONFINITE_TAG)
    return heads.assign(layer_tag=heads["tag"], tag=tags)


def relative_depth(metrics: pd.DataFrame, layers_of: dict) -> pd.Series:
    """layer / layers, so models of different depth line up (NaN outside blocks)."""
    return metrics["layer_index"].astype(float) / metrics["model"].map(layers_of).astype(float)


def depth_comparison(metrics: pd.DataFrame, bins: int = 10, columns=PLOT_METRICS) -> pd.DataFrame:
    """Mean of each metric per model, weight type and relative-depth bin."""
    inside = spectral_rows(metrics).dropna(subset=["relative_depth"]).copy()
    inside["depth_bin"] = np.minimum((inside["relative_depth"] * bins).astype(int), bins - 1) / bins
    present = [c for c in columns if c in inside]
    return inside.groupby(["block_type", "depth_bin", "model"])[present].mean().reset_index()
