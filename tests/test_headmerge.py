"""Head merging: similarity measures, GQA merge semantics, merged models that run, evaluation."""

import numpy as np
import pytest

from blockscope import layout
from blockscope.analysis.heads import AttentionWeights
from blockscope.checkpoint.attention_layout import projection_names, read_projections, write_projections
from blockscope.config.validation import validate_config
from blockscope.errors import BlockscopeError
from blockscope.evaluation import head_merge as hm

from conftest import ROOT

WIKITEXT = ROOT.parent / "shared/data/wikitext-2-raw/wiki.test.raw"


def random_weights(heads=4, kv=2, d=4, hidden=16, seed=0):
    rng = np.random.default_rng(seed)
    return AttentionWeights(rng.standard_normal((heads * d, hidden)), rng.standard_normal((kv * d, hidden)),
                            rng.standard_normal((kv * d, hidden)), rng.standard_normal((hidden, heads * d)),
                            heads, kv, d)


def test_kernel_similarities_equal_dense_cosines_and_are_invariant():
    w = random_weights()
    sims = hm.similarities(w)
    dense = [w.qk[h].dense().ravel() for h in range(4)]
    for i in range(4):
        for j in range(4):
            cos = dense[i] @ dense[j] / np.linalg.norm(dense[i]) / np.linalg.norm(dense[j])
            assert sims["qk"][i, j] == pytest.approx(cos, abs=1e-9)
    # reparameterise head 0's query/key pair (W_Q -> M W_Q, W_K -> M^-T W_K): its function stays
    rng = np.random.default_rng(1)
    m = rng.standard_normal((4, 4)) + 4 * np.eye(4)
    q, k = w.q.copy(), w.k.copy()
    q[0:4] = m @ q[0:4]
    k[0:4] = np.linalg.inv(m).T @ k[0:4]  # kv head 0 serves query heads 0 and 1: apply to both queries
    q[4:8] = m @ q[4:8]
    moved = AttentionWeights(q, k, w.v, w.o, 4, 2, 4)
    assert np.allclose(hm.similarities(moved)["qk"], sims["qk"], atol=1e-9)
    assert not np.allclose(hm.similarities(moved)["wq"], sims["wq"], atol=1e-3)


def test_pairs_components_and_random_controls():
    sim = np.eye(5)
    sim[0, 1] = sim[1, 0] = 0.95
    sim[1, 3] = sim[3, 1] = 0.92
    pairs = hm.pairs_above(sim, 0.9)
    assert [p[:2] for p in pairs] == [[0, 1], [1, 3]]
    assert hm.components(5, pairs) == [[0, 1, 3]]
    assert hm.pairs_above(sim, 0.99) == [] and hm.components(5, []) == []
    rng = np.random.default_rng(0)
    random = hm.random_pairs(5, 2, rng)
    assert len(random) == 2 and len({tuple(p[:2]) for p in random}) == 2


def test_gqa_merge_semantics():
    w = random_weights(heads=4, kv=2, d=2, hidden=6)
    arrays = {"q": w.q, "k": w.k, "v": w.v, "o": w.o, "q_bias": None, "k_bias": None, "v_bias": None}
    rows = lambda h: slice(2 * h, 2 * h + 2)  # noqa: E731
    # heads 0 and 1 share K/V head 0: Q and O merge, K/V are untouched
    same = hm.merge_groups(arrays, [[0, 1]], 4, 2, 2)
    assert np.allclose(same["q"][rows(0)], (w.q[rows(0)] + w.q[rows(1)]) / 2)
    assert np.array_equal(same["q"][rows(0)], same["q"][rows(1)])
    assert np.allclose(same["o"][:, rows(1)], (w.o[:, rows(0)] + w.o[:, rows(1)]) / 2)
    assert np.array_equal(same["k"], w.k) and np.array_equal(same["v"], w.v)
    # heads 1 and 2 read different K/V heads whose other readers (0, 3) stay out: K/V untouched
    split = hm.merge_groups(arrays, [[1, 2]], 4, 2, 2)
    assert np.array_equal(split["k"], w.k) and np.array_equal(split["q"][rows(0)], w.q[rows(0)])
    # all four heads: both K/V groups lie inside, so K and V are averaged too
    whole = hm.merge_groups(arrays, [[0, 1, 2, 3]], 4, 2, 2)
    assert np.allclose(whole["k"][rows(0)], (w.k[rows(0)] + w.k[rows(1)]) / 2)
    assert np.array_equal(whole["v"][rows(0)], whole["v"][rows(1)])


