"""A series of models (config `series:`, ordered: revisions of one run, checkpoints of a
fine-tune, a family by size) as one table, pair_layout.SERIES_COLUMNS: per member and block type (and
ALL_TYPES over all its matrices) the medians of its metrics table, and how far it moved from the
previous member (the pooled relative distance of the matrices the two share, from the distance
tables of each consecutive pair, the later member first). Nothing here recomputes a spectrum."""

import numpy as np
import pandas as pd

from blockscope.aggregation.delta_tables import compared, numbers, pooled_relative_distance, type_order
from blockscope.aggregation.model_tables import spectral_rows
from blockscope.layout import ALL_TYPES
from blockscope.pair_layout import SERIES_COLUMNS

SERIES_METRICS = ["alpha", "alpha_hill", "effective_rank", "stable_rank", "spectral_norm", "frobenius_norm"]


def matrix_rows(metrics: pd.DataFrame | None) -> pd.DataFrame:
    """A metrics table's 2-D matrices: no 1-D statistics-only row, no row without a column count."""
    if metrics is None or len(metrics) == 0 or "block_type" not in metrics:
        return pd.DataFrame(columns=["matrix", "block_type", *SERIES_METRICS])
    rows = spectral_rows(metrics)
    return rows[rows["cols"].notna()] if "cols" in rows else rows


def metric_medians(rows: pd.DataFrame) -> dict:
    """matrices, and the median of each SERIES_METRICS column over its finite values (a failed
    fit's NaN is left out, not counted as a value)."""
    medians = {}
    for metric in SERIES_METRICS:
        values = numbers(rows, metric)
        values = values[np.isfinite(values)]
        medians[metric] = float(np.median(values)) if values.size else np.nan
    return {"matrices": len(rows), **medians}


def shared_rows(distances: pd.DataFrame | None) -> pd.DataFrame:
    """The distance rows of matrices both members hold with one shape: a finite relative_distance."""
    if distances is None or len(distances) == 0:
        return pd.DataFrame(columns=["matrix", "block_type", "frobenius_distance", "relative_distance"])
    rows = compared(distances)
    return rows[np.isfinite(numbers(rows, "relative_distance"))]


def frobenius_norms(metrics: pd.DataFrame | None) -> dict:
    """matrix -> frobenius_norm from a metrics table (the previous member's: the reference norm of
    an identical pair, whose relative distance 0 cannot give it back)."""
    rows = matrix_rows(metrics)
    if "matrix" not in rows or "frobenius_norm" not in rows:
        return {}
    return dict(zip(rows["matrix"], numbers(rows, "frobenius_norm")))


def member_rows(name: str, position: int, model: str, previous, metrics, distances, norms) -> list:
    """A member's rows: one per block type of its matrices, then ALL_TYPES."""
    matrices = matrix_rows(metrics)
    shared = shared_rows(distances)
    rows = []
    for block_type in [*type_order(matrices["block_type"]), ALL_TYPES]:
        mine = matrices if block_type == ALL_TYPES else matrices[matrices["block_type"] == block_type]
        theirs = shared if block_type == ALL_TYPES else shared[shared["block_type"] == block_type]
        change = pooled_relative_distance(theirs, norms) if previous is not None and len(theirs) else np.nan
        rows.append({"series": name, "position": position, "model": model, "block_type": block_type,
                     **metric_medians(mine), "previous": previous,
                     "shared_matrices": len(theirs) if previous is not None else pd.NA,
                     "relative_change_from_previous": change})
    return rows


def series_table(name: str, members, metrics: dict, distances: dict) -> pd.DataFrame:
    """SERIES_COLUMNS for one series. members: its model slugs in order (position 0 first);
    metrics: model -> its metrics table; distances: (model, previous) -> the distance table of a
    member from the one before it (model the later member, `other` the previous one). A member
    without a metrics table gets an ALL_TYPES row of NaN medians; a pair without a distance table,
    or without a matrix of one shape in both, gets shared_matrices 0 and a NaN change. The first
    member has no previous (NA) and no change."""
    rows = []
    for position, model in enumerate(members):
        previous = members[position - 1] if position else None
        pair = distances.get((model, previous)) if previous is not None else None
        norms = frobenius_norms(metrics.get(previous)) if previous is not None else None
        rows += member_rows(name, position, model, previous, metrics.get(model), pair, norms)
    table = pd.DataFrame(rows, columns=SERIES_COLUMNS)
    return table.astype({"position": "int64", "matrices": "int64", "shared_matrices": "Int64"})
