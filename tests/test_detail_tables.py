"""The detail tables: each statistic on hand-made tables whose answers
are worked out by hand, the report sections, the figures, and the config keys."""

import numpy as np
import pandas as pd
import pytest

from blockscope import layout
from blockscope.aggregation import detail_tables as details
from blockscope.analysis.heads import cumulative_energy
from blockscope.checkpoint.selection import chosen_layers, first_middle_last
from blockscope.config.validation import validate_config
from blockscope.errors import BlockscopeError
from blockscope.reporting.detail_sections import detail_report_sections
from blockscope.reporting.figures.head_merge import headmerge_comparison, headmerge_layer_pairs
from blockscope.reporting.figures.precision import precision_category, precision_distributions, precision_matrix
from blockscope.reporting.figures.spectra import down_proj_variance

from conftest import ROOT, TINY_LLAMA


def heads_table():
    """2 layers x 4 heads; head h of layer l has QK effective rank 10 l + h + 1 (OV: twice that)."""
    rows = [{"layer_index": layer, "head": head, "qk_effective_rank": 10.0 * layer + head + 1,
             "ov_effective_rank": 2 * (10.0 * layer + head + 1)} for layer in (0, 1) for head in range(4)]
    return pd.DataFrame(rows)


def test_rank_classes_by_the_quartiles_of_the_means():
    means = pd.Series([1.0, 2, 3, 4, 5, 6, 7, 8, np.nan])  # q25 = 2.75, q75 = 6.25
    classes = details.rank_classes(means)
    assert classes.tolist()[:8] == ["LOW", "LOW", "MID", "MID", "MID", "MID", "HIGH", "HIGH"]
    assert pd.isna(classes.iloc[8])
    assert details.rank_classes(pd.Series([3.0])).tolist() == ["MID"]  # one head: neither below nor above


def test_heads_per_head_index_per_layer_and_heatmap():
    heads = heads_table()
    by_head = details.heads_by_head(heads)
    assert list(by_head.columns) == layout.HEADS_BY_HEAD_COLUMNS
    # head h: ranks h + 1 and h + 11 -> mean h + 6, population std 5
    assert by_head["qk_effective_rank_mean"].tolist() == [6, 7, 8, 9]
    assert by_head["qk_effective_rank_std"].tolist() == [5, 5, 5, 5]
    assert by_head["qk_effective_rank_min"].tolist() == [1, 2, 3, 4]
    assert by_head["rank_class"].tolist() == ["LOW", "MID", "MID", "HIGH"]  # q25 = 6.75, q75 = 8.25
    by_layer = details.heads_by_layer(heads)
    assert list(by_layer.columns) == layout.HEADS_BY_LAYER_COLUMNS
    assert by_layer["qk_effective_rank_mean"].tolist() == [2.5, 12.5]
    assert by_layer["ov_effective_rank_max"].tolist() == [8, 28]
    assert by_layer["qk_effective_rank_std"].iloc[0] == pytest.approx(np.std([1, 2, 3, 4]))
    stats = details.heatmap_statistics(heads).set_index("metric")
    assert stats.loc["qk_effective_rank", ["count", "min", "max", "mean"]].tolist() == [8, 1, 14, 7.5]
    assert stats.loc["ov_effective_rank", "std"] == pytest.approx(np.std(2 * heads["qk_effective_rank"]))
    assert details.heads_by_head(heads.iloc[0:0]).empty


def test_energy_milestones_by_hand():
    # |lambda|^2 = 9, 4, 1 (total 14): 50 % -> 1, 75 % (10.5) -> 2, 90 % (12.6) -> 2, 95 % / 99 % -> 3
    milestones = details.energy_milestones([1.0, -3.0, 2.0])
    assert [milestones[c] for c in layout.ENERGY_COLUMNS] == [1, 2, 2, 3, 3]


def test_deep_dive_summary_of_a_real_eigenvalue_table():
    eigs = np.array([3 + 4j, 3 - 4j, -2.0, 1.0, 0.5j])
    order = np.argsort(-np.abs(eigs), kind="stable")
    eigs = eigs[order]
    table = pd.DataFrame(dict(zip(layout.EIGENVALUE_COLUMNS, (np.arange(1, 6), eigs.real, eigs.imag, np.abs(eigs),
                                                              cumulative_energy(eigs)))))
    row = details.deep_dive_summary(table, 3, 1)
    assert (row["positive_real"], row["negative_real"]) == (3, 1)  # 0.5j has real part 0: neither
    assert (row["real_min"], row["real_max"], row["imag_min"], row["imag_max"]) == (-2, 3, -4, 4)
    assert row["magnitude_percentile_50"] == 2 and row["magnitude_percentile_90"] == pytest.approx(5.0)
    # the milestones agree with the table's cumulative energy (what the figure marks)
    n99 = int(np.searchsorted(table["cumulative_energy"], 0.99 * (1 - 1e-12)) + 1)
    assert row["energy_rank_99"] == n99 == 4 and row["energy_rank_50"] == 2  # 25 + 25 of 55.25
    summary = details.deep_dive_summaries({(3, 1): table, (0, 0): table.iloc[0:0]})
    assert list(summary.columns) == layout.DEEP_DIVE_SUMMARY_COLUMNS
    assert summary["eigenvalues"].tolist() == [5, 0] and pd.isna(summary["energy_rank_99"].iloc[1])


