"""Per-model and cross-model tables (blockscope/aggregation/model_tables.py) on small hand-made tables.

Every expected value below is worked out by hand in the comments, not by calling the code again.
"""

import inspect
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from blockscope import layout
from blockscope.aggregation import model_tables as agg
from blockscope.analysis.anatomy import unit_tables
from blockscope.compression import hints as qh
from blockscope.io.tables import write_table
from blockscope.io.tensors import write_unit

NAN = float("nan")
ROOT = Path(__file__).resolve().parent.parent

# Declared in docs/outputs.md (layout.py has no constant for these yet).
STATISTICS_COLUMNS = ["block_type", "metric", "count", "min", "max", "mean", "median", "std", "range", "first",
                      "last", "variance", "cv"]
PHASE_COLUMNS = ["block_type", "metric", "early", "middle", "late", "trend", "largest_drop", "largest_drop_at_layer",
                 "largest_jump", "largest_jump_at_layer"]


# --- the module speaks layout's contracts -------------------------------------------------------

def _default(function, name):
    return inspect.signature(function).parameters[name].default


def test_default_metric_lists_are_layouts():
    assert list(_default(agg.statistics_by_type, "columns")) == layout.MAIN_METRICS
    assert list(_default(agg.phase_analysis, "columns")) == layout.MAIN_METRICS
    assert list(_default(agg.depth_comparison, "columns")) == layout.PLOT_METRICS


# --- trend ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("means, expected", [
    ([3.0, 1.0, 2.0], "U-shape"),           # middle below both ends
    ([1.0, 3.0, 2.0], "inverted-U"),        # middle above both ends
    ([3.0, 2.0, 1.0], "monotone down"),
    ([1.0, 2.0, 3.0], "monotone up"),
    ([-1.0, -5.0, -2.0], "U-shape"),        # signs play no part
])
def test_trend_shapes(means, expected):
    assert agg.trend(means) == expected


@pytest.mark.parametrize("means", [
    [NAN, 1.0, 2.0], [1.0, NAN, 2.0], [1.0, 2.0, NAN], [NAN, NAN, NAN], [None, 1.0, 2.0], [1.0, np.nan, 0.5],
])
def test_trend_with_a_missing_phase_is_other(means):
    """A phase with no layer (NaN mean) says nothing about shape, whatever the other two do."""
    assert agg.trend(means) == "other"


@pytest.mark.parametrize("means, expected", [
    ([2.0, 1.0, 1.0], "monotone down"),     # middle == late: not strictly below both, so not U
    ([2.0, 2.0, 1.0], "monotone down"),     # early == middle: not strictly above both, so not inverted-U
    ([1.0, 1.0, 2.0], "monotone up"),
    ([1.0, 2.0, 2.0], "monotone up"),
    ([1.0, 1.0, 1.0], "monotone down"),     # flat: "down" is tested first, ties are non-strict
])
def test_trend_ties(means, expected):
    assert agg.trend(means) == expected


# --- phase_of -------------------------------------------------------------------------------------

@pytest.mark.parametrize("layers, expected", [
    # floor(3 * layer / layers): 12 layers -> 0..3 early, 4..7 middle, 8..11 late
    (12, ["early"] * 4 + ["middle"] * 4 + ["late"] * 4),
    # 10 layers: 3*3/10 = 0.9, 3*4/10 = 1.2, 3*6/10 = 1.8, 3*7/10 = 2.1
    (10, ["early"] * 4 + ["middle"] * 3 + ["late"] * 3),
    (3, ["early", "middle", "late"]),
    (2, ["early", "middle"]),               # 3*1/2 = 1.5: two layers have no late third
    (1, ["early"]),                         # a single layer is early
])
def test_phase_of_thirds(layers, expected):
    got = agg.phase_of(pd.Series(np.arange(layers), dtype=float), layers)
    assert got.tolist() == expected


def test_phase_of_edges():
    # first layer early, last layer late, whatever the depth
    for layers in (3, 4, 5, 7, 24, 36, 80):
        got = agg.phase_of(pd.Series([0.0, layers - 1.0]), layers)
        assert got.tolist() == ["early", "late"], layers
    # layers = 0 is treated as 1 (no division by zero); an index past the end is clipped to late
    assert agg.phase_of(pd.Series([0.0]), 0).tolist() == ["early"]
    assert agg.phase_of(pd.Series([5.0]), 4).tolist() == ["late"]
    # the index is kept so the result can be assigned back
    assert agg.phase_of(pd.Series([0.0, 2.0], index=[7, 9]), 3).index.tolist() == [7, 9]


# --- phase_row / phase_analysis ------------------------------------------------------------------

def _phased(layer_values: dict, layers: int) -> pd.DataFrame:
    rows = [{"layer_index": layer, "m": v} for layer, values in layer_values.items() for v in values]
    frame = pd.DataFrame(rows)
    return frame.assign(phase=agg.phase_of(frame["layer_index"].astype(float), layers))


