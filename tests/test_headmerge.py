"""Head merging: similarity measures, GQA merge semantics, merged models that run, evaluation."""

import itertools

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


def heads_left_after_merging(groups, heads, seed=0):
    """Independently of heads_removed: merge random weights by these groups (MHA) and count the
    distinct Q slices left; heads minus that is the heads the merge removed."""
    d, hidden = 2, 5
    rng = np.random.default_rng(seed)
    arrays = {"q": rng.standard_normal((heads * d, hidden)), "k": rng.standard_normal((heads * d, hidden)),
              "v": rng.standard_normal((heads * d, hidden)), "o": rng.standard_normal((hidden, heads * d))}
    q = hm.merge_groups(arrays, groups, heads, heads, d)["q"]
    return len({q[h * d:(h + 1) * d].tobytes() for h in range(heads)})


def test_relabelled_controls_remove_as_many_heads_per_layer_as_the_plan():
    # a 4-clique: its 6 pairs merge heads 0, 2, 5, 7 of 9 into one, removing 3; another layer merges a pair
    clique = [[a, b, 0.9] for a, b in itertools.combinations([0, 2, 5, 7], 2)]
    plan = {0: hm.components(9, clique), 3: hm.components(9, [[1, 4, 0.95]])}
    assert plan[0] == [[0, 2, 5, 7]] and 9 - heads_left_after_merging(plan[0], 9) == 3
    controls = hm.relabelled_controls(plan, 9, 5, seed=0)
    assert len(controls) == 5
    assert len({hm.plan_key(c) for c in controls} | {hm.plan_key(plan)}) == 6  # distinct, none is the plan
    for control in controls:
        assert sorted(control) == [0, 3]
        assert [9 - heads_left_after_merging(control[layer], 9) for layer in (0, 3)] == [3, 1]
        assert [sorted(map(len, control[layer])) for layer in (0, 3)] == [[4], [2]]
        assert all(0 <= h < 9 for groups in control.values() for g in groups for h in g)
    assert hm.relabelled_controls(plan, 9, 5, seed=0) == controls  # seeded
    # what the old control did instead: as many random pairs (6) among the 9 heads remove ~5.7
    rng = np.random.default_rng(0)
    pairs = np.array(list(itertools.combinations(range(9), 2)))
    removed = [9 - heads_left_after_merging(hm.components(9, pairs[rng.choice(len(pairs), 6, replace=False)]), 9)
               for _ in range(300)]
    assert 5.4 < np.mean(removed) < 6.0


@pytest.mark.parametrize("groups, heads", [([[0, 1]], 3), ([[0, 1, 2]], 5), ([[0, 1], [2, 3]], 5),
                                           ([[0, 1], [2, 3, 4]], 6), ([[0, 1, 2]], 3), ([[0, 3], [1, 2]], 4)])
def test_distinct_relabellings_match_enumeration(groups, heads):
    every = {tuple(tuple(g) for g in hm.relabel(groups, p)) for p in itertools.permutations(range(heads))}
    assert hm.distinct_relabellings(groups, heads) == len(every)
    plan = {0: groups, 1: groups}
    assert hm.possible_controls(plan, heads) == len(every) ** 2 - 1


def test_fewer_controls_when_fewer_relabellings_exist():
    # a pair among 3 heads: 3 relabellings, one of them the plan itself, so 2 controls at most
    controls = hm.relabelled_controls({0: [[0, 1]]}, 3, 5)
    assert sorted(c[0] for c in controls) == [[[0, 2]], [[1, 2]]]
    assert hm.relabelled_controls({0: [[0, 1, 2]]}, 3, 5) == []  # every head in one group: no other labelling
    assert hm.relabelled_controls({}, 3, 5) == []  # nothing merged: no control
    from blockscope.evaluation.head_merge_sweep import control_summary

    summary = control_summary([{"perplexity": 10.0, "accuracy": 0.5}, {"perplexity": 12.0, "accuracy": 0.3}], 5, 2)
    assert summary["distinct"] == 2
    assert summary["fewer"] == "2 of 5: only 2 distinct relabellings other than the plan exist"
    assert (summary["perplexity_min"], summary["perplexity_max"], summary["perplexity_mean"]) == (10.0, 12.0, 11.0)


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


