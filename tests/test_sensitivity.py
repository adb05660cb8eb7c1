"""Precision sensitivity: the spread of alpha-Hill across precisions, on hand-made numbers."""

import math

import pandas as pd
import pytest

from blockscope.analysis.precision_sensitivity import (
    alpha_hill_range,
    alpha_hill_relative_range,
    most_sensitive,
    precision_sensitive,
    precision_sensitivity,
)


def test_range_and_relative_range_by_hand():
    assert alpha_hill_range([2.0, 2.5, 3.0]) == pytest.approx(1.0)
    assert alpha_hill_relative_range([2.0, 2.5, 3.0]) == pytest.approx(1.0 / 2.5)
    assert alpha_hill_relative_range([4.0, 4.0]) == 0.0
    assert alpha_hill_relative_range([-1.0, -3.0]) == pytest.approx(2.0 / 2.0)  # |mean|


@pytest.mark.parametrize("alphas", [[2.0], [2.0, float("nan")], [], [2.0, float("inf")]])
def test_undefined_spread_is_nan(alphas):
    assert math.isnan(alpha_hill_range(alphas)) and math.isnan(alpha_hill_relative_range(alphas))
    assert not precision_sensitive(alpha_hill_relative_range(alphas), 0.0)


def test_threshold_edge_is_strict():
    relative = alpha_hill_relative_range([1.0, 3.0])  # range 2, mean 2: exactly 1.0
    assert relative == 1.0
    assert not precision_sensitive(relative, 1.0)
    assert precision_sensitive(relative, 0.999)
    assert not precision_sensitive(0.05, 0.05) and precision_sensitive(0.0500001, 0.05)


def test_per_matrix_table_and_ranking():
    long = pd.DataFrame({"matrix": ["a"] * 2 + ["b"] * 2 + ["c"] * 2, "block_type": ["q_proj"] * 6,
                         "precision": ["fp32", "bf16"] * 3, "alpha_hill": [2.0, 2.2, 4.0, 4.0, 3.0, float("nan")]})
    table = precision_sensitivity(long, 0.05)
    assert table["matrix"].tolist() == ["a", "b", "c"]
    assert table["precision_sensitive"].tolist() == [True, False, False]
    assert most_sensitive(table, 10)["matrix"].tolist() == ["a", "b"]


def _sweep(n=30):
    """A long sweep table: matrix i moves by i % across fp32 -> fp16 -> bf16; one has a NaN."""
    rows = []
    for i in range(n):
        name = f"model.layers.{i // 7}.mlp.m{i}.weight"
        for precision, factor in (("fp32", 1.0), ("fp16", 1 + 0.005 * i), ("bf16", 1 + 0.01 * i)):
            rows.append({"matrix": name, "block_type": "down_proj", "rows": 64, "cols": 32, "precision": precision,
                         "alpha_hill": float("nan") if i == 3 and precision == "bf16" else 2.0 * factor,
                         "layer_index": i // 7, "status": "ok"})
    return pd.DataFrame(rows)


def test_sensitivity_plot_is_written(tmp_path):
    from blockscope.reporting.figures.precision import precision_sensitivity as sensitivity_figure

    target = tmp_path / "precision_sensitivity.png"
    sensitivity_figure(_sweep(), 0.05, "m: the most precision-sensitive matrices", target)
    assert target.stat().st_size > 10_000


def test_report_section_counts_and_ranks_sensitive_matrices(tmp_path):
    from blockscope.aggregation import model_tables as agg
    from blockscope.reporting.model_report import model_report

    wide = agg.precision_wide(_sweep(), 0.05)
    # relative range of matrix i: 0.01 i * 2 / mean(2, 2(1 + .005 i), 2(1 + .01 i)) = 0.01 i / (1 + .005 i)
    # > 0.05 from i = 6 (0.0583; i = 5: 0.0488): 24 of the 29 finite ones (i = 3 has a NaN)
    assert int(wide["precision_sensitive"].sum()) == 24
    empty = pd.DataFrame()
    text = model_report("m", {"model": "m", "layers": 5}, empty, empty, empty, empty, empty, empty,
                        {"matrices": {}}, {}, [], str(tmp_path), precision_wide=wide, sensitivity_threshold=0.05)
    section = text.split("## Precision sensitivity")[1].split("\n## ")[0]
    assert "24 of 29 matrices are precision-sensitive" in section and "above 0.05" in section
    assert "1 matrices have no finite" in section
    listed = [line for line in section.splitlines() if line.startswith("| model.layers.")]
    assert len(listed) == 10 and "m29.weight" in listed[0] and "m20.weight" in listed[-1]
