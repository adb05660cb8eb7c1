"""Precision sensitivity: the spread of alpha-Hill across precisions, on hand-made numbers."""

import math

import pandas as pd
import pytest

from blockscope.sensitivity import (alpha_hill_range, alpha_hill_relative_range, most_sensitive,
                                    precision_sensitive, precision_sensitivity)


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