def _tiny_llama(kv_heads):
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=kv_heads, vocab_size=100)
    return transformers.LlamaForCausalLM(config).eval()


def _layer_arrays(model, layer):
    import pandas as pd

    from blockscope.checkpoint.block_types import block_type

    state = {n: p.detach().numpy() for n, p in model.state_dict().items()}
    prefix = f"model.layers.{layer}.self_attn."
    inventory = pd.DataFrame([{"param_name": n, "block_type": block_type(n), "shape": list(a.shape), "layout": "out_in"}
                              for n, a in state.items() if n.startswith(prefix)])
    names = projection_names(inventory)
    return names, read_projections(state, names,
                                   {"heads": 4, "kv_heads": model.config.num_key_value_heads, "head_dim": 8})


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_merged_model_saves_loads_and_runs_in_transformers(tmp_path, kv_heads):
    import torch
    import transformers
    from safetensors.torch import save_file

    model = _tiny_llama(kv_heads)
    dims = {"heads": 4, "kv_heads": kv_heads, "head_dim": 8}
    names, arrays = _layer_arrays(model, 1)
    merged = hm.merge_groups(arrays, [[0, 1]], 4, kv_heads, 8)
    state = {n: p.detach().clone() for n, p in model.state_dict().items()}
    for name, array in write_projections(merged, names, dims).items():
        state[name] = torch.from_numpy(np.ascontiguousarray(array))
    save_file({n: t.contiguous() for n, t in state.items()}, tmp_path / "model.safetensors")
    model.config.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    q = reloaded.model.layers[1].self_attn.q_proj.weight.detach().numpy()
    assert np.array_equal(q[0:8], q[8:16]) and reloaded.config.num_attention_heads == 4
    with torch.no_grad():
        logits = reloaded(torch.tensor([[1, 2, 3, 4]])).logits
    assert torch.isfinite(logits).all()


def test_merging_identical_heads_leaves_the_function_unchanged():
    """Two heads with the same Q, K, V, O: averaging them is a no-op on the output."""
    import torch

    model = _tiny_llama(4)
    attn = model.model.layers[0].self_attn
    with torch.no_grad():
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            proj.weight[8:16] = proj.weight[0:8]
        attn.o_proj.weight[:, 8:16] = attn.o_proj.weight[:, 0:8]
        before = model(torch.tensor([[5, 6, 7, 8, 9]])).logits
    names, arrays = _layer_arrays(model, 0)
    sims = hm.similarities(AttentionWeights(arrays["q"], arrays["k"], arrays["v"], arrays["o"], 4, 4, 8))
    assert sims["qk"][0, 1] == pytest.approx(1.0) and sims["ov"][0, 1] == pytest.approx(1.0)
    merged = hm.merge_groups(arrays, hm.components(4, hm.pairs_above(sims["qk"], 0.999)), 4, 4, 8)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, array in write_projections(merged, names, {"heads": 4, "kv_heads": 4, "head_dim": 8}).items():
            params[name].copy_(torch.from_numpy(np.ascontiguousarray(array)))
        after = model(torch.tensor([[5, 6, 7, 8, 9]])).logits
    assert torch.allclose(before, after, atol=1e-5)


def test_evaluator_matches_transformers_loss_and_self_kl_is_zero():
    import torch

    from blockscope.evaluation.corpus import windows
    from blockscope.evaluation.forward import Evaluator
    from blockscope.evaluation.scores import perplexity_change_ci

    model = _tiny_llama(2)
    ids = np.random.default_rng(0).integers(0, 100, 200)
    batches = windows(ids, 32, 128)
    assert batches.shape == (4, 32)
    evaluator = Evaluator(batches, batch_size=3)
    base = evaluator.score(model, base=True)
    with torch.no_grad():
        losses = [model(torch.tensor(w[None]), labels=torch.tensor(w[None])).loss.item() for w in batches]
    assert base.summary()["perplexity"] == pytest.approx(np.exp(np.mean(losses)), rel=1e-5)
    again = evaluator.score(model)
    assert again.summary()["kl_divergence"] == pytest.approx(0.0, abs=1e-6)
    assert again.summary()["top1_agreement"] == 1.0
    assert perplexity_change_ci(base, again, samples=200) == pytest.approx((0.0, 0.0), abs=1e-9)
    with pytest.raises(BlockscopeError, match="fewer than one window"):
        windows(ids[:20], 32, None, model="tiny")


