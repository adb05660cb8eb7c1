"""Findings: each sentence checked against the hand-made table it summarises."""

import numpy as np
import pandas as pd
import pytest

from blockscope.reporting import findings as fd

LINK = fd.links("", "png")


def metrics_table(alphas: dict, model="m") -> pd.DataFrame:
    """block_type -> alpha per layer (NaN: a failed fit), one ok matrix each."""
    rows = [{"model": model, "block_type": kind, "layer_index": layer, "matrix": f"layers.{layer}.{kind}",
             "alpha": alpha, "status": "ok"}
            for kind, values in alphas.items() for layer, alpha in enumerate(values)]
    rows.append({"model": model, "block_type": "norm", "layer_index": 0, "matrix": "norm", "alpha": np.nan,
                 "status": "1-D parameter: statistics only"})
    return pd.DataFrame(rows)


def test_twin_finding_gives_the_medians_by_type_furthest_apart_first():
    trained = metrics_table({"q_proj": [3.0, 3.5, 4.0], "down_proj": [2.0, 2.5, 9.0]})
    twin = metrics_table({"q_proj": [8.0, 8.5, 9.0], "down_proj": [3.0, 3.0, 3.0]}, model="m-random")
    table = fd.twin_comparison(trained, twin)
    assert table["block_type"].tolist() == ["q_proj", "down_proj"]  # |3.5 - 8.5| = 5 > |2.5 - 3| = 0.5
    assert table.set_index("block_type").loc["down_proj", "trained"] == trained[
        trained["block_type"] == "down_proj"]["alpha"].median()
    sentence = fd.twin_finding(trained, twin, LINK)
    assert "m-random" in sentence and "q_proj 3.50 vs 8.50" in sentence and "down_proj 2.50 vs 3.00" in sentence
    assert "furthest apart: q_proj, 5.00 below the twin" in sentence
    assert "(plots/alpha_by_layer.png)" in sentence


def test_range_finding_counts_matrices_outside_by_type_and_layer():
    metrics = metrics_table({"q_proj": [1.5, 3.0, 7.0, 8.0, np.nan], "v_proj": [1.0, 4.0, 4.0, 4.0, 4.0]})
    out = fd.outside_range(metrics, [2, 6])
    assert len(out) == 4 and set(out["side"]) == {"below", "above"}
    sentence = fd.range_finding(metrics, [2, 6], LINK)
    finite = metrics["alpha"].notna().sum()
    assert sentence.startswith(f"{len(out)} of {finite} matrices have α outside")
    assert "below 2: q_proj 1 (layers 0); v_proj 1 (layers 0)" in sentence
    assert "above 6: q_proj 2 (layers 2-3)" in sentence
    assert "(metrics.csv)" in sentence


def test_robust_zscore_is_the_modified_zscore():
    values = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    mad = np.median(np.abs(values - 3.0))  # 1.0
    assert fd.robust_zscore(values) == pytest.approx(0.6745 * (values - 3.0) / mad)
    assert np.isnan(fd.robust_zscore([2.0, 2.0, 2.0, 5.0])).all()  # MAD 0: no scale to judge by


def test_unusual_finding_names_the_outlying_layers_per_type():
    metrics = metrics_table({"q_proj": [3.0, 3.1, 2.9, 3.0, 3.2, 12.0], "k_proj": [4.0, 4.2, 3.8, 4.1, 3.9, 4.0]})
    scored = fd.zscores_by_type(metrics)
    outliers = scored[scored["zscore"].abs() > 3.5]
    assert outliers[["block_type", "layer_index"]].values.tolist() == [["q_proj", 5]]
    sentence = fd.unusual_finding(metrics, 3.5, LINK)
    z = outliers["zscore"].iloc[0]
    assert sentence.startswith(f"1 of {len(scored)} matrices have an unusual α")
    assert f"q_proj layer 5 (α 12.00, z {z:+.1f})" in sentence
    calm = fd.unusual_finding(metrics, 1000, LINK)
    assert calm.startswith("No matrix has an unusual α") and "q_proj layer 5" in calm


def test_precision_finding_counts_the_flagged_matrices():
    sensitivity = pd.DataFrame({"matrix": ["a", "b", "c", "d"], "alpha_hill_relative_range": [0.01, 0.2, 0.07, np.nan],
                                "precision_sensitive": [False, True, True, False]})
    sentence = fd.precision_finding(sensitivity, 0.05, LINK)
    assert sentence.startswith("2 of 3 matrices are precision-sensitive")
    assert "the most: b, relative range 0.200" in sentence
    assert "(precision_alpha_hill.csv)" in sentence


def headmerge_table(perplexities, pairs, thresholds=(0.5, 0.9, 0.99), base=10.0):
    return pd.DataFrame({"threshold": thresholds, "similarity": "qk", "merged_pairs": pairs, "perplexity": perplexities,
                         "base_perplexity": base, "random_perplexity_mean": [p * 2 for p in perplexities]})


def test_headmerge_headline_is_the_largest_merge_within_tolerance():
    summary = headmerge_table([20.0, 10.4, 10.1], [30, 12, 2])
    best = fd.headmerge_headline(summary, 0.05)
    assert best["threshold"] == 0.9  # 10.4 <= 10.5; 20 is not
    sentence = fd.headmerge_finding(summary, 0.05, LINK)
    assert "within 5 % of the base (10.00) down to threshold 0.9: 12 head pairs merged" in sentence
    assert "perplexity 10.40 (+4.0 %)" in sentence and "20.80 (+108.0 %) for random merges" in sentence
    assert "(headmerge/sweep.png)" in sentence
    none = fd.headmerge_finding(headmerge_table([20.0, 15.0, 11.0], [30, 12, 2]), 0.05, LINK)
    assert none.startswith("No qk threshold that merges heads keeps perplexity within 5 %")
    assert "the mildest merge, threshold 0.99, merges 2 pairs for 11.00 (+10.0 %), against 22.00" in none
    unmerged = fd.headmerge_finding(headmerge_table([10.0, 10.0, 12.0], [0, 0, 3]), 0.05, LINK)
    assert "threshold 0.99, merges 3 pairs for 12.00 (+20.0 %)" in unmerged  # 0 pairs within 5 % is no answer


def test_model_findings_skip_what_has_no_table_and_append_extras():
    metrics = metrics_table({"q_proj": [3.0, 3.1, 2.9]})
    found = fd.model_findings(metrics, {}, LINK, extra=["Compression: 4-bit keeps perplexity within 2 %."])
    assert len(found) == 3  # range, unusual, the extra; no twin, no precision, no head merging
    assert found[-1].startswith("Compression")
    assert fd.findings_section([])[2].startswith("_(none")
