"""Every stage survives what the first stage already flagged (issue #11): empty tables, NaN and
Inf weights and unrecognised architectures give a status, a log line, a placeholder figure and a
report section, never a crash."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from blockscope.layout import EIGENVALUE_COLUMNS, HEAD_COLUMNS, METRICS_COLUMNS
from blockscope.reporting.figures import canvas
from blockscope.reporting.figures import embedding as embedding_figures
from blockscope.reporting.figures import head_merge as head_merge_figures
from blockscope.reporting.figures import heads as heads_figures
from blockscope.reporting.figures import precision as precision_figures
from blockscope.reporting.figures import spectra as spectra_figures
from blockscope.reporting.model_report import model_report

from conftest import run_workflow

EMPTY = pd.DataFrame()  # what aggregate's stack() writes when no unit has a row


@pytest.fixture
def reasons(monkeypatch):
    """The reasons of every placeholder figure drawn (the figures are still written)."""
    seen, draw = [], canvas.nothing_to_plot

    def recording(reason, title, target):
        seen.append(reason)
        draw(reason, title, target)

    # each figure module calls the nothing_to_plot it imported
    for module in (embedding_figures, head_merge_figures, heads_figures, precision_figures, spectra_figures):
        monkeypatch.setattr(module, "nothing_to_plot", recording)
    return seen


def _calls(tmp_path):
    """(name, function, args) of every plot function given nothing to draw."""
    eigen = pd.DataFrame(columns=EIGENVALUE_COLUMNS)
    eigen.attrs["reason"] = "layer 1, head 0: the layer has no attention projections"
    return [
        ("head_eigenvalues", heads_figures.head_eigenvalues, (eigen, "t")),
        ("embedding_elbow", embedding_figures.embedding_elbow, ({}, {}, "t")),
        ("embedding_pca", embedding_figures.embedding_pca, ({}, "t")),
        ("metric_by_layer", spectra_figures.metric_by_layer, (EMPTY, "alpha", "t")),
        ("metric_by_layer_columns", spectra_figures.metric_by_layer,
         (pd.DataFrame(columns=METRICS_COLUMNS), "alpha", "t")),
        ("esd", spectra_figures.esd, ([], "t")),
        ("heads_heatmap", heads_figures.heads_heatmap, (EMPTY, "t")),
        ("heads_heatmap_columns", heads_figures.heads_heatmap, (pd.DataFrame(columns=HEAD_COLUMNS), "t")),
        ("precision_page", precision_figures.precision_page, (EMPTY, "t")),
        ("precision_distributions", precision_figures.precision_distributions, (EMPTY, "t")),
        ("precision_sensitivity", precision_figures.precision_sensitivity, (EMPTY, 0.05, "t")),
        ("depth_overlay", spectra_figures.depth_overlay, (EMPTY, "alpha", "t")),
        ("headmerge_sweep", head_merge_figures.headmerge_sweep, (EMPTY, "t")),
        ("headmerge_pairs", head_merge_figures.headmerge_pairs, (EMPTY, [], "t")),
        ("similarity_matrices", head_merge_figures.similarity_matrices, ({}, "t")),
    ]


def test_every_plot_of_nothing_says_why(tmp_path, reasons):
    calls = _calls(tmp_path)
    for name, function, args in calls:
        function(*args, tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 1000, name
    assert len(reasons) == len(calls) and all(reasons)
    assert reasons[0] == "layer 1, head 0: the layer has no attention projections"  # the table's own reason
    assert reasons[1] == "no embedding matrix was clustered" and "no attention heads" in reasons[6]
    head_merge_figures.similarity_histograms({}, "t", tmp_path / "hist.png")  # an empty figure, as before
    embedding_figures.embedding_pca({}, "t", tmp_path / "pca.png", reason="no token embedding found")
    assert reasons[-1] == "no token embedding found"


def test_plots_of_all_nan_values_say_why_or_draw_the_rest(tmp_path, reasons):
    metrics = pd.DataFrame({"layer_index": [0, 1], "block_type": ["q_proj"] * 2, "alpha": [np.nan] * 2})
    spectra_figures.metric_by_layer(metrics, "alpha", "t", tmp_path / "m.png")
    assert reasons == ["no finite alpha value in any transformer block"]
    precision = pd.DataFrame({"matrix": ["a", "a"], "precision": ["fp32", "fp16"], "alpha_hill": [np.nan] * 2})
    precision_figures.precision_distributions(precision, "t", tmp_path / "p.png")
    assert reasons[-1] == "no finite α-Hill at any precision"
    heads = pd.DataFrame({"layer_index": [0, 0, 1, 1], "head": [0, 1, 0, 1],
                          "qk_effective_rank": [np.nan, 2.0, 3.0, 4.0], "ov_effective_rank": [np.nan] * 4})
    heads_figures.heads_heatmap(heads, "t", tmp_path / "h.png")  # NaN cells left blank, no placeholder
    panels = [("q_proj", np.zeros(0), np.nan, np.nan, "non-finite weights (1 NaN, 0 Inf)"),
              ("k_proj", np.random.default_rng(0).gamma(2.0, size=200), 3.0, 1.0, "ok")]
    spectra_figures.esd(panels, "t", tmp_path / "esd.png")
    assert len(reasons) == 2 and (tmp_path / "h.png").exists() and (tmp_path / "esd.png").exists()



def test_a_weight_type_without_values_gets_no_panel(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(spectra_figures, "save", lambda fig, target: drawn.append(fig))
    metrics = pd.DataFrame({"layer_index": [0, 1, 0, 1], "relative_depth": [0, 0.5, 0, 0.5], "model": "m",
                            "control_of": None, "block_type": ["q_proj", "q_proj", "norm", "norm"],
                            "alpha": [3.0, 4.0, np.nan, np.nan]})  # norms: 1-D, statistics only
    spectra_figures.depth_overlay(metrics, "alpha", "t", tmp_path / "d.png")
    spectra_figures.metric_by_layer(metrics, "alpha", "t", tmp_path / "m.png")
    for fig in drawn:
        assert [ax.get_title() for ax in fig.axes if ax.axison] == ["q_proj"]

DIMS = {"model": "m", "layers": 2, "hidden": 32, "heads": 4, "kv_heads": 4, "head_dim": 8, "model_type": "mystery"}


def _report(tmp_path, metrics=EMPTY, heads=EMPTY, embedding=None, deep_dives=None):
    return model_report("m", DIMS, metrics, heads, EMPTY, EMPTY, EMPTY, EMPTY,
                        embedding if embedding is not None else {"model": "m", "matrices": {}},
                        deep_dives or {}, [str(tmp_path / "plots/alpha_by_layer.png")], str(tmp_path))


def test_report_of_empty_tables_says_what_is_missing(tmp_path):
    empty_dive = pd.DataFrame(columns=EIGENVALUE_COLUMNS)
    empty_dive.attrs["reason"] = "layer 1, head 0: the layer has no attention projections"
    text = _report(tmp_path, embedding={"model": "m", "matrices": {}, "reason": "no token embedding found: none"},
                   deep_dives={"layer_1_head_0": empty_dive})
    assert "## Missing or flagged" in text and "No matrix analysed." in text
    assert "- No matrix was measured: the metrics table is empty." in text
    assert "- No attention heads in 2 of 2 layers (layer_000, layer_001)" in text
    assert "- Deep dive layer_1_head_0 is empty: layer 1, head 0: the layer has no attention projections." in text
    assert "- Embedding: no token embedding found: none." in text
    assert "## Attention heads" not in text and "](plots/alpha_by_layer.png)" in text
    assert _report(tmp_path, heads=pd.DataFrame(columns=HEAD_COLUMNS)).count("No attention heads in 2 of 2") == 1


def test_report_lists_flagged_matrices_heads_and_embedding(tmp_path):
    metrics = pd.DataFrame({
        "matrix": ["a.q_proj", "a.k_proj", "b.q_proj", "emb"],
        "block_type": ["q_proj", "k_proj", "q_proj", "embedding"],
        "layer_index": [0, 0, 1, None], "design_rank": [8] * 4, "compute_dtype": "float32", "backend": "cpu",
        "status": ["non-finite weights (1 NaN, 0 Inf)", "ok", "non-finite weights (0 NaN, 3 Inf)", "ok"]})
    heads = pd.DataFrame({"layer_index": [0, 0], "head": [0, 1], "qk_effective_rank": [np.nan, 3.0],
                          "ov_effective_rank": [2.0, 3.0], "tag": ["", ""], "layer_tag": ["non-finite weights", ""]})
    embedding = {"model": "m", "matrices": {
        "emb": {"status": "ok", "dropped_rows": 3, "total_rows": 256, "k": 4, "knee_method": "Kneedle",
                "algorithm": "KMeans", "seed": 0, "silhouette_at_k": 0.1, "norm_mean": 1.0, "norm_median": 1.0,
                "norm_max": 2.0},
        "head": {"status": "skipped", "reason": "3 finite rows of 20: k-means up to k = 6 needs more"}}}
    text = _report(tmp_path, metrics=metrics, heads=heads, embedding=embedding)
    flagged = text[text.index("## Missing or flagged"):text.index("## Statistics by weight type")]
    assert "2 of 4 matrices have a status other than ok" in flagged
    assert "| non-finite weights |          2 |" in flagged and "a.q_proj" in flagged and "b.q_proj" in flagged
    assert "- No attention heads in 1 of 2 layers (layer_001)" in flagged
    assert "layer 0 head 0" in flagged and "layer 0 head 1" not in flagged
    assert "- Embedding emb: 3 of 256 rows have NaN or Inf values" in flagged
    assert "- Embedding head skipped: 3 finite rows of 20" in flagged
    assert "## Embedding: head\n\nSkipped: 3 finite rows of 20" in text and "## Embedding: emb\n\nk = 4" in text
    assert "status: {'non-finite weights': 2, 'ok': 2}" in text


def test_a_clean_report_says_nothing_is_missing(tmp_path):
    metrics = pd.DataFrame({"matrix": ["a"], "block_type": ["q_proj"], "status": ["ok"], "compute_dtype": "float32",
                            "backend": "cpu"})
    heads = pd.DataFrame({"layer_index": [0, 1], "head": [0, 0], "qk_effective_rank": [1.0, 2.0],
                          "ov_effective_rank": [1.0, 2.0], "tag": ["", ""]})
    embedding = {"model": "m", "matrices": {"e": {"status": "ok", "k": 2, "knee_method": "K", "algorithm": "KMeans",
                                                  "seed": 0, "silhouette_at_k": 0.5, "norm_mean": 1.0,
                                                  "norm_median": 1.0, "norm_max": 1.0, "dropped_rows": 0}}}
    text = _report(tmp_path, metrics=metrics, heads=heads, embedding=embedding)
    assert "## Missing or flagged\n\nNothing: every matrix has status ok" in text


# --- the real workflow on a flagged checkpoint and on an unknown architecture ---------------------------------

LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "tie_word_embeddings": False}


def save_checkpoint(folder: Path, tensors: dict, config: dict) -> Path:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({name: (0.02 * array).astype(np.float32) for name, array in tensors.items()},
              str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def llama_with_nan(folder: Path) -> Path:
    """A tiny llama with a NaN in layer 1's q_proj (head 0) and NaN / Inf rows in the embedding."""
    rng = np.random.default_rng(0)
    hidden, ffn, heads, kv = 64, 128, 4, 2
    d = hidden // heads
    shapes = {"model.embed_tokens.weight": (256, hidden), "lm_head.weight": (256, hidden)}
    for i in range(2):
        p = f"model.layers.{i}."
        shapes |= {p + "self_attn.q_proj.weight": (heads * d, hidden), p + "self_attn.k_proj.weight": (kv * d, hidden),
                   p + "self_attn.v_proj.weight": (kv * d, hidden), p + "self_attn.o_proj.weight": (hidden, heads * d),
                   p + "mlp.gate_proj.weight": (ffn, hidden), p + "mlp.up_proj.weight": (ffn, hidden),
                   p + "mlp.down_proj.weight": (hidden, ffn)}
    tensors = {name: rng.standard_normal(shape) for name, shape in shapes.items()}
    tensors["model.layers.1.self_attn.q_proj.weight"][3, 5] = np.nan
    tensors["model.embed_tokens.weight"][[7, 9]] = np.nan
    tensors["model.embed_tokens.weight"][11, 0] = np.inf
    return save_checkpoint(folder, tensors, LLAMA)


