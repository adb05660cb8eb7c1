"""Detail tables of a model, beside its main tables: statistics of the heads heatmap,
per head index and per layer; a deep-dive head's eigenvalue summary; the down projections'
spectra; a layer x weight-type pivot; per-phase statistics. All from tables the workflow has
already written (heads, deep dives, spectra, metrics): nothing here recomputes a spectrum."""

import numpy as np
import pandas as pd

from blockscope.aggregation.model_tables import phase_of, series_stats, spectral_rows
from blockscope.analysis.matrix_formulas import condition_number, energy_rank
from blockscope.layout import (
    ALL_TYPES,
    DEEP_DIVE_SUMMARY_COLUMNS,
    DOWN_PROJECTION_COLUMNS,
    ENERGY_COLUMNS,
    ENERGY_FRACTIONS,
    HEADS_BY_HEAD_COLUMNS,
    HEADS_BY_LAYER_COLUMNS,
    HEATMAP_STATISTICS_COLUMNS,
    MAGNITUDE_PERCENTILES,
    MAIN_METRICS,
    PHASE_STATISTICS_COLUMNS,
    SPREAD,
)

HEAD_RANKS = ("qk_effective_rank", "ov_effective_rank")
PHASES = ("early", "middle", "late")


def spread(values: pd.Series, metric: str) -> dict:
    """<metric>_mean, _std (population, as numpy's default), _min, _max of the finite values."""
    stats = series_stats(values)
    return {f"{metric}_{stat}": stats.get(stat, np.nan) for stat in SPREAD}


def heatmap_statistics(heads: pd.DataFrame) -> pd.DataFrame:
    """The heads heatmap in numbers: count, min, max, mean, std of QK and OV effective rank over
    every (layer, head) (non-finite heads left out)."""
    rows = [{"metric": metric, **series_stats(heads[metric])} for metric in HEAD_RANKS if metric in heads]
    return pd.DataFrame(rows).reindex(columns=HEATMAP_STATISTICS_COLUMNS)


def rank_classes(means: pd.Series) -> pd.Series:
    """LOW / MID / HIGH: below the 25 % quantile of the means, above the 75 % one,
    else MID (NaN means get no class)."""
    low, high = means.quantile(0.25), means.quantile(0.75)
    labels = np.where(means < low, "LOW", np.where(means > high, "HIGH", "MID"))
    return pd.Series(labels, index=means.index).where(means.notna())


def heads_by_head(heads: pd.DataFrame) -> pd.DataFrame:
    """Per query-head index across layers: mean, std, min, max of QK effective rank and its class."""
    if heads.empty or "qk_effective_rank" not in heads:
        return pd.DataFrame(columns=HEADS_BY_HEAD_COLUMNS)
    rows = [{"head": int(head), "layers": int(group["qk_effective_rank"].notna().sum()),
             **spread(group["qk_effective_rank"], "qk_effective_rank")}
            for head, group in heads.groupby("head")]
    table = pd.DataFrame(rows)
    table["rank_class"] = rank_classes(table["qk_effective_rank_mean"])
    return table[HEADS_BY_HEAD_COLUMNS]


def heads_by_layer(heads: pd.DataFrame) -> pd.DataFrame:
    """Per layer over its heads: mean, std, min, max of QK and OV effective rank."""
    if heads.empty:
        return pd.DataFrame(columns=HEADS_BY_LAYER_COLUMNS)
    rows = [{"layer_index": int(layer), "heads": len(group),
             **{k: v for metric in HEAD_RANKS for k, v in spread(group[metric], metric).items()}}
            for layer, group in heads.groupby("layer_index")]
    return pd.DataFrame(rows, columns=HEADS_BY_LAYER_COLUMNS)


def energy_milestones(magnitudes) -> dict:
    """energy_rank_50 ... _99 (n50 ... n99): how many of the largest |values| hold
    50/75/90/95/99 % of sum |value|^2."""
    magnitudes = np.sort(np.abs(np.asarray(magnitudes, dtype=np.float64)))[::-1]
    return {column: energy_rank(magnitudes, f) for column, f in zip(ENERGY_COLUMNS, ENERGY_FRACTIONS)}