def test_phase_row_means_drop_and_jump():
    # 6 layers: 0,1 early; 2,3 middle; 4,5 late
    # per-layer means 4, 3.5, 2, 2.5, 3.5, 5 -> steps -0.5 (1), -1.5 (2), +0.5 (3), +1 (4), +1.5 (5)
    part = _phased({0: [4.0], 1: [3.5], 2: [2.0], 3: [2.5], 4: [3.5], 5: [5.0]}, 6)
    row = agg.phase_row(part.sample(frac=1, random_state=0), "m")   # row order plays no part
    assert row["early"] == pytest.approx(3.75)
    assert row["middle"] == pytest.approx(2.25)
    assert row["late"] == pytest.approx(4.25)
    assert row["trend"] == "U-shape"
    assert row["largest_drop"] == pytest.approx(-1.5)
    assert row["largest_drop_at_layer"] == 2           # the layer where the step ends
    assert row["largest_jump"] == pytest.approx(1.5)
    assert row["largest_jump_at_layer"] == 5


def test_phase_row_steps_follow_the_per_layer_mean():
    # two matrices per layer: per-layer means 2, 6, 1 -> steps +4 (1), -5 (2)
    part = _phased({0: [1.0, 3.0], 1: [5.0, 7.0], 2: [0.0, 2.0]}, 3)
    row = agg.phase_row(part, "m")
    assert (row["early"], row["middle"], row["late"]) == (2.0, 6.0, 1.0)
    assert row["trend"] == "inverted-U"
    assert (row["largest_drop"], row["largest_drop_at_layer"]) == (-5.0, 2)
    assert (row["largest_jump"], row["largest_jump_at_layer"]) == (4.0, 1)


def test_phase_row_ignores_nan_values():
    # layer 1 has only NaN: per-layer means 1, NaN, 4, 3 -> steps NaN, NaN, -1; the way from
    # layer 0 to layer 2 is not a layer-over-layer step
    part = _phased({0: [1.0], 1: [NAN], 2: [4.0], 3: [3.0]}, 4)
    row = agg.phase_row(part, "m")
    # 4 layers: 0 early (0), 1 early (0.75), 2 middle (1.5), 3 late (2.25)
    assert row["early"] == 1.0 and row["middle"] == 4.0 and row["late"] == 3.0
    assert row["trend"] == "inverted-U"
    # the only step with both ends known is 4 -> 3 at layer 3
    assert (row["largest_drop"], row["largest_drop_at_layer"]) == (-1.0, 3)
    assert (row["largest_jump"], row["largest_jump_at_layer"]) == (-1.0, 3)


def test_phase_row_single_layer_part():
    part = _phased({0: [2.0, 4.0]}, 12)
    row = agg.phase_row(part, "m")
    assert row["early"] == 3.0
    assert math.isnan(row["middle"]) and math.isnan(row["late"])
    assert row["trend"] == "other"
    for key in ("largest_drop", "largest_drop_at_layer", "largest_jump", "largest_jump_at_layer"):
        assert math.isnan(row[key]), key


def test_phase_analysis():
    metrics = pd.DataFrame([
        # 6 layers of q_proj: alpha per layer 4, 3.5, 2, 2.5, 3.5, 5 (as in test_phase_row_means_drop_and_jump)
        *[{"block_type": "q_proj", "layer_index": i, "alpha": a, "alpha_hill": NAN}
          for i, a in enumerate([4.0, 3.5, 2.0, 2.5, 3.5, 5.0])],
        # down_proj falls layer after layer: 6, 5, 4, 3, 2, 1; alpha_hill 1, 2, 3, 4, 5, 9
        *[{"block_type": "down_proj", "layer_index": i, "alpha": 6.0 - i, "alpha_hill": [1, 2, 3, 4, 5, 9][i]}
          for i in range(6)],
        # no layer: left out of every phase, and its block type has no row
        {"block_type": "embedding", "layer_index": NAN, "alpha": 100.0, "alpha_hill": 100.0},
    ])
    got = agg.phase_analysis(metrics.sample(frac=1, random_state=1), 6, columns=["alpha", "alpha_hill", "absent"])
    assert got.columns.tolist() == PHASE_COLUMNS
    # one row per block type and metric with a value; q_proj's alpha_hill is all NaN, "absent" is absent
    assert sorted(zip(got["block_type"], got["metric"])) == [
        ("down_proj", "alpha"), ("down_proj", "alpha_hill"), ("q_proj", "alpha")]
    by = got.set_index(["block_type", "metric"])
    q = by.loc[("q_proj", "alpha")]
    assert (q["early"], q["middle"], q["late"], q["trend"]) == (3.75, 2.25, 4.25, "U-shape")
    assert (q["largest_drop"], q["largest_drop_at_layer"], q["largest_jump"], q["largest_jump_at_layer"]) == \
        (-1.5, 2, 1.5, 5)
    d = by.loc[("down_proj", "alpha")]
    assert (d["early"], d["middle"], d["late"], d["trend"]) == (5.5, 3.5, 1.5, "monotone down")
    assert (d["largest_drop"], d["largest_drop_at_layer"]) == (-1.0, 1)   # every step is -1: the first
    h = by.loc[("down_proj", "alpha_hill")]
    assert (h["early"], h["middle"], h["late"], h["trend"]) == (1.5, 3.5, 7.0, "monotone up")
    assert (h["largest_jump"], h["largest_jump_at_layer"]) == (4.0, 5)