def unknown_architecture(folder: Path) -> Path:
    """Custom parameter names the naming rules do not know, standard config.json dimension keys."""
    rng = np.random.default_rng(1)
    tensors = {"tok.table": rng.standard_normal((128, 32))}
    for i in range(2):
        tensors |= {f"blocks.{i}.attn_in.weight": rng.standard_normal((96, 32)),
                    f"blocks.{i}.attn_out.weight": rng.standard_normal((32, 32)),
                    f"blocks.{i}.ff_a.weight": rng.standard_normal((128, 32)),
                    f"blocks.{i}.ff_b.weight": rng.standard_normal((32, 128))}
    config = {"model_type": "mystery", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
              "vocab_size": 128}
    return save_checkpoint(folder, tensors, config)


@pytest.fixture(scope="module")
def flagged_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    config = {"models": {"llama-nan": {"source": "local", "path": str(llama_with_nan(root / "llama-nan"))},
                         "mystery": {"source": "local", "path": str(unknown_architecture(root / "mystery"))}},
              "device": "cpu", "embedding": {"k_max": 6}, "headmerge": {"enabled": False},
              "compress": {"enabled": False}}
    result = run_workflow(root / "work", config)  # raises unless snakemake exits 0
    return root / "work", config, result


@pytest.mark.slow
def test_flagged_weights_reach_the_report(flagged_run):
    work, _, result = flagged_run
    assert result.returncode == 0
    out = work / "results/llama-nan"
    heads = pd.read_parquet(out / "heads/layer_001.parquet").set_index("head")
    assert np.isnan(heads.loc[0, "qk_effective_rank"]) and heads.loc[0, "tag"] == "non-finite weights"
    assert heads.loc[1:, "qk_effective_rank"].notna().all() and heads["ov_effective_rank"].notna().all()
    log = (work / "logs/llama-nan/anatomy/layer_001.log").read_text()
    assert "non-finite weights: QK metrics NaN for heads [0]" in log
    summary = json.loads((out / "embedding/summary.json").read_text())["matrices"]["model.embed_tokens.weight"]
    assert summary["status"] == "ok" and summary["dropped_rows"] == 3 and summary["finite_rows"] == 253
    assert len(pd.read_parquet(out / "heads/deep_dive/layer_1_head_0.parquet")) == 0  # head 0's q is NaN
    assert (out / "heads/deep_dive/layer_1_head_0.png").exists() and (out / "plots/heads_heatmap.png").exists()
    report = (out / "report.md").read_text()
    flagged = report[report.index("## Missing or flagged"):report.index("## Statistics by weight type")]
    assert "2 of 16 matrices have a status other than ok" in flagged
    assert "model.layers.1.self_attn.q_proj.weight" in flagged and "model.embed_tokens.weight" in flagged
    assert "layer 1 head 0" in flagged and "3 of 256 rows have NaN or Inf values" in flagged
    assert "Deep dive layer_1_head_0 is empty: layer 1, head 0: head 0's QK kernel has non-finite factors" in flagged