def counting(evaluator):
    """The same evaluator (a real one), counting the variants it scores: one forward pass over the windows each."""
    from blockscope.evaluation.forward import Evaluator

    class Counting(Evaluator):
        passes = 0

        def score(self, model, base=False):
            self.passes += 1
            return super().score(model, base)

    return Counting.of(evaluator.base, batch_size=evaluator.batch_size)


def test_a_threshold_above_every_similarity_leaves_the_model_unchanged(live):
    from blockscope.evaluation.head_merge_sweep import PlanScorer, evaluate_plan, layer_similarities, threshold_result

    model, slots, evaluator, base = live
    before = _parameters(model)
    sims = layer_similarities(slots)
    counted = counting(evaluator)
    run = threshold_result(PlanScorer(counted, model, slots, base), sims, 4, base, 1.0, "qk", 3, 50)
    result = run.result
    assert result["total_merged_pairs"] == 0 and result["heads_removed"] == 0
    assert result["merged_metrics"] == result["original_metrics"]
    assert result["kl_divergence"] == 0.0 and result["perplexity_change_ci95"] == [0.0, 0.0]
    assert counted.passes == 0 and run.controls == [] and result["random_control"]["distinct"] == 0  # nothing scored
    # an empty plan, scored for real: the base model again, KL 0
    again = evaluate_plan(evaluator, model, slots, {}).summary()
    assert again["perplexity"] == pytest.approx(base.summary()["perplexity"], rel=1e-6)
    assert again["kl_divergence"] == pytest.approx(0.0, abs=1e-6)
    assert all(np.array_equal(before[n].numpy(), p.detach().numpy()) for n, p in model.named_parameters())


def one_pair_thresholds(sims, measure="qk"):
    """Two thresholds between the largest and the second largest similarity: both merge that one pair."""
    values = np.sort(np.concatenate([hm.upper_triangle(s[measure]) for s in sims.values()]))
    second, top = values[-2], values[-1]
    return [float(second + (top - second) / 3), float(second + 2 * (top - second) / 3)]


def test_identical_plans_are_scored_once(live):
    from blockscope.evaluation.head_merge_sweep import layer_similarities, sweep

    model, slots, evaluator, base = live
    sims = layer_similarities(slots)
    counted = counting(evaluator)
    runs = list(sweep(counted, model, slots, base, [*one_pair_thresholds(sims), 1.0], "qk", random_seeds=2,
                      bootstrap=50, sims=sims))
    assert [r.result["heads_removed"] for r in runs] == [1, 1, 0]
    assert [r.result["random_control"]["distinct"] for r in runs] == [2, 2, 0]
    # the plan and its two controls, each once: the second threshold merges the same pair, the third nothing
    assert counted.passes == 3
    assert runs[1].merged is runs[0].merged and all(a is b for a, b in zip(runs[1].controls, runs[0].controls))
    layer = next(k for k, r in runs[0].result["layer_results"].items() if r["num_pairs"])
    for control in runs[0].result["random_control"]["runs"]:  # one pair in the plan's layer, another pair
        assert list(control["groups"]) == [layer] and len(control["groups"][layer]) == 1
        assert control["groups"][layer] != runs[0].result["layer_results"][layer]["groups"]


SWEEP_KEYS = {"threshold", "original_metrics", "merged_metrics", "total_merged_pairs", "heads_removed", "layer_results",
              "similarity", "tokens_evaluated", "kl_divergence", "top1_agreement", "perplexity_change_ci95",
              "random_control", "metric"}