def test_phase_analysis_default_columns_are_the_main_metrics():
    metrics = pd.DataFrame({"block_type": "q_proj", "layer_index": [0, 1, 2],
                            **{m: [1.0, 2.0, 3.0] for m in layout.MAIN_METRICS}, "not_a_main_metric": 1.0})
    got = agg.phase_analysis(metrics, 3)
    assert got["metric"].tolist() == layout.MAIN_METRICS
    assert set(got["trend"]) == {"monotone up"}


# --- series_stats / statistics_by_type ----------------------------------------------------------

def test_series_stats_by_hand():
    got = agg.series_stats(pd.Series([3.0, NAN, 1.0, 8.0]))
    # non-NaN: 3, 1, 8. mean 4, median 3, deviations -1 -3 4 -> population variance 26 / 3
    assert got["count"] == 3 and isinstance(got["count"], int)
    assert (got["min"], got["max"], got["mean"], got["median"], got["range"]) == (1.0, 8.0, 4.0, 3.0, 7.0)
    assert got["variance"] == pytest.approx(26 / 3)
    assert got["std"] == pytest.approx(math.sqrt(26 / 3))
    assert got["cv"] == pytest.approx(math.sqrt(26 / 3) / 4)
    assert (got["first"], got["last"]) == (3.0, 8.0)     # the order given, NaN skipped


def test_series_stats_cv_uses_absolute_mean():
    got = agg.series_stats(pd.Series([-2.0, -4.0]))
    assert got["mean"] == -3.0 and got["std"] == 1.0
    assert got["cv"] == pytest.approx(1 / 3)


def test_series_stats_cv_with_mean_zero_is_nan():
    got = agg.series_stats(pd.Series([-1.0, 1.0]))
    assert got["mean"] == 0.0 and got["std"] == 1.0
    assert math.isnan(got["cv"])


@pytest.mark.parametrize("values", [pd.Series([], dtype=float), pd.Series([NAN, NAN])])
def test_series_stats_empty(values):
    assert agg.series_stats(values) == {"count": 0}


def test_statistics_by_type_first_and_last_follow_layer_order():
    metrics = pd.DataFrame([
        {"block_type": "q_proj", "layer_index": 2, "param_name": "l2.q", "alpha": 30.0, "alpha_hill": 3.0},
        {"block_type": "q_proj", "layer_index": 0, "param_name": "l0.q", "alpha": 10.0, "alpha_hill": NAN},
        {"block_type": "q_proj", "layer_index": 1, "param_name": "l1.q", "alpha": 20.0, "alpha_hill": 2.0},
        {"block_type": "q_proj", "layer_index": 10, "param_name": "l10.q", "alpha": 40.0, "alpha_hill": NAN},
        # no layer (an embedding-like matrix) comes before every layer
        {"block_type": "other", "layer_index": 1, "param_name": "l1.x", "alpha": 7.0, "alpha_hill": NAN},
        {"block_type": "other", "layer_index": NAN, "param_name": "x", "alpha": 5.0, "alpha_hill": NAN},
    ])
    got = agg.statistics_by_type(metrics, columns=["alpha", "alpha_hill", "absent"])
    assert got.columns.tolist() == STATISTICS_COLUMNS
    by = got.set_index(["block_type", "metric"])
    assert sorted(by.index) == [("other", "alpha"), ("other", "alpha_hill"), ("q_proj", "alpha"),
                                ("q_proj", "alpha_hill")]
    q = by.loc[("q_proj", "alpha")]
    # layer 10 after layer 2 (numeric, not string, order)
    assert (q["first"], q["last"], q["count"], q["mean"], q["range"]) == (10.0, 40.0, 4, 25.0, 30.0)
    assert q["std"] == pytest.approx(math.sqrt(125.0))   # deviations -15, -5, 5, 15: (225+25+25+225)/4
    qh = by.loc[("q_proj", "alpha_hill")]
    assert (qh["first"], qh["last"], qh["count"]) == (2.0, 3.0, 2)   # NaN skipped, layer 1 before layer 2
    o = by.loc[("other", "alpha")]
    assert (o["first"], o["last"]) == (5.0, 7.0)
    assert by.loc[("other", "alpha_hill"), "count"] == 0 and math.isnan(by.loc[("other", "alpha_hill"), "mean"])


def test_statistics_by_type_default_columns_are_the_main_metrics():
    metrics = pd.DataFrame({"block_type": "v_proj", "layer_index": [0, 1], "param_name": ["a", "b"],
                            **{m: [1.0, 3.0] for m in layout.MAIN_METRICS}, "seconds": [1.0, 2.0]})
    got = agg.statistics_by_type(metrics)
    assert got["metric"].tolist() == layout.MAIN_METRICS
    assert (got["mean"] == 2.0).all()


# --- quantization ---------------------------------------------------------------------------------

THRESHOLDS = [3.0, 5.0]
FORMATS = ["bf16", "fp8/int8", "int4"]      # most to fewest bits
LOWER, HIGHER = "lower_alpha_more_bits", "higher_alpha_more_bits"
ALPHA_PRUNING = {"preset": "alpha_pruning", "metric": "alpha", "direction": LOWER, "alpha_thresholds": [3.0, 5.0],
                 "formats": ["bf16", "fp8/int8", "int4"], "group_size": 32}
ORIGINAL = {"preset": "original_script", "metric": "alpha_hill", "direction": HIGHER, "alpha_thresholds": [2.5, 3.0],
            "formats": ["fp16/bf16", "fp8/int8", "int4"], "group_size": 32}
