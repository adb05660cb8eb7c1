"""A model against another, as tables: per-unit delta and distance files stacked in unit order, the
pooled relative change per layer against a hand computation (bit-identical matrices, ALL_TYPES rows,
the embedding and head as their own group), the pooled distance with the reference norms recovered,
and a series' medians against pandas."""

import math

import numpy as np
import pandas as pd
import pytest

from blockscope.aggregation.delta_tables import (
    deltas_by_layer,
    distances_by_layer,
    pooled_relative_change,
    stack_deltas,
    stack_distances,
)
from blockscope.aggregation.series_tables import SERIES_METRICS, series_table
from blockscope.io.tables import table_from_rows, write_table
from blockscope.layout import ALL_TYPES, STATISTICS_ONLY, layer_unit
from blockscope.pair_layout import (
    COMPARE_BY_LAYER_COLUMNS,
    DELTA_BELOW_ROUNDING,
    DELTA_CHANGED,
    DELTA_COLUMNS,
    DELTA_NO_TAIL,
    DELTA_UNCHANGED,
    DELTAS_BY_LAYER_COLUMNS,
    DISTANCE_COLUMNS,
    MISSING_IN_OTHER,
    SERIES_COLUMNS,
    SHAPES_DIFFER,
    column_type,
)


def typed(rows: list, columns: list) -> pd.DataFrame:
    """Row dicts -> a frame of exactly `columns`, typed as the per-unit tables are (pair_layout.column_type)."""
    frame = pd.DataFrame(rows).reindex(columns=columns)
    return frame.astype({c: column_type(c) for c in columns})


def delta_row(layer, block_type, delta, base, status=DELTA_CHANGED, energy90=3, **extra) -> dict:
    """One matrix of model m against base b: ||dW||_F, ||W_base||_F, its status."""
    unit = layer_unit(layer) if layer is not None else ("embed" if block_type == "embedding" else "lm_head")
    name = f"layers.{layer}.{block_type}.weight" if layer is not None else f"{block_type}.weight"
    return {"model": "m", "base": "b", "unit": unit, "param_name": name, "matrix": name,
            "layer_index": layer, "block_type": block_type, "rows": 64, "cols": 32, "delta_frobenius": delta,
            "base_frobenius": base, "relative_change": delta / base if delta is not None else None,
            "delta_energy_rank_90": energy90, "delta_numerical_rank": 4, "delta_effective_rank": 2.5,
            "weight_cosine": 0.99, "status": status, **extra}


# A planted fine-tune: layer 2 moved most, a bit-identical q_proj in layer 0 (its delta not measured),
# a below-rounding v_proj, the embedding and the head outside the blocks.
PLANTED = [
    delta_row(0, "q_proj", None, 4.0, DELTA_UNCHANGED, energy90=None),
    delta_row(0, "v_proj", 0.01, 2.0),
    delta_row(0, "down_proj", 0.02, 8.0),
    delta_row(1, "q_proj", 0.04, 4.0),
    delta_row(1, "v_proj", 1e-6, 2.0, DELTA_BELOW_ROUNDING, energy90=None),
    delta_row(1, "down_proj", 0.03, 8.0, energy90=2),
    delta_row(2, "q_proj", 0.40, 4.0, energy90=5),
    delta_row(2, "v_proj", 0.30, 2.0),
    delta_row(2, "down_proj", 0.50, 8.0),
    delta_row(3, "q_proj", 0.05, 4.0, DELTA_NO_TAIL),
    delta_row(3, "v_proj", 0.02, 2.0),
    delta_row(3, "down_proj", 0.06, 8.0),
    delta_row(None, "embedding", 0.10, 16.0),
    delta_row(None, "output", 0.0, 16.0, DELTA_UNCHANGED, energy90=None),
]


def planted() -> pd.DataFrame:
    return typed(PLANTED, DELTA_COLUMNS)


def by_hand(pairs) -> float:
    """sqrt(sum dF^2 / sum bF^2), written out."""
    return math.sqrt(sum(d * d for d, _ in pairs) / sum(b * b for _, b in pairs))