def test_down_projections_from_spectra():
    metrics = pd.DataFrame({"matrix": ["a", "b", "n"], "layer_index": [1, 0, 0], "rows": [4, 4, 4],
                            "cols": [8, 8, np.nan], "block_type": ["down_proj", "down_proj", "norm"],
                            "status": ["ok", "ok", layout.STATISTICS_ONLY]})
    spectra = pd.DataFrame({"matrix": ["a"] * 4 + ["b"] * 2, "sigma": [4, 2, 1, 0.5, 1.0, 0.0]})
    table = details.down_projections(spectra, metrics)
    assert list(table.columns) == layout.DOWN_PROJECTION_COLUMNS and table["matrix"].tolist() == ["b", "a"]
    a = table.set_index("matrix").loc["a"]
    assert (a["sigma_max"], a["sigma_min"], a["condition_number"], a["components"]) == (4, 0.5, 8, 4)
    # sigma^2 = 16, 4, 1, 0.25 (total 21.25): 50 % and 75 % -> 1, 90 % -> 2, 95 % -> 3, 99 % -> 4
    assert a[layout.ENERGY_COLUMNS].tolist() == [1, 1, 2, 3, 4]
    assert table.set_index("matrix").loc["b", "condition_number"] == np.inf  # a singular matrix
    assert details.variance_explained([2.0, 1.0]).tolist() == [0.8, 0.2]


def test_layer_pivot_and_phase_statistics():
    metrics = pd.DataFrame({
        "layer_index": [0, 0, 1, 1, 2, 2, np.nan, 0],
        "block_type": ["q_proj", "down_proj"] * 3 + ["embedding", "norm"],
        "effective_rank": [1.0, 10, 2, 20, 3, 30, 99, 99],
        "status": ["ok"] * 7 + [layout.STATISTICS_ONLY]})
    pivot = details.layer_pivot(metrics, "effective_rank")
    assert list(pivot.columns) == ["layer_index", "down_proj", "q_proj"]  # no embedding (no layer), no 1-D row
    assert pivot["q_proj"].tolist() == [1, 2, 3] and pivot["down_proj"].tolist() == [10, 20, 30]
    phases = details.phase_statistics(metrics, 3, columns=["effective_rank"])
    assert list(phases.columns) == layout.PHASE_STATISTICS_COLUMNS
    assert phases["phase"].tolist() == ["early", "middle", "late"] * 3
    overall = phases[phases["block_type"] == layout.ALL_TYPES].set_index("phase")
    assert overall.loc["early", ["count", "mean", "min", "max", "range"]].tolist() == [2, 5.5, 1, 10, 9]
    assert overall.loc["late", "std"] == pytest.approx(13.5) and overall.loc["late", "cv"] == pytest.approx(13.5 / 16.5)
    assert phases.set_index(["block_type", "phase"]).loc[("q_proj", "middle"), "median"] == 2


def test_chosen_layers():
    assert first_middle_last([5, 0, 1, 2, 3, 4]) == [0, 3, 5] and first_middle_last([7]) == [7]
    assert chosen_layers([], range(4)) == [0, 2, 3] and chosen_layers([9, 1], range(4)) == [1]


def test_report_sections_name_their_tables():
    heads, metrics = heads_table(), pd.DataFrame({"layer_index": [0, 1], "block_type": ["q_proj"] * 2,
                                                  "effective_rank": [1.0, 2.0], "alpha": [3.0, 4.0]})
    tables = {"heads_by_head": details.heads_by_head(heads), "heads_by_layer": details.heads_by_layer(heads),
              "heads_heatmap_statistics": details.heatmap_statistics(heads),
              "deep_dive_summary": details.deep_dive_summaries(
                  {(1, 0): pd.DataFrame(columns=layout.EIGENVALUE_COLUMNS)}),
              "down_projections": pd.DataFrame(columns=layout.DOWN_PROJECTION_COLUMNS),
              "phase_statistics": details.phase_statistics(metrics, 2)}
    text = "\n".join(detail_report_sections(tables, metrics, ["plots/down_proj_variance.svg"], lambda p: p))
    for heading in ("## Attention heads: detail tables", "### Deep dives: eigenvalue summary",
                    "## Down projections (W_down)", "## effective_rank by layer and weight type",
                    "## alpha by layer and weight type", "## Phase statistics"):
        assert heading in text, heading
    assert "(heads_by_head.csv)" in text and "[down_proj_variance.svg](plots/down_proj_variance.svg)" in text
    assert "| LOW " in text and "| HIGH " in text