BELOW = np.nextafter  # BELOW(t, -inf): the largest float below t


@pytest.mark.parametrize("alpha, lower, higher", [
    # bands are [-inf, 3), [3, 5), [5, inf): a value equal to a threshold joins the band above it
    (1.0, "bf16", "int4"),
    (2.999, "bf16", "int4"),
    (3.0, "fp8/int8", "fp8/int8"),   # exactly the first threshold: the middle band
    (4.0, "fp8/int8", "fp8/int8"),
    (4.999, "fp8/int8", "fp8/int8"),
    (5.0, "int4", "bf16"),           # exactly the second threshold: the top band
    (12.0, "int4", "bf16"),
    (0.0, "bf16", "int4"),
    (-1.0, "bf16", "int4"),
])
def test_quantization_hint_bands_and_edges(alpha, lower, higher):
    assert qh.quantization_hint(alpha, THRESHOLDS, FORMATS, LOWER) == lower
    assert qh.quantization_hint(alpha, THRESHOLDS, FORMATS, HIGHER) == higher
    # the former direction names still read the same
    assert qh.quantization_hint(alpha, THRESHOLDS, FORMATS, "alpha_pruning") == lower
    assert qh.quantization_hint(alpha, THRESHOLDS, FORMATS, "inverse") == higher


# Every band edge of both presets, approached from below and from above (worked out by hand from
# the band rule [t_i, t_i+1)): alpha_pruning on alpha, original_script on alpha_hill.
@pytest.mark.parametrize("preset, value, expected", [
    (ALPHA_PRUNING, BELOW(3.0, -np.inf), "bf16"),      # just below 3: lowest band, most bits
    (ALPHA_PRUNING, 3.0, "fp8/int8"),                  # on 3: the band above
    (ALPHA_PRUNING, np.nextafter(3.0, np.inf), "fp8/int8"),
    (ALPHA_PRUNING, BELOW(5.0, -np.inf), "fp8/int8"),
    (ALPHA_PRUNING, 5.0, "int4"),                      # on 5: the band above, fewest bits
    (ALPHA_PRUNING, np.nextafter(5.0, np.inf), "int4"),
    (ORIGINAL, BELOW(2.5, -np.inf), "int4"),           # "< 2.5 -> INT4"
    (ORIGINAL, 2.5, "fp8/int8"),                       # "2.5-3 -> FP8": 2.5 is in the middle band
    (ORIGINAL, np.nextafter(2.5, np.inf), "fp8/int8"),
    (ORIGINAL, BELOW(3.0, -np.inf), "fp8/int8"),
    (ORIGINAL, 3.0, "fp16/bf16"),                      # on 3: the band above (the prose's "> 3" would say FP8)
    (ORIGINAL, np.nextafter(3.0, np.inf), "fp16/bf16"),  # "> 3 -> FP16/BF16"
])
def test_quantization_presets_every_band_edge_both_sides(preset, value, expected):
    got = qh.quantization_hint(value, preset["alpha_thresholds"], preset["formats"], preset["direction"])
    assert got == expected
    metrics = pd.DataFrame({"matrix": ["m"], "param_name": ["m"], "status": ["ok"], "alpha": [value],
                            "alpha_hill": [value]})
    assert qh.quantization_hints(metrics, preset)["suggested_format"].tolist() == [expected]


def test_presets_are_what_config_resolves():
    from blockscope.compression.presets import PRESETS, resolve_quantization

    assert resolve_quantization({}) == ALPHA_PRUNING
    assert resolve_quantization({"preset": "original_script"}) == ORIGINAL
    assert {k: PRESETS["original_script"][k] for k in PRESETS["original_script"]} == \
        {k: ORIGINAL[k] for k in PRESETS["original_script"]}
    # explicit keys override the preset's; the former direction names are renamed
    got = resolve_quantization({"preset": "original_script", "formats": ["bf16", "int8", "int4"],
                                "direction": "inverse", "group_size": 64})
    assert got == {**ORIGINAL, "formats": ["bf16", "int8", "int4"], "group_size": 64}
    assert resolve_quantization(dict(got)) == got   # idempotent


@pytest.mark.parametrize("direction", [LOWER, HIGHER])
@pytest.mark.parametrize("alpha", [NAN, np.nan, float("inf"), -float("inf")])
def test_quantization_hint_unknown_alpha_gets_no_format(alpha, direction):
    assert qh.quantization_hint(alpha, THRESHOLDS, FORMATS, direction) is None


def test_quantization_hint_one_threshold_and_four_bands():
    assert [qh.quantization_hint(a, [4.0], ["bf16", "int4"], LOWER) for a in (3.9, 4.0)] == \
        ["bf16", "int4"]
    assert [qh.quantization_hint(a, [4.0], ["bf16", "int4"], HIGHER) for a in (3.9, 4.0)] == ["int4", "bf16"]
    formats = ["fp32", "bf16", "int8", "int4"]
    assert [qh.quantization_hint(a, [2.0, 4.0, 6.0], formats, LOWER) for a in (1, 2, 5, 6, 9)] == \
        ["fp32", "bf16", "int8", "int4", "int4"]
    assert [qh.quantization_hint(a, [2.0, 4.0, 6.0], formats, HIGHER) for a in (1, 2, 5, 6, 9)] == \
        ["int4", "int8", "bf16", "fp32", "fp32"]