def deep_dive_summary(table: pd.DataFrame, layer: int, head: int) -> dict:
    """One deep-dive head's QK eigenvalues in numbers: |lambda| percentiles, the ranges of the
    real and imaginary parts, how many real parts are positive and negative, energy milestones."""
    row = {"layer": layer, "head": head, "eigenvalues": len(table)}
    if not len(table):
        return row
    magnitude, real, imag = (table[c].to_numpy(np.float64) for c in ("magnitude", "real", "imag"))
    row |= {f"magnitude_percentile_{p}": float(np.percentile(magnitude, p)) for p in MAGNITUDE_PERCENTILES}
    row |= {"real_min": real.min(), "real_max": real.max(), "imag_min": imag.min(), "imag_max": imag.max(),
            "positive_real": int((real > 0).sum()), "negative_real": int((real < 0).sum())}
    return row | energy_milestones(magnitude)


def deep_dive_summaries(tables: dict) -> pd.DataFrame:
    """tables: (layer, head) -> eigenvalue table; one summary row each."""
    rows = [deep_dive_summary(table, layer, head) for (layer, head), table in tables.items()]
    return pd.DataFrame(rows).reindex(columns=DEEP_DIVE_SUMMARY_COLUMNS)


def variance_explained(sigma) -> np.ndarray:
    """Each component's share of sum sigma^2 (the uncentred variance the energy ranks count)."""
    energy = np.asarray(sigma, dtype=np.float64) ** 2
    total = energy.sum()
    return energy / total if total else energy


def down_projection_row(matrix: str, sigma: np.ndarray) -> dict:
    """sigma_max, sigma_min, condition number and the 50-99 % milestones of one spectrum."""
    sigma = np.sort(np.asarray(sigma, dtype=np.float64))[::-1]
    return {"matrix": matrix, "components": sigma.size, "sigma_max": sigma[0] if sigma.size else np.nan,
            "sigma_min": sigma[-1] if sigma.size else np.nan, "condition_number": condition_number(sigma),
            **{column: energy_rank(sigma, f) for column, f in zip(ENERGY_COLUMNS, ENERGY_FRACTIONS)}}


def down_projections(spectra: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Every down projection (metrics block_type down_proj) with its spectrum: one row each, by layer."""
    down = spectral_rows(metrics)
    down = down[down["block_type"] == "down_proj"] if "block_type" in down else down.iloc[0:0]
    sigma = {name: group["sigma"].to_numpy() for name, group in spectra.groupby("matrix", sort=False)} \
        if len(spectra) else {}
    rows = [{**down_projection_row(row.matrix, sigma[row.matrix]), "layer_index": row.layer_index,
             "rows": row.rows, "cols": row.cols} for row in down.itertuples() if row.matrix in sigma]
    table = pd.DataFrame(rows, columns=DOWN_PROJECTION_COLUMNS)
    return table.sort_values(["layer_index", "matrix"], kind="stable").reset_index(drop=True)


def layer_pivot(metrics: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Layers x weight types: the metric's mean per cell (experts averaged), layer_index first."""
    if not len(metrics) or not {"layer_index", "block_type", metric} <= set(metrics.columns):
        return pd.DataFrame()
    inside = spectral_rows(metrics).dropna(subset=["layer_index"])
    if not len(inside):
        return pd.DataFrame()
    grid = inside.pivot_table(index="layer_index", columns="block_type", values=metric, aggfunc="mean")
    grid.columns.name = None
    return grid.reset_index().astype({"layer_index": int})


def phase_statistics(metrics: pd.DataFrame, layers: int, columns=MAIN_METRICS) -> pd.DataFrame:
    """Per weight type (and over all types, block_type `all`), metric and phase (early / middle /
    late thirds of depth): count, mean, std, min, max, median, range, cv of the matrices' values."""
    if not len(metrics) or not {"layer_index", "block_type"} <= set(metrics.columns):
        return pd.DataFrame(columns=PHASE_STATISTICS_COLUMNS)
    inside = spectral_rows(metrics).dropna(subset=["layer_index"])
    if not len(inside):
        return pd.DataFrame(columns=PHASE_STATISTICS_COLUMNS)
    inside = inside.assign(phase=phase_of(inside["layer_index"].astype(float), layers))
    groups = [*inside.groupby("block_type"), (ALL_TYPES, inside)]
    rows = [{"block_type": kind, "metric": metric, "phase": phase,
             **series_stats(part.loc[part["phase"] == phase, metric])}
            for kind, part in groups for metric in columns if metric in part and part[metric].notna().any()
            for phase in PHASES]
    return pd.DataFrame(rows).reindex(columns=PHASE_STATISTICS_COLUMNS)