def test_wikitext_rows_are_joined_the_gptq_way():
    from blockscope.evaluation.corpus import corpus_text, raw_file_rows

    if not WIKITEXT.exists():
        pytest.skip("shared WikiText-2 copy not present")
    rows = raw_file_rows(WIKITEXT)
    assert len(rows) == 2891 and all(r.endswith("\n") and "\r" not in r for r in rows)
    assert corpus_text(rows).startswith(" = Robert Boulter = \n\n\n Robert Boulter is")


@pytest.mark.parametrize("threshold", [-1.0, 1.5])
def test_thresholds_outside_the_cosine_range_are_refused(threshold):
    with pytest.raises(BlockscopeError, match="headmerge.thresholds.0"):
        validate_config({"models": {"a": {"source": "hf", "repo_id": "x/y"}}, "headmerge": {"thresholds": [threshold]}},
                        ROOT / "schemas" / "config.schema.yaml")


# --- the sweep on a live model: a tiny real Llama, a synthetic token stream, no corpus -----------


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """(model, slots, evaluator, base): the checkpoint read the workflow's way, scored on random ids."""
    from blockscope.checkpoint.inventory import build_inventory, model_dims, read_config
    from blockscope.evaluation.corpus import windows
    from blockscope.evaluation.forward import Evaluator
    from blockscope.evaluation.head_merge_sweep import layer_slots

    from conftest import TINY_LLAMA, save_tiny

    folder = tmp_path_factory.mktemp("tiny-llama")
    model = save_tiny("LlamaForCausalLM", TINY_LLAMA, folder).eval()
    inventory = build_inventory(folder)
    dims = model_dims(read_config(folder), inventory)
    ids = np.random.default_rng(0).integers(0, TINY_LLAMA["vocab_size"], 4 * 16)
    evaluator = Evaluator(windows(ids, 16, None), batch_size=2)
    base = evaluator.score(model, base=True)
    return model, layer_slots(model, inventory, dims, "tiny"), evaluator, base