def test_format_bits():
    assert [qh.format_bits(f) for f in ("bf16", "fp16/bf16", "fp8/int8", "int4", "nf4", "keep", None)] == \
        [16, 16, 8, 4, 4, None, None]


def _hint_metrics():
    return pd.DataFrame({
        "matrix": ["m0", "m1", "m2", "m3", "w[0]", "w[1]", "ln.weight", "pos_ids"],
        "param_name": ["m0", "m1", "m2", "m3", "w", "w", "ln.weight", "pos_ids"],
        "expert": pd.array([None, None, None, None, 0, 1, None, None], dtype="Int64"),
        "block_type": ["q_proj", "k_proj", "down_proj", "embedding", "moe_expert", "moe_expert", "norm", "other"],
        "layer_index": [0, 0, 1, NAN, 1, 1, 1, NAN], "rows": [8, 4, 8, 16, 8, 8, 8, 1],
        "cols": [8, 8, 16, 8, 8, 8, NAN, 8],
        "alpha": [2.0, 3.0, 6.0, NAN, 4.0, 9.0, NAN, NAN], "alpha_hill": [6.0, 4.0, 1.0, 3.0, 2.0, 2.0, NAN, NAN],
        "status": ["ok", "ok", "ok", "ok", "ok", "ok", layout.STATISTICS_ONLY,
                   "integer tensor (I64): not a weight matrix"],
        "extra": [1, 2, 3, 4, 5, 6, 7, 8],
    })


def test_quantization_hints_alpha_pruning_on_alpha():
    got = qh.quantization_hints(_hint_metrics(), ALPHA_PRUNING)
    assert got.columns.tolist() == layout.QUANTIZATION_HINT_COLUMNS
    assert got["matrix"].tolist() == ["m0", "m1", "m2", "m3", "w[0]", "w[1]", "ln.weight", "pos_ids"]
    # alpha 2 -> bf16, 3 (edge) -> fp8, 6 -> int4, NaN (status ok) -> keep, experts 4 -> fp8, 9 -> int4
    assert got["suggested_format"].tolist() == ["bf16", "fp8/int8", "int4", None, "fp8/int8", "int4", None, None]
    assert got["bits"].tolist() == [16, 8, 4, pd.NA, 8, 4, pd.NA, pd.NA]
    assert got["decision"].tolist() == ["quantize"] * 3 + ["keep"] + ["quantize"] * 2 + ["keep"] * 2
    assert got["reason"].tolist()[3:] == ["alpha is not finite", "", "", layout.STATISTICS_ONLY,
                                          "integer tensor (I64): not a weight matrix"]
    assert got["group_size"].tolist() == [32, 32, 32, pd.NA, 32, 32, pd.NA, pd.NA]
    assert set(got["basis"]) == {"preset alpha_pruning: alpha thresholds [3.0, 5.0], lower alpha keeps more bits"}


def test_quantization_hints_original_script_on_alpha_hill():
    got = qh.quantization_hints(_hint_metrics(), ORIGINAL)
    # alpha_hill 6 -> fp16/bf16; 4 -> fp16/bf16; 1 -> int4; 3 (edge) -> fp16/bf16; experts 2, 2 -> int4
    assert got["suggested_format"].tolist() == ["fp16/bf16", "fp16/bf16", "int4", "fp16/bf16", "int4", "int4",
                                                None, None]
    assert set(got["basis"]) == {"preset original_script: alpha_hill thresholds [2.5, 3.0], higher alpha_hill "
                                 "keeps more bits"}
    assert got["alpha"].tolist()[:3] == [2.0, 3.0, 6.0]   # both exponents are carried either way
    overridden = qh.quantization_hints(_hint_metrics(), {**ORIGINAL, "alpha_thresholds": [2.0, 3.0]})
    assert set(overridden["basis"]) == {"preset original_script (overridden: alpha_thresholds): alpha_hill "
                                        "thresholds [2.0, 3.0], higher alpha_hill keeps more bits"}


def test_quantization_config_export():
    settings = {**ALPHA_PRUNING, "group_size": 64}
    hints = qh.quantization_hints(_hint_metrics(), settings)
    got = json.loads(json.dumps(qh.quantization_config("tiny", hints, settings), allow_nan=False))
    assert got["group_size"] == 64 and got["preset"] == "alpha_pruning" and got["preset_overrides"] == []
    assert got["bands"] == [{"from": None, "to": 3.0, "format": "bf16"}, {"from": 3.0, "to": 5.0, "format": "fp8/int8"},
                            {"from": 5.0, "to": None, "format": "int4"}]
    params = got["parameters"]
    assert list(params) == ["m0", "m1", "m2", "m3", "w", "ln.weight", "pos_ids"]
    assert params["m0"] == {"param_name": "m0", "format": "bf16", "bits": 16, "group_size": 64, "metric": "alpha",
                            "value": 2.0, "decision": "quantize", "reason": ""}
    assert params["m3"] == {"param_name": "m3", "format": None, "bits": None, "group_size": None, "metric": "alpha",
                            "value": None, "decision": "keep", "reason": "alpha is not finite"}
    assert params["w"] == {"param_name": "w", "experts": [
        {"expert": 0, "param_name": "w", "format": "fp8/int8", "bits": 8, "group_size": 64, "metric": "alpha",
         "value": 4.0, "decision": "quantize", "reason": ""},
        {"expert": 1, "param_name": "w", "format": "int4", "bits": 4, "group_size": 64, "metric": "alpha",
         "value": 9.0, "decision": "quantize", "reason": ""}]}
    assert params["ln.weight"]["decision"] == "keep" and params["ln.weight"]["format"] is None
    assert params["ln.weight"]["reason"] == layout.STATISTICS_ONLY
    assert got["formats"]["w[1]"] == "int4" and got["formats"]["pos_ids"] is None
    original = qh.quantization_config("tiny", qh.quantization_hints(_hint_metrics(), ORIGINAL), ORIGINAL)
    assert original["bands"] == [{"from": None, "to": 2.5, "format": "int4"},
                                 {"from": 2.5, "to": 3.0, "format": "fp8/int8"},
                                 {"from": 3.0, "to": None, "format": "fp16/bf16"}]
    assert original["parameters"]["m2"]["value"] == 1.0 and original["parameters"]["m2"]["metric"] == "alpha_hill"