def test_the_sweep_returns_one_documented_result_per_threshold(live):
    import torch

    from blockscope.evaluation.head_merge_sweep import summary_row, sweep

    model, slots, evaluator, base = live
    before = _parameters(model)
    runs = list(sweep(evaluator, model, slots, base, [-0.5, 1.0], "qk", random_seeds=2, bootstrap=50))
    assert [r.result["threshold"] for r in runs] == [-0.5, 1.0]
    low, high = (r.result for r in runs)
    assert set(low) == SWEEP_KEYS and set(low["layer_results"]) == {"0", "1"} and low["metric"] == "nll"
    assert low["total_merged_pairs"] == 2 * 6 and low["layer_results"]["0"]["groups"] == [[0, 1, 2, 3]]
    assert low["heads_removed"] == 2 * 3 and low["layer_results"]["1"]["heads_removed"] == 3
    assert low["kl_divergence"] > 0 and low["tokens_evaluated"] == 4 * 15
    low_ci, high_ci = low["perplexity_change_ci95"]
    assert low_ci <= high_ci
    # every head of a layer in one group: no other relabelling exists, so no control, and it says so
    assert low["random_control"]["distinct"] == 0 and runs[0].controls == []
    assert low["random_control"]["fewer"] == "0 of 2: only 0 distinct relabellings other than the plan exist"
    assert high["total_merged_pairs"] == 0 and high["original_metrics"] == low["original_metrics"]
    row = summary_row("tiny", low)
    assert row["merged_pairs"] == 12 and row["heads_removed"] == 6 and row["pairs_layer_0"] == row["pairs_layer_1"] == 6
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # the sweep restores


def random_interval(d, plan_means, level=0.95):
    """By hand, against the expected random plan: the windows' part var(d) / n plus the plans' part
    var(plan means) / k, Welch-Satterthwaite degrees of freedom."""
    from scipy import stats

    d, m = np.asarray(d, dtype=float), np.asarray(plan_means, dtype=float)
    a, b = d.var(ddof=1) / len(d), m.var(ddof=1) / len(m)
    df = (a + b) ** 2 / (a * a / (len(d) - 1) + b * b / (len(m) - 1))
    half = stats.t.ppf((1 + level) / 2, df) * np.sqrt(a + b)
    return d.mean(), d.mean() - half, d.mean() + half


