"""Per-head kernels: factored equals dense, layouts match what transformers computes, bad input."""

import numpy as np
import pandas as pd
import pytest

from blockscope.analysis.factored import FactoredMatrix
from blockscope.analysis.heads import AttentionWeights, attention_weights, head_rows, heads_table
from blockscope.analysis.matrix_formulas import effective_rank
from blockscope.checkpoint.attention_layout import projection_names, read_projections, split_qkv, write_projections
from blockscope.errors import BlockscopeError


def _dense_checks(fm: FactoredMatrix):
    dense = fm.dense()
    sigma = np.linalg.svd(dense, compute_uv=False)[: fm.left.shape[1]]
    assert np.allclose(fm.singular_values, sigma, rtol=1e-4, atol=1e-4 * sigma[0])
    assert fm.frobenius_norm == pytest.approx(np.linalg.norm(dense), rel=1e-4)
    asym = np.linalg.norm(dense - dense.T) / np.linalg.norm(dense)
    assert fm.asymmetry() == pytest.approx(asym, rel=1e-4, abs=1e-6)
    eigs = np.linalg.eigvals(dense)
    top = eigs[np.argsort(-np.abs(eigs))][: fm.left.shape[1]]
    assert np.allclose(np.sort_complex(np.round(fm.eigenvalues, 6)), np.sort_complex(np.round(top, 6)),
                       atol=1e-4 * np.abs(top).max())


@pytest.mark.parametrize("seed", [0, 1])
def test_factored_equals_dense_on_random_factors(seed):
    rng = np.random.default_rng(seed)
    _dense_checks(FactoredMatrix(rng.standard_normal((96, 8)), rng.standard_normal((8, 96))))
    stack = FactoredMatrix(rng.standard_normal((3, 50, 4)), rng.standard_normal((3, 4, 50)))
    for i in range(3):
        _dense_checks(stack[i])
        assert np.allclose(stack.singular_values[i], stack[i].singular_values)
    pairs = FactoredMatrix(rng.standard_normal((3, 40, 4)), rng.standard_normal((3, 4, 40)))
    dense = pairs.dense().reshape(3, -1)
    assert np.allclose(pairs.gram(), dense @ dense.T, rtol=1e-9)


def test_grouped_factors_equal_repeated_factors():
    """Sharing R factors across a GQA group changes nothing but the work done."""
    rng = np.random.default_rng(2)
    left, right, groups = rng.standard_normal((6, 30, 4)), rng.standard_normal((2, 4, 30)), [0, 0, 0, 1, 1, 1]
    grouped, repeated = FactoredMatrix.grouped(left, right, groups), FactoredMatrix(left, right[groups])
    assert np.array_equal(grouped.right, repeated.right)
    assert np.allclose(grouped.singular_values, repeated.singular_values, rtol=1e-12)
    assert np.allclose(grouped[4].singular_values, repeated.singular_values[4], rtol=1e-12)
    assert np.allclose(grouped.gram(), repeated.gram(), rtol=1e-12)
    _dense_checks(grouped[5])


def test_factored_equals_dense_on_real_weights():
    """A trained head of the demo model, when the workflow has extracted it."""
    import json
    from pathlib import Path

    from blockscope import read_unit

    root = Path(__file__).resolve().parent.parent / "results/smollm2-135m"
    if not (root / "tensors/layer_003.parquet").exists():
        pytest.skip("demo model not extracted here (make run produces it)")
    dims = json.loads((root / "model.json").read_text())
    inventory = pd.read_parquet(root / "inventory.parquet", filters=[("unit", "==", "layer_003")])
    weights = attention_weights(read_unit(root / "tensors/layer_003.parquet"), inventory, dims)
    for h in (0, 5):
        _dense_checks(weights.qk[h])
        _dense_checks(weights.ov[h])


def _tiny(model_type, class_name, **extra):
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(model_type, vocab_size=64, num_hidden_layers=1, **extra)
    config._attn_implementation = "eager"
    return getattr(transformers, class_name)(config).eval()


def _inventory_of(model, prefix):
    from blockscope.checkpoint.block_types import block_type, is_conv1d

    rows = [{"param_name": n, "block_type": block_type(n), "shape": list(p.shape),
             "layout": "in_out" if is_conv1d(n, model.config.model_type) else "out_in"}
            for n, p in model.state_dict().items() if n.startswith(prefix)]
    return pd.DataFrame(rows), {n: p.detach().numpy() for n, p in model.state_dict().items()}


