"""A model against another in the report: the findings' sentences for a planted fine-tune (the layer
that moved most, the rank that holds 90 % of the update), a compare pair, the trend along a series
against scipy's exact Kendall test, the sections, and every figure written in png and svg."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_delta_tables import distance_row, planted, typed  # the planted fine-tune and the table builders

from blockscope.aggregation.delta_tables import deltas_by_layer, distances_by_layer
from blockscope.aggregation.series_tables import SERIES_METRICS
from blockscope.layout import ALL_TYPES, figure_files
from blockscope.pair_layout import DELTA_COLUMNS, DISTANCE_COLUMNS, SERIES_COLUMNS
from blockscope.reporting.delta_section import compare_findings, compare_section, delta_findings, delta_section
from blockscope.reporting.figures.deltas import (
    delta_effective_rank,
    distance_by_layer,
    relative_change_heatmap,
    series_trend,
)
from blockscope.reporting.series_section import series_findings, series_section

FORMATS = ("png", "svg")


def with_adapter(deltas: pd.DataFrame) -> pd.DataFrame:
    """The planted deltas as a LoRA adapter's on q_proj: rank 8, scale 2."""
    out = deltas.copy()
    adapted = out["block_type"] == "q_proj"
    out.loc[adapted, "adapter_rank"] = 8
    out.loc[adapted, "adapter_scale"] = 2.0
    return out


def test_delta_findings_name_the_layer_that_moved_most_and_the_rank_of_the_update():
    deltas = planted()
    by_layer = deltas_by_layer(deltas)
    found = delta_findings(deltas, by_layer)
    moved, kinds, rank, unchanged = found[:4]
    layers = by_layer[(by_layer["block_type"] == ALL_TYPES) & by_layer["layer_index"].notna()]
    top = layers.sort_values("relative_change", ascending=False).iloc[0]
    assert int(top["layer_index"]) == 2
    assert f"the layers with the largest change (measured, not tested): 2 ({top['relative_change']:.3g})" in moved
    assert "moved from its base (b)" in moved and "[deltas_by_layer.csv](deltas_by_layer.csv)" in moved
    # the per-type pool: v_proj sqrt((0.01² + 1e-6² + 0.3² + 0.02²) / (4 · 2²)) is the largest
    v = math.sqrt((0.01 ** 2 + 1e-12 + 0.3 ** 2 + 0.02 ** 2) / (4 * 2.0 ** 2))
    assert f"v_proj {v:.3g}" in kinds and "the largest is v_proj's (a ranking of measured changes, not a test)" in kinds
    # 90 % of the energy: rank 3 in the median changed matrix, 5 at most (q_proj layer 2), design rank 32
    assert "fits in rank 2 to 5 per changed matrix (median 3; largest at q_proj layer 2)" in rank
    assert "design rank min(rows, cols) of 32" in rank and "over 11 changed matrices" in rank
    assert "1 of 11 changed matrices has too few singular values above the rounding level" in rank
    assert "2 are bit-identical to b (q_proj 1, output 1)" in unchanged
    assert "1 changed by no more than the stored formats' rounding (v_proj 1)" in unchanged
    assert "less than bf16 can show" in unchanged
    assert not any("LoRA" in sentence for sentence in found)  # not an adapter
    assert delta_findings(deltas.iloc[:0], by_layer.iloc[:0]) == []


def test_an_adapter_finding_gives_its_rank_and_scale():
    deltas = with_adapter(planted())
    found = delta_findings(deltas, deltas_by_layer(deltas), prefix="../m/")
    adapter = [s for s in found if "LoRA" in s]
    assert adapter and "rank r = 8 and scale 2" in adapter[0] and "on 4 target matrices (q_proj 4)" in adapter[0]
    assert all("](../m/" in sentence for sentence in found)  # linked from another folder


def test_a_model_that_did_not_move_says_so():
    deltas = planted()
    deltas["status"] = "unchanged"
    deltas["delta_frobenius"] = 0.0
    found = delta_findings(deltas, deltas_by_layer(deltas))
    assert found[0].startswith("All 14 matrices of m are bit-identical to b: nothing moved")
    assert not any("fits in rank" in sentence for sentence in found)