def t_interval(d, level=0.95):
    """By hand: mean, and mean -+ t_{(1+level)/2, n-1} sd / sqrt(n)."""
    from scipy import stats

    d = np.asarray(d, dtype=float)
    half = stats.t.ppf((1 + level) / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return d.mean(), d.mean() - half, d.mean() + half


def test_comparisons_and_halves_match_a_hand_computation(live):
    from blockscope.evaluation.head_merge_sweep import layer_similarities, sweep, sweep_tables

    model, slots, evaluator, base = live
    sims = layer_similarities(slots)
    threshold = one_pair_thresholds(sims)[0]
    runs = list(sweep(evaluator, model, slots, base, [threshold, 1.0], "qk", random_seeds=3, bootstrap=50, sims=sims))
    summary, comparisons = sweep_tables("tiny", runs, base, 0.95, 0.002)
    per_window = lambda s: np.asarray(s.nll) / np.asarray(s.tokens)  # noqa: E731
    merged, controls = runs[0].merged, runs[0].controls
    vs_base = per_window(merged) - per_window(base)
    vs_random = per_window(merged) - np.mean([per_window(c) for c in controls], axis=0)
    assert list(comparisons.columns) == layout.COMPARISON_COLUMNS
    assert list(zip(comparisons["plan"], comparisons["against"])) == [
        (f"threshold_{threshold}", "base"), (f"threshold_{threshold}", "random"), ("threshold_1.0", "base")]
    rows = comparisons.to_dict("records")
    assert (rows[0]["estimate"], rows[0]["ci_low"], rows[0]["ci_high"]) == pytest.approx(t_interval(vs_base))
    assert (rows[1]["estimate"], rows[1]["ci_low"], rows[1]["ci_high"]) == pytest.approx(
        random_interval(vs_random, [per_window(c).mean() for c in controls]))
    assert rows[0]["windows"] == 4 and rows[0]["tokens"] == 4 * 15 and rows[0]["experiment"] == "headmerge"
    mean_nll = lambda s: sum(s.nll) / sum(s.tokens)  # noqa: E731
    assert rows[1]["p_value"] == (1 + sum(mean_nll(c) <= mean_nll(merged) for c in controls)) / 4
    assert rows[1]["n_random"] == 3 and rows[1]["against_plan"] == "mean of 3 random plans"
    assert rows[2]["estimate"] == 0.0 and rows[2]["verdict"] == "no detectable difference"
    # the headline is chosen on the even windows and reported on the odd ones alone
    first = summary.iloc[0]
    assert first["select_ci_high"] == pytest.approx(t_interval(vs_base[0::2])[2])
    assert (first["heldout_nll_change"], first["heldout_ci_low"], first["heldout_ci_high"]) == pytest.approx(
        t_interval(vs_base[1::2]))
    assert (first["heldout_vs_random"], first["heldout_vs_random_low"], first["heldout_vs_random_high"]) == \
        pytest.approx(random_interval(vs_random[1::2], [per_window(c)[1::2].mean() for c in controls]))
    held = [window_nll / tokens for window_nll, tokens in zip(merged.nll[1::2], merged.tokens[1::2])]
    held_controls = [np.sum(c.nll[1::2]) / np.sum(c.tokens[1::2]) for c in controls]
    assert first["heldout_p_value"] == (1 + sum(v <= np.mean(held) for v in held_controls)) / 4
    assert first["heldout_windows"] == 2 and first["heldout_tokens"] == 2 * 15
    assert hm.headline_index(summary, 100.0) == 0  # a tolerance of 100x: the only merge is chosen
    strict = hm.headline_index(summary, 0.0)  # a threshold that merges nothing is never the headline
    assert strict == (0 if t_interval(vs_base[0::2])[2] <= 0 else None)


def test_window_subsets_and_articles_of_a_half():
    from blockscope.evaluation.base_artifact import BaseEvaluation
    from blockscope.evaluation.head_merge_sweep import articles_of, window_halves, window_subset
    from blockscope.evaluation.scores import WindowScores

    scores = WindowScores(nll=[1.0, 2.0, 3.0, 4.0, 5.0], correct=[1, 0, 1, 0, 1], tokens=[10] * 5,
                          kl=[0.1, 0.2, 0.3, 0.4, 0.5], agree=[9, 8, 7, 6, 5])
    halves = window_halves(5)
    assert list(halves["even"]) == [0, 2, 4] and list(halves["odd"]) == [1, 3]
    odd = window_subset(scores, halves["odd"])
    assert (odd.nll, odd.correct, odd.tokens, odd.kl, odd.agree) == ([2.0, 4.0], [0, 0], [10, 10], [0.2, 0.4], [8, 6])
    assert window_subset(WindowScores(nll=[1.0, 2.0], correct=[1, 1], tokens=[3, 3]), [1]).kl == []
    base = BaseEvaluation(nll=scores.nll, correct=scores.correct, tokens=scores.tokens,
                          settings={"window_articles": [[0, 0], [0, 1], [1, 1], [2, 3], [3, 3]]})
    assert articles_of(base, halves["odd"]) == 4 and articles_of(base, halves["even"]) == 3  # {0..3}, {0, 1, 3}
    assert articles_of(BaseEvaluation(nll=[1.0], tokens=[1]), [0]) is None


def test_the_headline_is_chosen_on_the_selection_half_alone():
    import pandas as pd

    # A (select_*) and B (heldout_*) disagree: on A, 0.5 is above 5 %, so 0.7 (4 heads) is the largest
    # merge within it; on B, 0.5 (6 heads) would be
    summary = pd.DataFrame({"threshold": [0.5, 0.7, 0.9, 0.95, 0.99], "heads_removed": [6, 4, 4, 2, 0],
                            "select_ci_high": [0.06, 0.04, 0.01, 0.0, 0.0],
                            "heldout_ci_high": [0.02, 0.09, 0.01, 0.0, 0.0]})
    assert np.log(1.05) == pytest.approx(0.0488, abs=1e-4)
    assert hm.headline_index(summary, 0.05) == 1  # 0.7: ties with 0.9 on heads removed, the lower threshold
    on_b = summary.assign(select_ci_high=summary["heldout_ci_high"])
    assert hm.headline_index(on_b, 0.05) == 0
    assert hm.headline_index(summary, 0.001) == 3  # only upper bounds <= log(1.001): 0.95 (2 heads), not 0.99 (0)
    assert hm.headline_index(summary.iloc[4:], 0.05) is None


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