def test_the_figures_are_drawn(tmp_path):
    precision = pd.DataFrame({"matrix": ["m0", "m0", "m1", "m1", "embed", "embed"],  # embed: outside the blocks
                              "layer_index": pd.array([0, 0, 1, 1, None, None], dtype="Int64"),
                              "precision": ["fp32", "bf16"] * 3, "alpha_hill": [2.0, 2.1, 3.0, 3.3, 4.0, np.nan]})
    row = {"threshold": 0.5, "perplexity": 30.0, "accuracy": 0.2, "base_perplexity": 20.0, "base_accuracy": 0.25,
           "random_perplexity_mean": 40.0, "random_perplexity_std": 3.0, "random_accuracy_mean": 0.18,
           "merged_pairs": 3, "pairs_layer_0": 1, "pairs_layer_1": 2}
    drawn = {
        "down": lambda t: down_proj_variance({"layer 0": np.array([3.0, 2, 1])}, "t", t),
        "category": lambda t: precision_category(precision, "t", t),
        "matrix": lambda t: precision_matrix({"fp32": 2.0, "bf16": 2.1}, "t", t),
        "comparison": lambda t: headmerge_comparison(row, "t", t),
        "pairs": lambda t: headmerge_layer_pairs(row, [0, 1], "t", t),
        **{kind: lambda t, kind=kind: precision_distributions(precision, "t", t, kind=kind)
           for kind in ("box", "violin", "histogram")},
    }
    for name, draw in drawn.items():
        formats = ["png", "svg"] if name == "down" else ["png"]  # one figure in two formats is enough here
        draw(layout.figure_files(str(tmp_path / name), formats))
        assert all((tmp_path / f"{name}.{ext}").stat().st_size > 5_000 for ext in formats), name


@pytest.mark.parametrize("section, fragment", [
    ({"report": {"distribution_kind": "pie"}}, "report.distribution_kind"),
    ({"report": {"down_proj_layers": [-1]}}, "report.down_proj_layers"),
    ({"report": {"per_matrix_charts": "yes"}}, "report.per_matrix_charts"),
    ({"headmerge": {"plot_layers": "1-x"}}, "headmerge.plot_layers"),
])
def test_the_view_keys_are_validated(section, fragment):
    with pytest.raises(BlockscopeError, match=fragment.replace(".", r"\.")):
        validate_config({"models": {"tiny": {"source": "synthetic", "config": dict(TINY_LLAMA), "seed": 0}},
                         **section}, ROOT / "schemas" / "config.schema.yaml")


def test_matrix_labels_drop_the_layer_prefix_and_the_weight_suffix_only(tmp_path, monkeypatch):
    from blockscope.reporting.figures import precision as figures
    from blockscope.reporting.figures.canvas import short_name

    assert short_name("model.layers.3.mlp.down_proj.weight") == "L3.mlp.down_proj"
    assert short_name("model.layers.0.self_attn.q_proj.weight_scale") == "L0.self_attn.q_proj.weight_scale"
    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, target: drawn.append(fig))
    sweep = pd.DataFrame({"matrix": ["model.layers.0.mlp.up_proj.weight"] * 2 + ["lm_head.weight"] * 2,
                          "block_type": ["up_proj"] * 2 + ["lm_head"] * 2, "precision": ["fp32", "fp16"] * 2,
                          "alpha_hill": [2.0, 3.0, 4.0, 4.0]})
    figures.precision_page(sweep, "t", tmp_path / "page.png")
    figures.precision_sensitivity(sweep, 0.05, "t", tmp_path / "sensitivity.png")
    page, sensitivity = drawn
    assert [t.get_text() for t in page.axes[0].get_xticklabels()] == ["L0.mlp.up_proj", "lm_head"]
    # ranked by relative range, the largest at the top: up_proj (1 / 2.5) above lm_head (0)
    assert [t.get_text() for t in sensitivity.axes[0].get_yticklabels()] == ["lm_head", "L0.mlp.up_proj"]