def test_quantization_config_defaults_match_the_config():
    """The documented default (config.yaml) reads as the tests above assume."""
    from blockscope.compression.presets import resolve_quantization

    quantization = yaml.safe_load((ROOT / "config.yaml").read_text())["quantization"]
    assert resolve_quantization(quantization) == ALPHA_PRUNING


# --- precision tables -----------------------------------------------------------------------------

def _precision_long(rows):
    """rows: (matrix, block_type, rows, cols, precision, alpha_hill)."""
    return pd.DataFrame(rows, columns=["matrix", "block_type", "rows", "cols", "precision", "alpha_hill"]).assign(
        model="m", status="ok")


def test_precision_wide_by_hand():
    long = _precision_long([
        ("l1.q", "q_proj", 8, 16, "fp32", 2.0), ("l1.q", "q_proj", 8, 16, "bf16", 2.5),
        ("l0.k", "k_proj", 4, 16, "fp32", 3.0), ("l0.k", "k_proj", 4, 16, "bf16", NAN),
        ("l1.q", "q_proj", 8, 16, "fp8", 4.0), ("l0.k", "k_proj", 4, 16, "fp8", 5.0),
    ])
    got = agg.precision_wide(long)
    # declared columns, then alpha_<precision> in order of first appearance
    assert got.columns.tolist() == [*layout.PRECISION_WIDE_COLUMNS, "alpha_fp32", "alpha_bf16", "alpha_fp8",
                                    *layout.PRECISION_SENSITIVITY_COLUMNS]
    assert got["layer_name"].tolist() == ["l1.q", "l0.k"]                # order of first appearance
    assert got["category"].tolist() == ["q_proj", "k_proj"]
    assert got["out_features"].tolist() == [8, 4] and got["in_features"].tolist() == [16, 16]
    assert got["alpha_fp32"].tolist() == [2.0, 3.0]
    assert got["alpha_bf16"].iloc[0] == 2.5 and math.isnan(got["alpha_bf16"].iloc[1])
    assert got["alpha_fp8"].tolist() == [4.0, 5.0]


def test_precision_wide_empty_has_the_declared_columns():
    got = agg.precision_wide(_precision_long([]))
    assert got.columns.tolist() == [*layout.PRECISION_WIDE_COLUMNS, *layout.PRECISION_SENSITIVITY_COLUMNS]
    assert got.empty


def test_precision_wide_keeps_a_matrix_without_any_alpha():
    long = _precision_long([
        ("big", "q_proj", 64, 64, "fp32", 2.0), ("big", "q_proj", 64, 64, "bf16", 2.1),
        ("tiny", "k_proj", 2, 64, "fp32", NAN), ("tiny", "k_proj", 2, 64, "bf16", NAN),
    ])
    got = agg.precision_wide(long)
    assert got["layer_name"].tolist() == ["big", "tiny"]
    assert got.columns.tolist() == [*layout.PRECISION_WIDE_COLUMNS, "alpha_fp32", "alpha_bf16",
                                    *layout.PRECISION_SENSITIVITY_COLUMNS]