@pytest.mark.parametrize("model_type, class_name, extra, prefix, norm", [
    ("gpt2", "GPT2LMHeadModel", dict(n_embd=32, n_head=4), "transformer.h.0.", "ln_1"),
    ("gpt_neox", "GPTNeoXForCausalLM", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                             rotary_pct=0.0), "gpt_neox.layers.0.", "input_layernorm"),
])
def test_fused_layouts_reproduce_the_models_attention(model_type, class_name, extra, prefix, norm):
    """softmax(x W_Q,h^T W_K,h x^T / sqrt(d)) from our slices equals transformers' attention
    probabilities (biases zeroed, no rotary), head by head."""
    import torch

    model = _tiny(model_type, class_name, **extra)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(prefix) and name.endswith("bias") and ("attn" in name or "attention" in name):
                p.zero_()
    captured = {}
    layer = dict(model.named_modules())[prefix.rstrip(".")]

    def keep_input_of_attention(module, inputs, output):
        captured["x"] = output.detach().numpy()[0]

    getattr(layer, norm).register_forward_hook(keep_input_of_attention)
    out = model(torch.tensor([[3, 1, 4, 1, 5, 9]]), output_attentions=True)
    inventory, tensors = _inventory_of(model, prefix)
    dims = {"heads": 4, "kv_heads": 4, "head_dim": 8, "model_type": model_type}
    weights = attention_weights(tensors, inventory, dims)
    x = captured["x"].astype(np.float64)
    causal = np.tril(np.ones((6, 6), bool))
    for h in range(4):
        logits = x @ weights.qk[h].dense() @ x.T / np.sqrt(8)
        logits = np.where(causal, logits, -np.inf)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        assert np.allclose(probs, out.attentions[0][0, h].detach().numpy(), atol=1e-5)


def test_grouped_query_attention_maps_heads_to_kv_heads():
    model = _tiny("llama", "LlamaForCausalLM", hidden_size=32, intermediate_size=64, num_attention_heads=8,
                  num_key_value_heads=2)
    inventory, tensors = _inventory_of(model, "model.layers.0.")
    weights = attention_weights(tensors, inventory, {"heads": 8, "kv_heads": 2, "head_dim": 4})
    assert [weights.kv_head(h) for h in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]  # transformers' repeat_kv
    table = heads_table("m", "layer_000", 0, weights)
    assert len(table) == 8 and set(table["tag"]) <= {"low-rank", "high-rank", ""}
    row = head_rows(weights)[5]
    k = tensors["model.layers.0.self_attn.k_proj.weight"][4:8]
    q = tensors["model.layers.0.self_attn.q_proj.weight"][20:24]
    expected = effective_rank(np.linalg.svd(q.T @ k, compute_uv=False)[:4])
    assert row["qk_effective_rank"] == pytest.approx(expected, rel=1e-4)
    phi3 = _tiny("phi3", "Phi3ForCausalLM", hidden_size=32, intermediate_size=64, num_attention_heads=4,
                 num_key_value_heads=2, pad_token_id=0)
    inventory, tensors = _inventory_of(phi3, "model.layers.0.")
    dims = {"heads": 4, "kv_heads": 2, "head_dim": 8}
    weights = attention_weights(tensors, inventory, dims)
    fused = tensors["model.layers.0.self_attn.qkv_proj.weight"]
    assert np.array_equal(weights.k[8:16], fused[32 + 8:32 + 16]) and np.array_equal(weights.v[0:8], fused[48:56])
    names = projection_names(inventory)
    written = write_projections(read_projections(tensors, names, dims), names, dims)
    assert np.array_equal(written["model.layers.0.self_attn.qkv_proj.weight"], fused)


def test_no_attention_and_bad_head_counts():
    inventory = pd.DataFrame({"param_name": ["mlp.up_proj.weight"], "block_type": ["up_proj"], "shape": [[8, 4]],
                              "layout": ["out_in"]})
    dims = {"heads": 2, "kv_heads": 2, "head_dim": 2}
    weights = attention_weights({"mlp.up_proj.weight": np.ones((8, 4))}, inventory, dims)
    assert weights is None
    assert len(heads_table("m", "layer_000", 0, None)) == 0
    model = _tiny("llama", "LlamaForCausalLM", hidden_size=32, intermediate_size=64, num_attention_heads=4,
                  num_key_value_heads=2)
    inventory, tensors = _inventory_of(model, "model.layers.0.")
    with pytest.raises(BlockscopeError, match=r"\[bad\].*q projection has 32 outputs, not 6 heads"):
        attention_weights(tensors, inventory, {"heads": 6, "kv_heads": 2, "head_dim": 8}, model="bad")
    with pytest.raises(BlockscopeError, match=r"\[bad\] config.json: fused qkv has 10 rows, expected 12.*Fix: check"):
        split_qkv(np.ones((10, 4)), {"heads": 2, "kv_heads": 1, "head_dim": 3}, model="bad")
    with pytest.raises(BlockscopeError, match="3 query heads do not divide into 2"):
        attention_weights(tensors, inventory, {"heads": 3, "kv_heads": 2, "head_dim": 8}, model="bad")