@pytest.mark.slow
def test_an_unknown_architecture_is_measured_and_reported(flagged_run):
    work, _, _ = flagged_run
    out = work / "results/mystery"
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert len(metrics) == 9 and set(metrics["block_type"]) == {"other"}  # measured, though not recognised
    for unit in ("layer_000", "layer_001"):
        assert len(pd.read_parquet(out / f"heads/{unit}.parquet")) == 0
    assert json.loads((out / "embedding/summary.json").read_text())["reason"].startswith("no token embedding found")
    for png in ("embedding/elbow.png", "embedding/pca.png", "plots/heads_heatmap.png",
                "heads/deep_dive/layer_1_head_0.png", "plots/alpha_by_layer.png"):
        assert (out / png).stat().st_size > 1000, png
    log = (work / "logs/mystery/heads/deep_dive_layer_1_head_0.log").read_text()
    assert "empty deep-dive table: the layer has no attention projections" in log
    report = (out / "report.md").read_text()
    assert "- No attention heads in 2 of 2 layers (layer_000, layer_001)" in report
    assert "- Embedding: no token embedding found" in report and "Deep dive layer_1_head_0 is empty" in report


@pytest.mark.slow
def test_a_deep_dive_the_user_set_on_no_head_is_one_line_error(flagged_run, tmp_path):
    work, config, _ = flagged_run
    clone = tmp_path / "work"
    shutil.copytree(work, clone, symlinks=True)
    config = {**config, "heads": {"deep_dive": [[0, 0]]}}
    result = run_workflow(clone, config, "results/mystery/heads/deep_dive/layer_0_head_0.parquet", check=False)
    assert result.returncode != 0
    assert ("ERROR [mystery] config.yaml: no head 0 in layer 0: the layer has no attention projections (q, k, v, o) "
            "that the naming rules recognise. Fix: fix heads.deep_dive.") in result.stdout + result.stderr


def test_the_inventorys_warnings_are_listed_as_flagged(tmp_path):
    """A disagreement the inventory found (model.json's warnings) reaches the report's flagged section."""
    warning = "config.json sets tie_word_embeddings: true, but the checkpoint stores its own output head lm_head.weight"
    text = model_report("m", {**DIMS, "warnings": [warning]}, EMPTY, EMPTY, EMPTY, EMPTY, EMPTY, EMPTY,
                        {"model": "m", "matrices": {}}, {}, [], str(tmp_path))
    flagged = text[text.index("## Missing or flagged"):]
    assert f"- {warning}." in flagged
    assert "Nothing: every matrix" not in flagged
