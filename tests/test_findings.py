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


def headmerge_table(**columns):
    """A hand-built head-merge summary: the selection half (select_*) and the held-out half (heldout_*)
    disagree on the best threshold (A: 0.7; B, within 5 %: 0.5)."""
    table = {"threshold": [0.5, 0.7, 0.9], "similarity": "qk", "merged_pairs": [9, 5, 2], "heads_removed": [6, 4, 2],
             "level": 0.95, "min_effect": 0.002, "selected_on": "even", "reported_on": "odd",
             "select_ci_high": [0.08, 0.03, 0.01], "heldout_ci_high": [0.02, 0.06, 0.01],
             "heldout_nll_change": [0.01, 0.05, 0.004], "heldout_ci_low": [0.0, 0.04, -0.002],
             "random_controls": 5, "heldout_vs_random": [-0.01, 0.03, 0.0005],
             "heldout_vs_random_low": [-0.02, 0.02, -0.004], "heldout_vs_random_high": [0.0, 0.04, 0.005],
             "heldout_p_value": [0.33, 1.0, 0.5],
             "heldout_verdict": ["no detectable difference", "worse", "no detectable difference"],
             "heldout_windows": 8, "heldout_tokens": 2040, "heldout_articles": 3}
    return pd.DataFrame({**table, **columns})


def test_headmerge_finding_chooses_on_one_half_and_reports_the_other():
    summary = headmerge_table()
    assert fd.headmerge_headline(summary, 0.05)["threshold"] == 0.7  # 0.08 > log(1.05) = 0.0488 on A
    on_b = summary.assign(select_ci_high=summary["heldout_ci_high"])
    assert fd.headmerge_headline(on_b, 0.05)["threshold"] == 0.5  # what choosing on B would have said
    sentence = fd.headmerge_finding(summary, 0.05, LINK)
    assert sentence.startswith("Merging heads by qk similarity: threshold 0.7, chosen on the even windows as the "
                               "largest merge (most heads removed) with its perplexity change's 95 % upper bound "
                               "within 5 % of the base, removes 4 heads (5 similar pairs)")
    # B's numbers for A's choice: e^0.05 - 1 = 5.1 %, e^0.04 - 1 = 4.1 %, e^0.06 - 1 = 6.2 %
    assert ("on the held-out odd windows (8 windows, 2040 tokens from 3 WikiText articles) perplexity changes by "
            "+5.1 % (95 % CI +4.1 % to +6.2 %)") in sentence
    assert ("against 5 random merges that remove as many heads per layer, +0.0300 nats per token (95 % CI +0.0200 "
            "to +0.0400), rank p = 1.00: worse than the controls") in sentence
    assert "(headmerge/sweep.png)" in sentence and "threshold 0.5" not in sentence and "+1.0 %" not in sentence


def test_headmerge_finding_says_no_detectable_difference_and_names_no_winner():
    summary = headmerge_table(select_ci_high=[0.08, 0.06, 0.01])  # on A only 0.9 is within 5 %
    sentence = fd.headmerge_finding(summary, 0.05, LINK)
    assert "threshold 0.9, chosen on the even windows" in sentence and "removes 2 heads" in sentence
    assert "perplexity changes by +0.4 % (95 % CI -0.2 % to +1.0 %)" in sentence
    assert sentence.endswith("+0.0005 nats per token (95 % CI -0.0040 to +0.0050), rank p = 0.50: no detectable "
                             "difference at 8 windows / 2040 tokens ([head-merge sweep](headmerge/sweep.png), "
                             "[headmerge/summary.parquet](headmerge/summary.parquet)).")
    assert "better" not in sentence and "worse" not in sentence


def test_headmerge_finding_without_a_merge_within_tolerance():
    none = fd.headmerge_finding(headmerge_table(select_ci_high=[0.08, 0.06, 0.05]), 0.05, LINK)
    assert none.startswith("No qk threshold that merges heads has, on the even windows, its perplexity change's "
                           "95 % upper bound within 5 % of the base; the mildest merge, threshold 0.9 (2 heads "
                           "removed): on the held-out odd windows")
    unmerged = fd.headmerge_finding(headmerge_table(heads_removed=0, merged_pairs=0), 0.05, LINK)
    assert unmerged.startswith("No qk threshold merges a single head pair")
    # a summary from before the half split gives no finding rather than a wrong one
    assert fd.headmerge_finding(pd.DataFrame({"threshold": [0.5], "perplexity": [10.0]}), 0.05, LINK) is None


def test_model_findings_skip_what_has_no_table_and_append_extras():
    metrics = metrics_table({"q_proj": [3.0, 3.1, 2.9]})
    found = fd.model_findings(metrics, {}, LINK, extra=["Compression: 4-bit keeps perplexity within 2 %."])
    assert len(found) == 3  # range, unusual, the extra; no twin, no precision, no head merging
    assert found[-1].startswith("Compression")
    assert fd.findings_section([])[2].startswith("_(none")