def test_stack_deltas_reads_units_in_unit_order_with_the_declared_columns(tmp_path):
    frame = planted()
    paths = []
    for unit in ["layer_003", "lm_head", "layer_000", "embed", "layer_002", "layer_001"]:  # not in unit order
        path = tmp_path / f"{unit}.parquet"
        rows = frame[frame["unit"] == unit].to_dict("records")
        write_table(table_from_rows(DELTA_COLUMNS, rows, {c: column_type(c) for c in DELTA_COLUMNS}), path)
        paths.append(path)
    stacked = stack_deltas(paths, model="m")
    assert list(stacked.columns) == DELTA_COLUMNS
    assert list(dict.fromkeys(stacked["unit"])) == ["embed", "layer_000", "layer_001", "layer_002", "layer_003",
                                                    "lm_head"]
    assert len(stacked) == len(frame)
    assert str(stacked["layer_index"].dtype) == "Int64" and str(stacked["delta_energy_rank_90"].dtype) == "Int64"
    layer0 = stacked[stacked["unit"] == "layer_000"]["block_type"].tolist()
    assert layer0 == ["q_proj", "v_proj", "down_proj"]  # a unit's rows as written
    assert list(stack_deltas([]).columns) == DELTA_COLUMNS and stack_deltas([]).empty


def test_pooled_relative_change_per_layer_matches_a_hand_computation():
    table = deltas_by_layer(planted())
    assert list(table.columns) == DELTAS_BY_LAYER_COLUMNS
    row = table.set_index(["layer_index", "block_type"])
    # layer 2 over all types: (0.4, 4), (0.3, 2), (0.5, 8)
    assert row.loc[(2, ALL_TYPES), "relative_change"] == pytest.approx(by_hand([(0.4, 4), (0.3, 2), (0.5, 8)]),
                                                                       rel=1e-12)
    # layer 0: the bit-identical q_proj adds 0 above and its norm 4 below, though its delta is missing
    assert row.loc[(0, ALL_TYPES), "relative_change"] == pytest.approx(by_hand([(0, 4), (0.01, 2), (0.02, 8)]),
                                                                       rel=1e-12)
    assert row.loc[(0, "q_proj"), "relative_change"] == 0
    assert row.loc[(1, "v_proj"), "relative_change"] == pytest.approx(1e-6 / 2)
    assert row.loc[(2, "down_proj"), "relative_change"] == pytest.approx(0.5 / 8)
    # counts: compared matrices, and changed ones (changed or changed without a tail)
    assert row.loc[(0, ALL_TYPES), ["matrices", "changed"]].tolist() == [3, 2]
    assert row.loc[(1, ALL_TYPES), ["matrices", "changed"]].tolist() == [3, 2]
    assert row.loc[(3, ALL_TYPES), ["matrices", "changed"]].tolist() == [3, 3]
    # medians over the changed matrices only: layer 1 has ranks 3 (q_proj) and 2 (down_proj); v_proj is below rounding
    assert row.loc[(1, ALL_TYPES), "delta_energy_rank_90"] == 2.5
    assert row.loc[(1, ALL_TYPES), "delta_frobenius"] == pytest.approx(np.median([0.04, 0.03]))
    assert row.loc[(2, ALL_TYPES), "delta_energy_rank_90"] == 3


def test_by_layer_has_all_types_per_layer_and_keeps_the_rows_outside_the_blocks_together():
    table = deltas_by_layer(planted())
    layers = table["layer_index"]
    assert layers.iloc[-1] is pd.NA and layers.isna().sum() == 3  # embedding, output, all
    outside = table[layers.isna()].set_index("block_type")
    assert outside.index.tolist() == ["embedding", "output", ALL_TYPES]
    assert outside.loc[ALL_TYPES, "relative_change"] == pytest.approx(by_hand([(0.1, 16), (0.0, 16)]))
    assert outside.loc[ALL_TYPES, ["matrices", "changed"]].tolist() == [2, 1]
    for layer in range(4):
        kinds = table[layers.eq(layer).fillna(False)]["block_type"].tolist()
        assert kinds == ["q_proj", "v_proj", "down_proj", ALL_TYPES]  # layout.BLOCK_TYPES order, then all
    assert (table["model"] == "m").all() and (table["base"] == "b").all()