def test_delta_section_holds_findings_layer_table_figures_and_the_table_link():
    deltas = planted()
    deltas.loc[deltas["layer_index"].eq(3).fillna(False), "delta_frobenius"] = 3e-6  # tiny: not printed as 0
    by_layer = deltas_by_layer(deltas)
    text = delta_section(deltas, by_layer, {"relative change": "plots/deltas/relative_change.png"}, "m", "b")
    assert text.startswith("## m against its base (b)")
    assert "- m moved from its base (b)" in text
    assert "[relative change](plots/deltas/relative_change.png)" in text and "[deltas.csv](deltas.csv)" in text
    layer3 = next(line for line in text.splitlines() if line.startswith("| 3 "))
    value = by_layer.set_index(["layer_index", "block_type"]).loc[(3, ALL_TYPES), "relative_change"]
    assert f"{value:.3g}" in layer3 and value < 1e-5
    assert "outside the blocks" in text
    assert "no delta" in delta_section(deltas.iloc[:0], by_layer.iloc[:0], {}, "m", "b")


def pair_tables():
    rows = [distance_row(layer, kind, 0.1 * (layer + 1), 4.0) for layer in range(3) for kind in ("q_proj", "v_proj")]
    rows[0]["subspace_overlap_left"] = 0.2
    rows.append(distance_row(1, "down_proj", None, None, "shapes differ"))
    distances = typed(rows, DISTANCE_COLUMNS)
    return distances, distances_by_layer(distances)


def test_compare_findings_give_the_distance_the_layers_and_the_subspaces():
    distances, by_layer = pair_tables()
    found = compare_findings(distances, by_layer, "a", "b")
    whole = math.sqrt(sum((0.1 * (layer + 1)) ** 2 * 2 for layer in range(3)) / (6 * 16))
    assert f"a pooled relative distance of {whole:.3g}" in found[0]
    assert "furthest apart in layers 2 (0.075), 1 (0.05) and 0 (0.025)" in found[0]
    assert "(compare/a/b/by_layer.csv)" in found[0]  # relative to the summary report
    assert "top-4 singular subspaces" in found[1] and "least overlapping: q_proj layer 0 (0.2)" in found[1]
    assert "k / n for unrelated random ones (median 0.0625 left and 0.125 right)" in found[1]  # 4/64, 4/32
    assert found[2].startswith("1 matrix of a not compared: 1 with another shape in b, 0 missing in b")
    text = compare_section(distances, by_layer, {"distance": "compare/a/b/distance_by_layer.png"}, "a", "b")
    assert text.startswith("## a against b") and "[distances.csv](compare/a/b/distances.csv)" in text


def series_frame(name: str, alphas, changes=None) -> pd.DataFrame:
    """ALL_TYPES rows (and one q_proj row each) of a series whose median alpha is `alphas`."""
    rows = []
    models = [f"{name}-{i}" for i in range(len(alphas))]
    for i, alpha in enumerate(alphas):
        change = np.nan if i == 0 else (changes[i] if changes is not None else 0.01 * i)
        common = {"series": name, "position": i, "model": models[i], "matrices": 4,
                  "previous": models[i - 1] if i else None, "shared_matrices": 4 if i else None,
                  "relative_change_from_previous": change}
        values = {m: 5.0 for m in SERIES_METRICS} | {"alpha": alpha, "effective_rank": 10.0 - i}
        rows.append({**common, "block_type": "q_proj", **values})
        rows.append({**common, "block_type": ALL_TYPES, **values})
    return pd.DataFrame(rows, columns=SERIES_COLUMNS)


def test_a_monotone_series_rises_with_the_exact_p_value():
    alphas = [2.0, 2.5, 2.7, 3.1, 3.6, 4.0]
    found = series_findings(series_frame("run", alphas))
    result = stats.kendalltau(range(6), alphas, method="exact")
    assert result.pvalue == pytest.approx(2 / math.factorial(6))
    alpha = next(s for s in found if "median α over" in s)
    assert "rises along the series, 2 (run-0) to 4 (run-5)" in alpha
    assert f"Kendall's tau = +1.00, exact p = {result.pvalue:.2g}" in alpha and "6 members" in alpha
    rank = next(s for s in found if "effective rank" in s)
    assert "falls along the series" in rank
    constant = next(s for s in found if "stable rank" in s)
    assert "is the same, 5, for all 6 members: no trend" in constant
    step = found[-1]
    assert step.startswith("The largest step along series run: run-5 from run-4, a pooled relative change of 0.05")