def test_precision_summary_by_hand():
    long = _precision_long([
        ("a", "q_proj", 4, 4, "fp32", 1.0), ("b", "q_proj", 4, 4, "fp32", 2.0),
        ("c", "q_proj", 4, 4, "fp32", 3.0), ("d", "q_proj", 4, 4, "fp32", 10.0),
        ("a", "q_proj", 4, 4, "int4", 5.0), ("b", "q_proj", 4, 4, "int4", NAN),
    ])
    got = agg.precision_summary(long)
    assert got.columns.tolist() == layout.PRECISION_SUMMARY_COLUMNS
    # order of first appearance, then the two rows over matrices
    assert got["precision"].tolist() == ["fp32", "int4", layout.RELATIVE_RANGE_ROW, layout.SENSITIVE_ROW]
    fp32 = got.set_index("precision").loc["fp32"]
    # 1, 2, 3, 10: mean 4, deviations -3 -2 -1 6 -> population variance 50 / 4
    assert fp32["count"] == 4
    assert (fp32["mean"], fp32["min"], fp32["median"], fp32["max"]) == (4.0, 1.0, 2.5, 10.0)
    assert fp32["std"] == pytest.approx(math.sqrt(12.5))
    # linear quantiles: position 0.25 * 3 = 0.75 -> 1 + 0.75; 0.75 * 3 = 2.25 -> 3 + 0.25 * 7
    assert fp32["q25"] == pytest.approx(1.75) and fp32["q75"] == pytest.approx(4.75)
    int4 = got.set_index("precision").loc["int4"]
    assert int4["count"] == 1                                       # NaN not counted
    assert (int4["mean"], int4["std"], int4["q25"], int4["q75"]) == (5.0, 0.0, 5.0, 5.0)
    # a: 1 and 5 -> range 4, mean 3, relative 4/3; b: NaN at int4 -> NaN; c, d: only one precision -> NaN
    spread = got.set_index("precision").loc[layout.RELATIVE_RANGE_ROW]
    assert spread["count"] == 1 and spread["max"] == pytest.approx(4 / 3)
    sensitive = got.set_index("precision").loc[layout.SENSITIVE_ROW]
    assert sensitive["count"] == 1 and sensitive["mean"] == 1.0 and math.isnan(sensitive["max"])


def test_precision_wide_sensitivity_columns_by_hand():
    long = _precision_long([
        ("a", "q_proj", 4, 4, "fp32", 2.0), ("a", "q_proj", 4, 4, "fp16", 2.0), ("a", "q_proj", 4, 4, "bf16", 2.1),
        ("b", "k_proj", 4, 4, "fp32", 3.0), ("b", "k_proj", 4, 4, "fp16", 3.0), ("b", "k_proj", 4, 4, "bf16", 3.0),
        ("c", "v_proj", 4, 4, "fp32", 3.0), ("c", "v_proj", 4, 4, "fp16", NAN), ("c", "v_proj", 4, 4, "bf16", 3.0),
    ])
    got = agg.precision_wide(long, threshold=0.04).set_index("layer_name")
    # a: 2, 2, 2.1 -> range 0.1, mean 6.1/3, relative 0.3/6.1 = 0.0492 > 0.04
    assert got.loc["a", "alpha_hill_range"] == pytest.approx(0.1)
    assert got.loc["a", "alpha_hill_relative_range"] == pytest.approx(0.3 / 6.1)
    assert got["precision_sensitive"].tolist() == [True, False, False]
    assert got.loc["b", "alpha_hill_range"] == 0.0 and math.isnan(got.loc["c", "alpha_hill_relative_range"])
    assert not agg.precision_wide(long, threshold=0.05).set_index("layer_name").loc["a", "precision_sensitive"]


# --- heads ----------------------------------------------------------------------------------------

def test_tag_heads_across_layers():
    # two layers of four heads, mean effective rank 1..8 over the model
    # quartiles (linear): q25 at position 1.75 -> 2.75, q75 at 5.25 -> 6.25
    heads = pd.DataFrame({
        "model": "m", "layer_index": [0] * 4 + [1] * 4, "head": [0, 1, 2, 3] * 2,
        "mean_effective_rank": [1.0, 2.0, 7.0, 3.0, 8.0, 4.0, 5.0, 6.0],
        "tag": ["low-rank", "", "high-rank", "", "high-rank", "low-rank", "", ""],   # per layer
    })
    got = agg.tag_heads_across_layers(heads)
    assert got["layer_tag"].tolist() == heads["tag"].tolist()
    assert got["tag"].tolist() == ["low-rank", "low-rank", "high-rank", "", "high-rank", "", "", ""]
    assert got[["model", "layer_index", "head", "mean_effective_rank"]].equals(
        heads[["model", "layer_index", "head", "mean_effective_rank"]])
    assert "layer_tag" not in heads                                  # the input is not changed


def test_tag_heads_across_layers_empty():
    empty = pd.DataFrame(columns=layout.HEAD_COLUMNS)
    assert agg.tag_heads_across_layers(empty).empty


# --- cross-model depth ----------------------------------------------------------------------------

def test_relative_depth():
    metrics = pd.DataFrame({"model": ["a", "a", "b", "b"], "layer_index": [0, 5, 3, NAN]})
    got = agg.relative_depth(metrics, {"a": 10, "b": 4})
    assert got.tolist()[:3] == [0.0, 0.5, 0.75] and math.isnan(got.iloc[3])


def test_depth_comparison_bins():
    metrics = pd.DataFrame({
        "model": "a", "block_type": "q_proj",
        "relative_depth": [0.0, 0.05, 0.5, 0.95, 1.0, 0.3, 0.7, NAN],
        "alpha": [1.0, 3.0, 5.0, 7.0, 11.0, 2.0, 4.0, 100.0],
        "effective_rank": [10.0, 20.0, 30.0, 40.0, 60.0, 50.0, 70.0, 100.0],
        "not_plotted": 0.0,
    })
    got = agg.depth_comparison(metrics)
    present = [m for m in layout.PLOT_METRICS if m in ("alpha", "effective_rank")]
    assert got.columns.tolist() == ["block_type", "depth_bin", "model", *present]
    by = got.set_index("depth_bin")
    # 0.0 and 0.05 -> bin 0.0; 0.3 -> 0.3 (not 0.2 by rounding); 0.5 -> 0.5; 0.7 -> 0.7;
    # 0.95 and 1.0 -> the last bin 0.9 (1.0 does not open an eleventh bin); NaN depth left out
    assert by.index.tolist() == [0.0, 0.3, 0.5, 0.7, 0.9]
    assert by["alpha"].tolist() == [2.0, 2.0, 5.0, 4.0, 9.0]
    assert by["effective_rank"].tolist() == [15.0, 50.0, 30.0, 70.0, 50.0]