def test_rank_deficient_factors_fall_back_to_qr():
    rng = np.random.default_rng(3)
    left = rng.standard_normal((60, 6))
    left[:, 2] = 0.0  # a dead head dimension: the Gram matrix is singular
    _dense_checks(FactoredMatrix(left, rng.standard_normal((6, 60))))


def test_quartile_tags_mark_the_lowest_and_highest_quarters():
    """A realistic layer (8 heads of different ranks): both tags present, the middle half untagged."""
    rng = np.random.default_rng(4)
    heads, kv, d, hidden = 8, 2, 8, 48
    # Head h's query is rank h + 1 within its d rows: effective ranks spread across the heads.
    q = np.concatenate([rng.standard_normal((d, h + 1)) @ rng.standard_normal((h + 1, hidden)) for h in range(heads)])
    o = np.concatenate([rng.standard_normal((hidden, h + 1)) @ rng.standard_normal((h + 1, d))
                        for h in range(heads)], axis=1)
    weights = AttentionWeights(q, rng.standard_normal((kv * d, hidden)), rng.standard_normal((kv * d, hidden)), o,
                               heads, kv, d)
    table = heads_table("m", "layer_000", 0, weights).sort_values("mean_effective_rank")
    assert {"low-rank", "high-rank"} <= set(table["tag"])
    assert list(table["tag"]) == ["low-rank"] * 2 + [""] * 4 + ["high-rank"] * 2


def _random_layer(seed=5, heads=4, kv=2, d=8, hidden=32):
    rng = np.random.default_rng(seed)
    return AttentionWeights(rng.standard_normal((heads * d, hidden)), rng.standard_normal((kv * d, hidden)),
                            rng.standard_normal((kv * d, hidden)), rng.standard_normal((hidden, heads * d)),
                            heads, kv, d)


def test_non_finite_weights_give_nan_heads_and_leave_the_others_exact(caplog):
    """A NaN in head 1's q rows and an Inf in kv head 1's v rows: NaN QK metrics for head 1,
    NaN OV metrics for heads 2 and 3 (they read kv head 1), every other number as before."""
    from blockscope.analysis.heads import NONFINITE_TAG, OV_COLUMNS, QK_COLUMNS, deep_dive_problem, finite_kernels

    clean = _random_layer()
    bad = _random_layer()
    bad.q[8 + 3, 5] = np.nan
    bad.v[8 + 1, 0] = np.inf
    qk_ok, ov_ok = finite_kernels(bad)
    assert list(qk_ok) == [True, False, True, True] and list(ov_ok) == [True, True, False, False]
    with caplog.at_level("WARNING"):
        table = heads_table("m", "layer_001", 1, bad).set_index("head")
    assert "[m] layer_001: non-finite weights: QK metrics NaN for heads [1], OV metrics NaN for heads [2, 3]" \
        in caplog.text
    expected = heads_table("m", "layer_001", 1, clean).set_index("head")
    assert table.loc[1, QK_COLUMNS].isna().all() and table.loc[[2, 3], OV_COLUMNS].isna().all().all()
    same = lambda heads, columns: np.allclose(table.loc[heads, columns].astype(float),  # noqa: E731
                                              expected.loc[heads, columns].astype(float))
    assert same([0, 2, 3], QK_COLUMNS) and same([0, 1], OV_COLUMNS)
    assert list(table["tag"].iloc[1:]) == [NONFINITE_TAG] * 3 and table.loc[0, "tag"] != NONFINITE_TAG
    assert table["mean_effective_rank"].isna().tolist() == [False, True, True, True]
    assert deep_dive_problem(bad, 1).startswith("head 1's QK kernel has non-finite factors")
    assert deep_dive_problem(bad, 2) is None and deep_dive_problem(bad, 4) == "the layer has 4 query heads, no head 4"
    assert "no attention projections" in deep_dive_problem(None, 0)


def test_a_layer_of_non_finite_weights_gives_all_nan_rows():
    bad = _random_layer()
    bad.k[:] = np.nan
    bad.o[:] = np.nan
    table = heads_table("m", "layer_000", 0, bad)
    assert list(table.columns) == list(heads_table("m", "layer_000", 0, _random_layer()).columns)
    assert len(table) == 4 and table[["qk_effective_rank", "ov_effective_rank"]].isna().all().all()


def test_grouped_sub_stack_reads_only_its_own_right_factors():
    """Indexing a grouped stack keeps only the right factors it uses: a NaN factor of another
    group never reaches the decompositions."""
    rng = np.random.default_rng(6)
    left, right = rng.standard_normal((4, 20, 3)), rng.standard_normal((2, 3, 20))
    right[1, 0, 0] = np.nan
    stack = FactoredMatrix.grouped(left, right, [0, 0, 1, 1])
    sub = stack[np.array([0, 1])]
    assert sub._distinct_right.shape[0] == 1 and np.isfinite(sub.singular_values).all()
    assert np.allclose(sub.singular_values[1], FactoredMatrix(left[1], right[0]).singular_values)
