"""A model against another, per layer: the per-unit delta tables (a model against its base) and
distance tables (a compare pair) stacked into one table each, and their per-layer views
(pair_layout.DELTAS_BY_LAYER_COLUMNS, COMPARE_BY_LAYER_COLUMNS). Nothing here recomputes a delta.

Per layer the change is pooled, not averaged: sqrt(Σ ||ΔW||_F² / Σ ||W_base||_F²) over the group's
matrices is the relative change of the layer's weights taken as one vector, so a large matrix that
moved little is not outvoted by a small one that moved a lot. The rest of a row are medians over
the group's changed matrices (an unchanged matrix has no update to describe).

Rows outside the transformer blocks (embed, lm_head) have layer_index NA; they form one group of
their own, after the layers. Every layer also gets an ALL_TYPES row over its matrices.
"""

import numpy as np
import pandas as pd

from blockscope.aggregation.model_tables import stack
from blockscope.io.tables import check_tables, read_frame
from blockscope.layout import ALL_TYPES, BLOCK_TYPES, unit_order
from blockscope.pair_layout import (
    COMPARE_BY_LAYER_COLUMNS,
    DELTA_CHANGED,
    DELTA_COLUMNS,
    DELTA_NO_TAIL,
    DELTA_UNCHANGED,
    DELTAS_BY_LAYER_COLUMNS,
    DISTANCE_COLUMNS,
    MISSING_IN_OTHER,
    SHAPES_DIFFER,
)

CHANGED_STATUSES = (DELTA_CHANGED, DELTA_NO_TAIL)  # dW above the storage rounding, with or without a tail fit
NOT_COMPARED = (SHAPES_DIFFER, MISSING_IN_OTHER)  # a compare pair's matrices without a counterpart
DELTA_MEDIANS = ["delta_frobenius", "delta_effective_rank", "delta_numerical_rank", "delta_energy_rank_90",
                 "weight_cosine"]
DISTANCE_MEDIANS = ["frobenius_distance", "weight_cosine", "subspace_overlap_left", "subspace_overlap_right"]


# --- stacking ------------------------------------------------------------------------------------

def in_unit_order(table: pd.DataFrame) -> pd.DataFrame:
    """Rows by unit (embed, the layers in order, lm_head, other), each unit's rows as they were."""
    if table.empty or "unit" not in table:
        return table.reset_index(drop=True)
    units = sorted(table["unit"].dropna().astype(str).unique(), key=unit_order)
    rank = table["unit"].map({unit: i for i, unit in enumerate(units)})
    return table.iloc[np.argsort(rank.to_numpy(dtype=float, na_value=np.inf), kind="stable")].reset_index(drop=True)


def stack_tables(paths, columns, model=None) -> pd.DataFrame:
    """Per-unit Parquet files -> one table of `columns`, in unit order (damaged files named first)."""
    paths = list(paths)
    check_tables(paths, model)
    table = stack((read_frame(path, model=model) for path in paths), columns)
    return in_unit_order(table).reindex(columns=list(columns))


def stack_deltas(paths, model=None) -> pd.DataFrame:
    """A model's per-unit delta files (pair_layout.DELTAS_UNIT) -> its deltas table (DELTA_COLUMNS)."""
    return stack_tables(paths, DELTA_COLUMNS, model)


def stack_distances(paths, model=None) -> pd.DataFrame:
    """A compare pair's per-unit distance files (pair_layout.COMPARE_UNIT) -> one table (DISTANCE_COLUMNS)."""
    return stack_tables(paths, DISTANCE_COLUMNS, model)


# --- pooling -------------------------------------------------------------------------------------