def _parameters(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_headmerge_layers_restricts_the_slots_to_those_layers(live, tmp_path):
    from blockscope.checkpoint.inventory import build_inventory, model_dims, read_config
    from blockscope.errors import BlockscopeError
    from blockscope.evaluation.head_merge_sweep import layer_slots

    from conftest import TINY_LLAMA, save_tiny

    model, *_ = live
    save_tiny("LlamaForCausalLM", TINY_LLAMA, tmp_path)
    inventory = build_inventory(tmp_path)
    dims = model_dims(read_config(tmp_path), inventory)
    assert sorted(layer_slots(model, inventory, dims, "tiny", layers=[1])) == [1]
    with pytest.raises(BlockscopeError, match=r"no layer with attention projections among headmerge.layers \[7\]"):
        layer_slots(model, inventory, dims, "tiny", layers=[7])


def test_layer_slots_apply_then_restore_is_bit_identical(live):
    import torch

    model, slots, *_ = live
    before = _parameters(model)
    assert sorted(slots) == [0, 1] and slots[1].heads == 4
    slots[1].apply([[0, 1, 2, 3]])
    q = model.model.layers[1].self_attn.q_proj.weight.detach().numpy()
    assert all(np.array_equal(q[0:16], q[16 * h:16 * (h + 1)]) for h in range(1, 4))  # merged q slices are equal
    assert not torch.equal(before["model.layers.1.self_attn.k_proj.weight"],
                           model.model.layers[1].self_attn.k_proj.weight)  # whole K/V groups merge too
    slots[1].restore()
    after = _parameters(model)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_merged_heads_share_their_q_slices_and_others_stay(live):
    model, slots, *_ = live
    slots[0].apply([[0, 2]])
    try:
        q = model.model.layers[0].self_attn.q_proj.weight.detach().numpy()
        original = slots[0].arrays["q"]
        assert np.array_equal(q[0:16], q[32:48])
        assert np.array_equal(q[16:32], original[16:32]) and np.array_equal(q[48:64], original[48:64])
    finally:
        slots[0].restore()


def test_a_threshold_above_every_similarity_leaves_the_model_unchanged(live):
    from blockscope.evaluation.head_merge_sweep import evaluate_plan, layer_similarities, threshold_result

    model, slots, evaluator, base = live
    before = _parameters(model)
    sims = layer_similarities(slots)
    result = threshold_result(evaluator, model, slots, sims, base, 1.0, "qk", 1, 50)
    assert result["total_merged_pairs"] == 0 and result["merged_metrics"] == result["original_metrics"]
    assert result["kl_divergence"] == 0.0 and result["perplexity_change_ci95"] == [0.0, 0.0]
    # an empty plan, scored for real: the base model again, KL 0
    again = evaluate_plan(evaluator, model, slots, {}).summary()
    assert again["perplexity"] == pytest.approx(base.summary()["perplexity"], rel=1e-6)
    assert again["kl_divergence"] == pytest.approx(0.0, abs=1e-6)
    assert all(np.array_equal(before[n].numpy(), p.detach().numpy()) for n, p in model.named_parameters())


def test_random_control_plans_have_the_same_pairs_per_layer():
    from blockscope.evaluation.head_merge_sweep import random_pairs_like

    pairs = {0: [[0, 1, 0.9], [2, 3, 0.8]], 1: [], 2: [[1, 5, 0.95]]}
    for seed in range(3):
        control = random_pairs_like(pairs, 6, np.random.default_rng(seed))
        assert {layer: len(p) for layer, p in control.items()} == {0: 2, 2: 1}
        assert all(0 <= i < j < 6 for p in control.values() for i, j, _ in p)


SWEEP_KEYS = {"threshold", "original_metrics", "merged_metrics", "total_merged_pairs", "layer_results", "similarity",
              "tokens_evaluated", "kl_divergence", "top1_agreement", "perplexity_change_ci95", "random_control"}


def test_the_sweep_returns_one_documented_result_per_threshold(live):
    import torch

    from blockscope.evaluation.head_merge_sweep import summary_row, sweep

    model, slots, evaluator, base = live
    before = _parameters(model)
    results = list(sweep(evaluator, model, slots, base, [-0.5, 1.0], "qk", random_seeds=2, bootstrap=50))
    assert [r["threshold"] for r in results] == [-0.5, 1.0]
    low, high = results
    assert set(low) == SWEEP_KEYS and set(low["layer_results"]) == {"0", "1"}
    assert low["total_merged_pairs"] == 2 * 6 and low["layer_results"]["0"]["groups"] == [[0, 1, 2, 3]]
    assert low["kl_divergence"] > 0 and low["tokens_evaluated"] == 4 * 15
    low_ci, high_ci = low["perplexity_change_ci95"]
    assert len(low["random_control"]["runs"]) == 2 and low_ci <= high_ci
    assert high["total_merged_pairs"] == 0 and high["original_metrics"] == low["original_metrics"]
    row = summary_row("tiny", low)
    assert row["merged_pairs"] == 12 and row["pairs_layer_0"] == row["pairs_layer_1"] == 6
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # the sweep restores


def test_similarity_table_round_trips():
    w = random_weights()
    sims = {3: hm.similarities(w), 7: hm.similarities(random_weights(seed=1))}
    table = hm.similarity_table(sims)
    assert list(table.columns) == layout.SIMILARITY_COLUMNS and len(table) == 2 * 3 * 16
    back = hm.similarity_matrices(table)
    assert all(np.array_equal(back[layer][m], sims[layer][m]) for layer in sims for m in hm.MEASURES)
    assert hm.similarity_table({}).empty


def test_head_merging_is_skipped_without_a_tokenizer_or_causal_head(tmp_path):
    from blockscope.checkpoint.sources import fetch
    from blockscope.evaluation.loading import skip_reason

    from conftest import TINY_LLAMA

    bare = tmp_path / "bare"
    fetch("bare", {"source": "synthetic", "config": TINY_LLAMA, "seed": 0}, bare)  # a bare config: no tokenizer
    causal = {"architectures": ["LlamaForCausalLM"]}
    reason = skip_reason(causal, bare)
    assert reason.startswith("no tokenizer in the checkpoint") and "like:" in reason
    (bare / "tokenizer.json").write_text("{}")
    assert skip_reason(causal, bare) is None
    assert skip_reason({"architectures": ["BertForMaskedLM"]}, bare).startswith("not a causal LM (BertForMaskedLM)")