def test_pooled_relative_change_needs_both_norms():
    assert pooled_relative_change([1.0, np.nan], [2.0, 5.0]) == pytest.approx(0.5)
    assert np.isnan(pooled_relative_change([np.nan], [2.0]))
    assert np.isnan(pooled_relative_change([0.0], [0.0]))


def distance_row(layer, block_type, distance, other_norm, status="changed", **extra) -> dict:
    name = f"layers.{layer}.{block_type}.weight"
    relative = distance / other_norm if distance is not None else None
    return {"model": "a", "other": "b", "unit": layer_unit(layer), "param_name": name, "matrix": name,
            "layer_index": layer, "block_type": block_type, "rows": 64, "cols": 32, "frobenius_distance": distance,
            "relative_distance": relative, "weight_cosine": 0.9, "subspace_overlap_left": 0.8,
            "subspace_overlap_right": 0.7, "subspace_k": 4, "status": status, **extra}


def test_pooled_relative_distance_recovers_the_reference_norms(tmp_path):
    rows = [distance_row(0, "q_proj", 1.0, 4.0), distance_row(0, "v_proj", 0.5, 2.0),
            distance_row(0, "down_proj", 0.0, 8.0),  # identical: its norm only from other_norms
            distance_row(1, "q_proj", None, None, SHAPES_DIFFER), distance_row(1, "v_proj", None, None,
                                                                               MISSING_IN_OTHER),
            distance_row(1, "down_proj", 2.0, 8.0)]
    frame = typed(rows, DISTANCE_COLUMNS)
    path = tmp_path / "layer_000.parquet"
    types = {c: column_type(c) for c in DISTANCE_COLUMNS}
    write_table(table_from_rows(DISTANCE_COLUMNS, frame.to_dict("records"), types), path)
    assert list(stack_distances([path]).columns) == DISTANCE_COLUMNS
    without = distances_by_layer(frame).set_index(["layer_index", "block_type"])
    assert list(distances_by_layer(frame).columns) == COMPARE_BY_LAYER_COLUMNS
    # without the identical matrix's norm it is left out of both sums
    assert without.loc[(0, ALL_TYPES), "relative_distance"] == pytest.approx(by_hand([(1.0, 4.0), (0.5, 2.0)]))
    norms = {"layers.0.down_proj.weight": 8.0}
    exact = distances_by_layer(frame, other_norms=norms).set_index(["layer_index", "block_type"])
    assert exact.loc[(0, ALL_TYPES), "relative_distance"] == pytest.approx(
        by_hand([(1.0, 4.0), (0.5, 2.0), (0.0, 8.0)]), rel=1e-12)
    assert exact.loc[(0, ALL_TYPES), "matrices"] == 3
    # layer 1: the shape that differs and the missing matrix are not compared
    assert exact.loc[(1, ALL_TYPES), "matrices"] == 1
    assert exact.loc[(1, ALL_TYPES), "relative_distance"] == pytest.approx(2.0 / 8.0)
    assert exact.loc[(0, ALL_TYPES), "subspace_overlap_left"] == pytest.approx(0.8)


# --- series ---------------------------------------------------------------------------------------

def metrics_table(model: str, seed: int) -> pd.DataFrame:
    """Two layers of q_proj and down_proj (one failed fit), a 1-D norm row; values drawn per model."""
    rng = np.random.default_rng(seed)
    rows = []
    for layer in range(2):
        for kind in ("q_proj", "down_proj"):
            name = f"layers.{layer}.{kind}.weight"
            rows.append({"model": model, "matrix": name, "param_name": name, "layer_index": layer,
                         "block_type": kind, "rows": 64, "cols": 32, "status": "ok",
                         **{m: float(rng.uniform(1, 10)) for m in SERIES_METRICS}})
        rows.append({"model": model, "matrix": f"layers.{layer}.norm.weight", "block_type": "norm",
                     "layer_index": layer, "rows": 64, "cols": None, "status": STATISTICS_ONLY,
                     **{m: np.nan for m in SERIES_METRICS}})
    rows[0].update(alpha=np.nan, alpha_hill=np.nan, status="power-law fit failed")
    return pd.DataFrame(rows)