def test_a_series_without_trend_says_no_detectable_trend():
    alphas = [3.0, 1.0, 4.0, 1.5, 5.0, 2.0]
    result = stats.kendalltau(range(6), alphas, method="exact")
    assert result.pvalue >= 0.05
    alpha = next(s for s in series_findings(series_frame("run", alphas)) if "median α over" in s)
    assert f"no detectable trend over 6 members (Kendall's tau = {result.statistic:+.2f}, exact p = " \
           f"{result.pvalue:.2g})" in alpha
    # four members in perfect order: the smallest exact p, 2/4! = 0.083, cannot reach 0.05
    four = next(s for s in series_findings(series_frame("short", [1.0, 2.0, 3.0, 4.0])) if "median α over" in s)
    assert "no detectable trend over 4 members" in four and "no order can reach p < 0.05" in four
    at_90 = next(s for s in series_findings(series_frame("short", [1.0, 2.0, 3.0, 4.0]), level=0.9)
                 if "median α over" in s)
    assert "rises along the series" in at_90  # 0.083 < 1 - 0.9
    # with 5 members (2/5! = 0.017) it can at 0.95
    five = next(s for s in series_findings(series_frame("five", [1.0, 2.0, 3.0, 4.0, 5.0])) if "median α over" in s)
    assert "rises along the series" in five


def test_a_series_of_two_cannot_be_tested():
    found = series_findings(series_frame("pair", [2.0, 3.0]))
    assert found[0] == "Series pair has 2 members: no trend can be tested (Kendall's tau needs at least 3)."
    assert not any("rises" in s or "falls" in s for s in found)
    text = series_section(series_frame("pair", [2.0, 3.0]), {"trend": "series/pair/trend.png"})
    assert text.startswith("## Series pair") and "[members.csv](series/pair/members.csv)" in text
    assert "[trend](series/pair/trend.png)" in text


def written(stem, formats=FORMATS):
    """The files a figure wrote: each present, a PNG by its magic bytes and an SVG by its tag."""
    paths = [Path(p) for p in figure_files(str(stem), formats)]
    for path in paths:
        head = path.read_bytes()[:2000]
        assert head.startswith(b"\x89PNG") if path.suffix == ".png" else b"<svg" in head, path
    return paths


def test_every_figure_is_written_in_each_format(tmp_path):
    deltas = planted()
    by_layer = deltas_by_layer(deltas)
    relative_change_heatmap(by_layer, tmp_path / "relative_change", FORMATS)
    delta_effective_rank(deltas, tmp_path / "effective_rank", FORMATS)
    distances, pair_by_layer = pair_tables()
    distance_by_layer(pair_by_layer, tmp_path / "distance_by_layer", FORMATS)
    series_trend(series_frame("run", [2.0, 2.5, 3.0]), tmp_path / "trend", FORMATS)
    for stem in ("relative_change", "effective_rank", "distance_by_layer", "trend"):
        written(tmp_path / stem)
    assert "0" in (tmp_path / "relative_change.svg").read_text()  # the bit-identical cells, hatched and marked 0


def test_figures_without_data_say_why(tmp_path):
    relative_change_heatmap(deltas_by_layer(planted()).iloc[:0], tmp_path / "a", ["svg"])
    delta_effective_rank(typed([], DELTA_COLUMNS), tmp_path / "b", ["svg"])
    distance_by_layer(pair_tables()[1].iloc[:0], tmp_path / "c", ["svg"])
    series_trend(pd.DataFrame(columns=SERIES_COLUMNS), tmp_path / "d", ["svg"])
    for stem in "abcd":
        assert "nothing to plot" in (tmp_path / f"{stem}.svg").read_text()