def test_depth_comparison_bin_count_and_groups():
    metrics = pd.DataFrame({
        "model": ["a", "a", "b", "b", "a"], "block_type": ["q_proj", "q_proj", "q_proj", "q_proj", "v_proj"],
        "relative_depth": [0.5, 1.0, 0.74, 0.76, 0.1],
        "alpha": [1.0, 3.0, 5.0, 7.0, 9.0],
    })
    got = agg.depth_comparison(metrics, bins=4)
    # bins of a quarter: 0.5 -> 0.5, 1.0 -> 0.75 (last), 0.74 -> 0.5, 0.76 -> 0.75, 0.1 -> 0.0
    rows = {(r.block_type, r.depth_bin, r.model): r.alpha for r in got.itertuples()}
    assert rows == {("q_proj", 0.5, "a"): 1.0, ("q_proj", 0.75, "a"): 3.0, ("q_proj", 0.5, "b"): 5.0,
                    ("q_proj", 0.75, "b"): 7.0, ("v_proj", 0.0, "a"): 9.0}


@pytest.mark.parametrize("layers", [1, 2, 7, 10, 22, 23, 24, 28, 32, 36, 40, 80])
def test_depth_comparison_bins_every_layer_by_exact_arithmetic(layers):
    """layer / layers in float must land in the tenth that integer arithmetic says."""
    metrics = pd.DataFrame({"model": "a", "block_type": "q_proj", "layer_index": range(layers),
                            "alpha": np.arange(layers, dtype=float)})
    metrics["relative_depth"] = agg.relative_depth(metrics, {"a": layers})
    got = agg.depth_comparison(metrics)
    expected = {}
    for layer in range(layers):
        expected.setdefault(min(10 * layer // layers, 9) / 10, []).append(float(layer))
    assert dict(zip(got["depth_bin"], got["alpha"])) == {b: np.mean(v) for b, v in expected.items()}


# --- a model with no weight matrix: every table with its headers, no KeyError ---------------------

def _statistics_only_metrics(tmp_path):
    """A real per-unit metrics file of 1-D parameters only (the anatomy's tables on written tensors),
    read back as rule aggregate reads it."""
    tensors = {"model.layers.0.input_layernorm.weight": np.ones(8, np.float32),
               "model.layers.0.mlp.up_proj.bias": np.linspace(-1, 1, 8).astype(np.float32)}
    path = tmp_path / "layer_000.tensors.parquet"
    write_unit(((name, "F32", array) for name, array in tensors.items()), path)
    inventory = pd.DataFrame({"param_name": list(tensors), "unit": "layer_000", "layer_index": 0,
                              "block_type": ["norm", "up_proj"], "shape": [[8], [8]], "dtype": "F32",
                              "source_dtype": "F32", "layout": "out_in"})
    metrics, spectra = unit_tables("m", "layer_000", path, inventory)
    assert spectra.num_rows == 0  # nothing has a spectrum
    write_table(metrics, tmp_path / "layer_000.parquet")
    return pd.read_parquet(tmp_path / "layer_000.parquet")


@pytest.mark.parametrize("kind", ["1-D parameters only", "no row at all"])
def test_a_metrics_table_without_a_spectral_row_gives_every_table_with_its_headers(tmp_path, kind):
    """What rule aggregate writes for a model with no weight matrix: the statistics and phase tables
    empty with their declared columns (the line that printed the alpha phases read `metric`), and
    every 1-D row kept as stored, with no format suggested."""
    frames = [_statistics_only_metrics(tmp_path)] if kind == "1-D parameters only" else []
    dims = {"model": "m", "model_id": "m", "revision": None, "layers": 2}
    metrics = agg.with_provenance(agg.stack(frames, layout.METRICS_COLUMNS), dims)
    assert len(metrics) == (2 if frames else 0) and set(metrics["status"]) <= {layout.STATISTICS_ONLY}
    statistics = agg.statistics_by_type(metrics)
    phases = agg.phase_analysis(metrics, dims["layers"])
    assert statistics.columns.tolist() == STATISTICS_COLUMNS and len(statistics) == 0
    assert phases.columns.tolist() == PHASE_COLUMNS and len(phases) == 0
    assert len(phases[phases["metric"] == "alpha"]) == 0
    hints = qh.quantization_hints(metrics, ALPHA_PRUNING)
    assert list(hints["decision"]) == ["keep"] * len(metrics)
    assert list(hints["reason"]) == [layout.STATISTICS_ONLY] * len(metrics)
    assert hints["suggested_format"].isna().all()
    exported = json.loads(json.dumps(qh.quantization_config("m", hints, ALPHA_PRUNING), allow_nan=False))
    assert [entry["format"] for entry in exported["parameters"].values()] == [None] * len(metrics)
    across = metrics.assign(relative_depth=agg.relative_depth(metrics, {"m": 2}))
    assert len(agg.depth_comparison(across)) == 0