def test_series_medians_and_change_from_previous_match_pandas():
    members = ["s0", "s1", "s2"]
    metrics = {m: metrics_table(m, i) for i, m in enumerate(members)}
    # s1 from s0: two matrices differ, one identical (distance 0: its norm comes from s0's metrics)
    names = metrics["s0"][metrics["s0"]["cols"].notna()]["matrix"].tolist()
    norms = metrics["s0"].set_index("matrix")["frobenius_norm"]
    pair = typed([{"model": "s1", "other": "s0", "matrix": names[0], "block_type": "q_proj",
                   "frobenius_distance": 0.5, "relative_distance": 0.5 / norms[names[0]], "status": "changed"},
                  {"model": "s1", "other": "s0", "matrix": names[1], "block_type": "down_proj",
                   "frobenius_distance": 0.25, "relative_distance": 0.25 / norms[names[1]], "status": "changed"},
                  {"model": "s1", "other": "s0", "matrix": names[2], "block_type": "q_proj",
                   "frobenius_distance": 0.0, "relative_distance": 0.0, "status": "unchanged"},
                  {"model": "s1", "other": "s0", "matrix": names[3], "block_type": "down_proj",
                   "status": SHAPES_DIFFER}], DISTANCE_COLUMNS)
    table = series_table("run", members, metrics, {("s1", "s0"): pair})  # s2 from s1: no distance table
    assert list(table.columns) == SERIES_COLUMNS
    assert table["block_type"].tolist() == ["q_proj", "down_proj", ALL_TYPES] * 3
    for model in members:
        matrices = metrics[model][metrics[model]["status"] != STATISTICS_ONLY]
        expected = matrices.groupby("block_type")[SERIES_METRICS].median()  # pandas skips the failed fit's NaN
        got = table[table["model"] == model].set_index("block_type")
        for kind in ("q_proj", "down_proj"):
            assert got.loc[kind, SERIES_METRICS].astype(float).tolist() == pytest.approx(
                expected.loc[kind].tolist())
        assert got.loc[ALL_TYPES, SERIES_METRICS].astype(float).tolist() == pytest.approx(
            matrices[SERIES_METRICS].median().tolist())
        assert got.loc[ALL_TYPES, "matrices"] == 4
    first = table[table["model"] == "s0"]
    assert first["previous"].isna().all() and first["shared_matrices"].isna().all()
    assert first["relative_change_from_previous"].isna().all()
    second = table[table["model"] == "s1"].set_index("block_type")
    assert second.loc[ALL_TYPES, "previous"] == "s0" and second.loc[ALL_TYPES, "shared_matrices"] == 3
    expected = math.sqrt((0.5 ** 2 + 0.25 ** 2) / (norms[names[0]] ** 2 + norms[names[1]] ** 2
                                                    + norms[names[2]] ** 2))
    assert second.loc[ALL_TYPES, "relative_change_from_previous"] == pytest.approx(expected, rel=1e-12)
    assert second.loc["q_proj", "relative_change_from_previous"] == pytest.approx(
        0.5 / math.hypot(norms[names[0]], norms[names[2]]), rel=1e-12)
    third = table[table["model"] == "s2"].set_index("block_type")
    assert third.loc[ALL_TYPES, "shared_matrices"] == 0 and np.isnan(third.loc[ALL_TYPES,
                                                                             "relative_change_from_previous"])
    assert table["position"].tolist() == [0] * 3 + [1] * 3 + [2] * 3


def test_a_member_without_metrics_gets_an_all_types_row():
    table = series_table("run", ["a", "b"], {"a": metrics_table("a", 0)}, {})
    rows = table[table["model"] == "b"]
    assert rows["block_type"].tolist() == [ALL_TYPES] and rows["matrices"].tolist() == [0]
    assert rows[SERIES_METRICS].isna().all(axis=None)