def numbers(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A column as float64, missing values NaN (a nullable integer's NA too)."""
    if column not in frame:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def pooled_relative_change(delta_frobenius, base_frobenius) -> float:
    """sqrt(Σ ||ΔW||_F² / Σ ||W_base||_F²) over the matrices where both norms are known; NaN
    without one, or when the base norms sum to 0."""
    delta, base = np.asarray(delta_frobenius, dtype=float), np.asarray(base_frobenius, dtype=float)
    known = np.isfinite(delta) & np.isfinite(base)
    denominator = np.sum(base[known] ** 2)
    return float(np.sqrt(np.sum(delta[known] ** 2) / denominator)) if denominator > 0 else np.nan


def other_frobenius(frobenius_distance, relative_distance, fallback=None) -> np.ndarray:
    """The reference's ||B||_F per row: frobenius_distance / relative_distance (relative_distance is
    ||A - B||_F / ||B||_F), exact wherever the two differ; where they do not (relative_distance 0)
    the ratio says nothing, and `fallback` (the norms from another table, NaN where unknown) is used."""
    distance, relative = np.asarray(frobenius_distance, dtype=float), np.asarray(relative_distance, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.where(relative > 0, distance / relative, np.nan)
    if fallback is not None:
        norm = np.where(np.isfinite(norm), norm, np.asarray(fallback, dtype=float))
    return norm


def pooled_relative_distance(rows: pd.DataFrame, other_norms=None) -> float:
    """sqrt(Σ ||A - B||_F² / Σ ||B||_F²) over the rows with a finite distance, ||B||_F from
    other_frobenius. Exact: the reference's norm is recovered from each row's own ratio, and for
    an identical pair (distance 0: nothing to recover) taken from other_norms (matrix -> ||B||_F,
    e.g. the reference's metrics table's frobenius_norm). An identical pair whose norm is not in
    other_norms is left out of both sums (it adds 0 above and its unknown norm below), which
    overstates the pooled distance by that matrix's share of the reference's energy."""
    fallback = None
    if other_norms is not None and "matrix" in rows:
        fallback = rows["matrix"].map(dict(other_norms)).to_numpy(dtype=float, na_value=np.nan)
    if "other_frobenius" in rows:  # the distance tables carry ||B||_F: exact for identical pairs too
        recorded = numbers(rows, "other_frobenius")
        fallback = recorded if fallback is None else np.where(np.isfinite(recorded), recorded, fallback)
    distance = numbers(rows, "frobenius_distance")
    return pooled_relative_change(distance, other_frobenius(distance, numbers(rows, "relative_distance"), fallback))


# --- groups ---------------------------------------------------------------------------------------

def type_order(block_types) -> list:
    """Block types in layout.BLOCK_TYPES order, unknown ones after them alphabetically, ALL_TYPES left out."""
    present = {str(t) for t in block_types if not pd.isna(t)} - {ALL_TYPES}
    known = [t for t in BLOCK_TYPES if t in present]
    return known + sorted(present - set(known))


def layer_groups(frame: pd.DataFrame):
    """(layer_index, block_type, rows): every block type of a layer, then ALL_TYPES over the layer;
    layers in order, the rows without a layer (layer_index NA) last as one group."""
    layer = numbers(frame, "layer_index")
    keys = [int(v) for v in np.unique(layer[np.isfinite(layer)])] + ([pd.NA] if np.isnan(layer).any() else [])
    for key in keys:
        part = frame[np.isnan(layer)] if key is pd.NA else frame[layer == key]
        for block_type in type_order(part["block_type"]):
            yield key, block_type, part[part["block_type"] == block_type]
        yield key, ALL_TYPES, part


def compared(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of matrices that have a counterpart (not 'shapes differ' nor 'missing in other')."""
    return rows[~rows["status"].isin(NOT_COMPARED)] if "status" in rows else rows


def changed(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows whose status is changed (with or without a tail fit)."""
    return rows[rows["status"].isin(CHANGED_STATUSES)]


def median_of(rows: pd.DataFrame, column: str) -> float:
    """The median of a column's finite values, NaN without one."""
    values = numbers(rows, column)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else np.nan


def delta_frobenius(rows: pd.DataFrame) -> np.ndarray:
    """||ΔW||_F per row, 0 for a bit-identical matrix (recognised without measuring it)."""
    values = numbers(rows, "delta_frobenius")
    return np.where(rows["status"].eq(DELTA_UNCHANGED).to_numpy(dtype=bool, na_value=False), 0.0, values)


def delta_group(rows: pd.DataFrame) -> dict:
    """matrices (compared), changed, the pooled relative change over every compared matrix (bit-
    identical ones add 0 above and their norm below; a matrix without base_frobenius is left out),
    and the medians of DELTA_MEDIANS over the changed matrices."""
    rows = compared(rows)
    moved = changed(rows)
    medians = {column: median_of(moved, column) for column in DELTA_MEDIANS}
    return {"matrices": len(rows), "changed": len(moved),
            "relative_change": pooled_relative_change(delta_frobenius(rows), numbers(rows, "base_frobenius")),
            **medians}


def distance_group(rows: pd.DataFrame, other_norms=None) -> dict:
    """matrices (compared, with a finite distance), the pooled relative distance, the medians of
    DISTANCE_MEDIANS over them."""
    rows = compared(rows)
    rows = rows[np.isfinite(numbers(rows, "frobenius_distance"))]
    medians = {column: median_of(rows, column) for column in DISTANCE_MEDIANS}
    return {"matrices": len(rows), "relative_distance": pooled_relative_distance(rows, other_norms), **medians}


def first_value(frame: pd.DataFrame, column: str):
    """A table's model (or base, other): its first value, NA for an empty table."""
    return frame[column].iloc[0] if column in frame and len(frame) else pd.NA


def by_layer(frame: pd.DataFrame, columns: list, pair: tuple, summarise) -> pd.DataFrame:
    """One row per layer_groups group: the pair's names, layer, block type, summarise(rows)."""
    names = {name: first_value(frame, name) for name in pair}
    rows = [{**names, "layer_index": layer, "block_type": block_type, **summarise(part)}
            for layer, block_type, part in (layer_groups(frame) if len(frame) else ())]
    table = pd.DataFrame(rows, columns=columns)
    return table.astype({"layer_index": "Int64", "matrices": "int64",
                         **({"changed": "int64"} if "changed" in columns else {})})


def deltas_by_layer(deltas: pd.DataFrame) -> pd.DataFrame:
    """The deltas per layer and block type (and ALL_TYPES per layer): DELTAS_BY_LAYER_COLUMNS."""
    return by_layer(deltas, DELTAS_BY_LAYER_COLUMNS, ("model", "base"), delta_group)


def distances_by_layer(distances: pd.DataFrame, other_norms=None) -> pd.DataFrame:
    """The distances per layer and block type (and ALL_TYPES per layer): COMPARE_BY_LAYER_COLUMNS;
    the pooled relative distance as pooled_relative_distance (other_norms: matrix -> the other's
    ||W||_F, needed only for identical matrices)."""
    return by_layer(distances, COMPARE_BY_LAYER_COLUMNS, ("model", "other"),
                    lambda rows: distance_group(rows, other_norms))


def delta_by_type(deltas: pd.DataFrame) -> pd.DataFrame:
    """Per block type over the whole model: matrices, changed, pooled relative change; most moved first."""
    rows = [{"block_type": block_type, **delta_group(deltas[deltas["block_type"] == block_type])}
            for block_type in type_order(deltas["block_type"])] if len(deltas) else []
    table = pd.DataFrame(rows, columns=["block_type", "matrices", "changed", "relative_change", *DELTA_MEDIANS])
    return table.sort_values("relative_change", ascending=False, kind="stable", na_position="last") \
        .reset_index(drop=True)
