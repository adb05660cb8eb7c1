"""Per-matrix ground truth (rule compress_sensitivity): the output-error proxy against a direct
computation, one matrix perturbed alone, the stratified sample, the int3 format, the proxy's
calibration, and a real run of the rule on a tiny causal LM with a tokenizer.
(tests/test_sensitivity.py is about precision sensitivity, the spread of alpha-Hill.)"""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from blockscope import layout
from blockscope.compression import sensitivity
from blockscope.compression.formats import FORMATS, bits_per_weight, quantize
from blockscope.compression.output_error import collect_proxies, output_error_proxy, second_moments
from blockscope.compression.proxy_calibration import calibrate, calibrated, leave_one_out, log_fit

from conftest import ROOT, TINY_LLAMA, run_workflow, save_tiny, word_tokenizer

WIKITEXT = ROOT.parent / "shared/data/wikitext-2-raw/wiki.test.raw"


# --- the output-error proxy ---------------------------------------------------------------------------------

class TwoLinears(torch.nn.Module):
    """Token ids -> embedding -> a Linear and a Conv1D (transformers' GPT-2 layout) in turn."""

    def __init__(self):
        from transformers.pytorch_utils import Conv1D

        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(50, 12)
        self.proj = torch.nn.Linear(12, 7, bias=True)
        self.conv = Conv1D(5, 7)  # weight (7, 5): y = x W + b

    def forward(self, input_ids, use_cache=False):
        return self.conv(self.proj(self.embed(input_ids)))


def batches_of(windows, size, mask=None):
    """collect_proxies' batches(): (forward keyword arguments, mask) per `size` windows."""
    return lambda: (({"input_ids": windows[i:i + size]}, None if mask is None else mask[i:i + size])
                    for i in range(0, len(windows), size))


def test_the_proxy_is_the_output_change_per_token_computed_directly():
    model = TwoLinears().eval()
    windows = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # the inputs each matrix sees, every position of every window
        x_proj = model.embed(windows).reshape(-1, 12)
        x_conv = model.proj(model.embed(windows)).reshape(-1, 7)
    dw_proj = torch.randn(7, 12, generator=torch.Generator().manual_seed(2)) * 0.1
    dw_conv = torch.randn(7, 5, generator=torch.Generator().manual_seed(3)) * 0.1
    direct_proj = float(((x_proj.double() @ dw_proj.double().T) ** 2).sum()) / 27
    direct_conv = float(((x_conv.double() @ dw_conv.double()) ** 2).sum()) / 27  # Conv1D: outputs move by X dW

    priced = {}
    passes = collect_proxies(model, ["proj.weight", "conv.weight", "proj.bias"], batches_of(windows, 2), "cpu",
                             price=lambda name, s, rows, transposed: priced.update(
                                 {name: output_error_proxy(dw_proj if name == "proj.weight" else dw_conv, s, rows,
                                                           transposed)}))
    assert passes == 1 and set(priced) == {"proj.weight", "conv.weight"}  # a bias has no owning matrix module
    assert priced["proj.weight"] == pytest.approx(direct_proj, rel=1e-5)
    assert priced["conv.weight"] == pytest.approx(direct_conv, rel=1e-5)
    # a budget of one matrix: one forward pass per matrix, the same numbers
    again = {}
    passes = collect_proxies(model, ["proj.weight", "conv.weight"], batches_of(windows, 3), "cpu",
                             lambda name, s, rows, t: again.update({name: (s.clone(), rows)}), budget=1)
    assert passes == 2 and again["proj.weight"][1] == 27
    assert torch.allclose(again["proj.weight"][0], (x_proj.T @ x_proj), rtol=1e-5, atol=1e-5)


def test_second_moments_skip_masked_positions_and_leave_no_hook_behind():
    model = TwoLinears().eval()
    windows = torch.randint(0, 50, (4, 6), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[1, 3:] = mask[3, 1:] = 0  # padding, as an encoder's sentences have
    (s, rows), = second_moments(model, {"proj.weight": model.proj}, batches_of(windows, 3, mask)(), "cpu").values()
    with torch.no_grad():
        x = model.embed(windows)[mask.bool()]
    assert rows == int(mask.sum()) == 24 - 3 - 5 and torch.allclose(s, x.T @ x, rtol=1e-5, atol=1e-5)
    assert not model.proj._forward_pre_hooks


# --- one matrix alone -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_lm():
    import transformers

    from blockscope.evaluation.forward import evaluate_base

    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(**{**TINY_LLAMA, "num_hidden_layers": 3})
    model = transformers.LlamaForCausalLM(config).eval()
    windows = torch.randint(0, TINY_LLAMA["vocab_size"], (3, 16), generator=torch.Generator().manual_seed(0))
    return model, evaluate_base(model, windows)


def test_a_matrix_applied_alone_changes_only_that_matrix_and_comes_back_bit_identical(tiny_lm):
    model, _ = tiny_lm
    name = "model.layers.1.self_attn.v_proj.weight"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with sensitivity.applied_alone(model, name, lambda w: quantize(w, "int3", 32)):
        during = dict(model.named_parameters())
        changed = [n for n in before if not torch.equal(during[n], before[n])]
        assert changed == [name]
        assert torch.equal(during[name], quantize(before[name], "int3", 32))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_measure_alone_is_the_evaluation_of_a_model_with_that_matrix_replaced(tiny_lm):
    import copy

    from blockscope.evaluation.forward import evaluate_variant

    model, base = tiny_lm
    name = "model.layers.0.mlp.down_proj.weight"
    result = sensitivity.measure_alone(model, base, name, lambda w: sensitivity.perturbed(w, "prune_0.5", 32), "cpu", 1)
    other = copy.deepcopy(model)  # an independent copy with the matrix pruned by hand
    with torch.no_grad():
        weight = dict(other.named_parameters())[name]
        keep = weight.abs().flatten().argsort()[weight.numel() // 2:]
        pruned = torch.zeros_like(weight).flatten()
        pruned[keep] = weight.flatten()[keep]
        weight.copy_(pruned.reshape(weight.shape))
    scores = evaluate_variant(other, base)
    tokens = sum(base.tokens)
    assert result["kl_divergence"] == pytest.approx(sum(scores.kl) / tokens, rel=1e-6) and result["kl_divergence"] > 0
    assert result["nll_change"] == pytest.approx((sum(scores.nll) - sum(base.nll)) / tokens, rel=1e-6, abs=1e-9)


def test_an_encoder_matrix_alone_is_scored_by_its_sentence_embeddings():
    import copy

    import transformers

    from blockscope.evaluation.encoder import evaluate_encoder_base, evaluate_encoder_variant

    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     vocab_size=100)
    model = transformers.BertModel(config).eval()
    ids = torch.randint(1, 100, (12, 10), generator=torch.Generator().manual_seed(0))
    mask = (torch.arange(10) < torch.randint(3, 11, (12, 1), generator=torch.Generator().manual_seed(1))).long()
    base = evaluate_encoder_base(model, ids * mask, mask, [0] * 12, group=4, batch_size=5)
    name = "encoder.layer.1.attention.output.dense.weight"
    result = sensitivity.measure_alone(model, base, name, lambda w: quantize(w, "int3", 32), "cpu", 1)
    other = copy.deepcopy(model)
    with torch.no_grad():
        weight = dict(other.named_parameters())[name]
        weight.copy_(quantize(weight, "int3", 32))
    scores = evaluate_encoder_variant(other, base, batch_size=5)
    assert result["kl_divergence"] == pytest.approx(sum(scores.nll) / 12) and result["kl_divergence"] > 0
    assert result["nll_change"] == pytest.approx(result["kl_divergence"])  # the base's own loss is 0
    seen = {}
    collect_proxies(model, [name], sensitivity.forward_batches(base, "cpu", 1), "cpu",
                    lambda n, s, rows, t: seen.update(rows=rows))
    assert seen["rows"] == int(mask.sum())  # the real tokens only


# --- the stratified sample --------------------------------------------------------------------------------------

TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def matrices_of(layers: int) -> pd.DataFrame:
    rows = [{"param_name": f"model.layers.{layer}.{block}.weight", "block_type": block, "layer_index": layer}
            for layer in range(layers) for block in TYPES]
    return pd.DataFrame(rows).set_index("param_name", drop=False).rename_axis(None)


def test_the_stratified_sample_covers_every_block_type_and_spans_depth():
    matrices = matrices_of(30)
    sample = matrices.loc[sensitivity.stratified_sample(matrices, 21)]
    assert len(sample) == 21 and sample["block_type"].value_counts().to_dict() == {t: 3 for t in TYPES}
    assert sample["layer_index"].min() == 0 and sample["layer_index"].max() == 29
    assert sample["layer_index"].nunique() == 21  # the types take turns: 21 different depths
    for _, layers in sample.groupby("block_type")["layer_index"]:
        gaps = np.diff(sorted(layers))
        assert gaps.max() - gaps.min() <= 1 and gaps.min() >= 9  # evenly spaced over depth, per type
    assert sensitivity.stratified_sample(matrices, None) == list(matrices.index)
    assert sensitivity.stratified_sample(matrices, 500) == list(matrices.index)
    few = matrices.loc[sensitivity.stratified_sample(matrices, 9)]  # 9 = 7 + 2: two types get a second one
    assert set(few["block_type"]) == set(TYPES) and sorted(few["block_type"].value_counts()) == [1] * 5 + [2] * 2


def test_a_sample_of_two_layers_measures_distinct_matrices():
    matrices = matrices_of(2)
    sample = sensitivity.stratified_sample(matrices, 10)
    assert len(sample) == len(set(sample)) == 10 and set(matrices.loc[sample, "block_type"]) == set(TYPES)


# --- int3 -------------------------------------------------------------------------------------------------------

def test_int3_has_at_most_8_levels_per_group_and_more_error_than_int4():
    w = torch.randn(16, 96, generator=torch.Generator().manual_seed(0))
    out = quantize(w, "int3", 32)
    levels = [len(torch.unique(group)) for group in out.reshape(16, 3, 32).reshape(-1, 32)]
    assert max(levels) <= 8 and max(levels) >= 6
    int4 = quantize(w, "int4", 32)
    assert max(len(torch.unique(g)) for g in int4.reshape(-1, 32)) > 8
    assert float((out - w).norm()) > 1.5 * float((int4 - w).norm())
    group = torch.tensor([[0.0, 1.0, 2.0, 7.0]])  # range [0, 7]: scale 1, zero 0, every value a level
    assert quantize(group, "int3", 4).tolist() == [[0.0, 1.0, 2.0, 7.0]]
    assert quantize(torch.tensor([[0.0, 1.4, 14.0]]), "int3", 3).tolist() == [[0.0, 2.0, 14.0]]  # scale 2


def test_int3_bits_and_the_formats_order():
    assert bits_per_weight("int3", 576, 32) == 3 + 18 * 19 / 576
    bits = [bits_per_weight(fmt, 576, 32) for fmt in FORMATS]
    assert bits == sorted(bits, reverse=True) and FORMATS[-1] == "int3"
    assert sensitivity.low_format() == "int4"  # the lowest format any preset's hint rule assigns


# --- calibration --------------------------------------------------------------------------------------------------

def estimates_frame(proxy_by_perturbation: dict, kl_of, measured: set) -> pd.DataFrame:
    rows = []
    for perturbation, proxies in proxy_by_perturbation.items():
        for index, proxy in enumerate(proxies):
            is_measured = (index in measured) and perturbation in ("int4", "prune_0.5")
            rows.append({"param_name": f"m{index}", "block_type": "q_proj", "perturbation": perturbation,
                         "measured": is_measured,
                         "kl_divergence": kl_of(proxy) if is_measured else np.nan, "proxy": proxy})
    return pd.DataFrame(rows)


def test_the_calibration_recovers_a_known_log_linear_relation():
    rng = np.random.default_rng(0)
    proxy = np.exp(rng.uniform(-6, 2, 40))
    fit = log_fit(proxy, 0.03 * proxy ** 0.8)
    assert fit["slope"] == pytest.approx(0.8) and np.exp(fit["intercept"]) == pytest.approx(0.03)
    assert fit["rmse_log"] == pytest.approx(0, abs=1e-9) and fit["n"] == 40
    noisy = log_fit(proxy, 0.03 * proxy ** 0.8 * np.exp(rng.normal(0, 0.1, 40)))
    assert noisy["slope"] == pytest.approx(0.8, abs=0.05) and noisy["rmse_log"] == pytest.approx(0.1, abs=0.03)
    assert calibrated([0.0, np.nan, 2.0], fit).tolist()[0] == 0.0 and np.isnan(calibrated([np.nan], fit)[0])
    # a decreasing sample is no relation: slope 0 (the mean), never a larger error estimating a smaller KL
    decreasing = log_fit([1.0, 2.0, 4.0], [4.0, 2.0, 1.0])
    assert decreasing["slope"] == 0.0 and np.exp(decreasing["intercept"]) == pytest.approx(2.0)
    assert log_fit([3.0], [6.0])["slope"] == 1.0 and log_fit([], []) is None  # nothing to fit a slope to: proportional


def test_the_calibration_recovers_one_intercept_per_block_type_and_a_common_slope():
    rng = np.random.default_rng(1)
    proxy = np.exp(rng.uniform(-3, 3, 30))
    types = np.array(["k_proj", "v_proj", "down_proj"] * 10)
    scale = {"k_proj": 0.001, "v_proj": 0.02, "down_proj": 0.3}
    kl = np.array([scale[t] for t in types]) * proxy ** 1.5
    fit = log_fit(proxy, kl, types)
    assert fit["slope"] == pytest.approx(1.5) and fit["rmse_log"] == pytest.approx(0, abs=1e-9)
    assert {t: np.exp(v) for t, v in fit["intercepts"].items()} == pytest.approx(scale)
    assert calibrated([2.0, 2.0], fit, ["v_proj", "o_proj"]) == pytest.approx(
        [0.02 * 2 ** 1.5, np.exp(fit["intercept"]) * 2 ** 1.5])  # a type without rows: the intercept over all
    check = leave_one_out(proxy, kl, types)
    assert check["loo_spearman"] == pytest.approx(1.0) and check["loo_rmse_log"] == pytest.approx(0, abs=1e-9)
    assert check["loo_n"] == 30


def test_calibrate_fills_unmeasured_rows_and_reports_agreement():
    proxy = {"int4": [1.0, 2.0, 4.0, 8.0, 16.0], "int8": [0.01, 0.02, 0.04, 0.0, 0.16],
             "prune_0.5": [3.0, 6.0, 12.0, 24.0, 48.0]}
    frame = estimates_frame(proxy, lambda p: 0.5 * p ** 1.2, measured={0, 2, 4})
    out, agreement = calibrate(frame, anchor="int4")
    int4 = out[out["perturbation"] == "int4"].set_index("param_name")["estimated_kl"]
    assert int4.to_numpy() == pytest.approx(0.5 * np.array(proxy["int4"]) ** 1.2)  # the measured and the fitted
    int8 = out[out["perturbation"] == "int8"].set_index("param_name")["estimated_kl"]
    expected = int4.to_numpy() * np.array(proxy["int8"]) / np.array(proxy["int4"])  # scaled within each matrix
    assert int8.to_numpy() == pytest.approx(expected) and int8["m3"] == 0.0  # zero proxy, zero KL
    assert agreement["perturbations"]["int4"]["spearman"] == 1.0 and agreement["perturbations"]["int4"]["n"] == 3
    assert agreement["perturbations"]["int4"]["calibration"] == "own"
    assert agreement["perturbations"]["int8"]["calibration"] == "proportional to int4"
    assert agreement["perturbations"]["int8"]["n"] == 0 and agreement["pooled"]["n"] == 6
    assert list(agreement["perturbations"]) == ["int4", "int8", "prune_0.5"]


# --- the rule on a tiny causal LM ---------------------------------------------------------------------------------

SENSITIVITY_FILES = ("estimates.parquet", "estimates.csv", "matrices.parquet", "matrices.csv", "agreement.json")


@pytest.mark.slow
def test_the_rule_writes_one_row_per_matrix_and_perturbation(tmp_path):
    if not WIKITEXT.exists():
        pytest.skip("shared WikiText-2 copy not present")
    from blockscope.evaluation.base_artifact import load_base
    from blockscope.evaluation.forward import evaluate_variant

    vocab = word_tokenizer(tmp_path / "lm", WIKITEXT.read_text(encoding="utf-8").splitlines()[:300], 1000)
    save_tiny("LlamaForCausalLM", {**TINY_LLAMA, "vocab_size": vocab}, tmp_path / "lm")
    config = {"models": {"tiny-lm": {"source": "local", "path": str(tmp_path / "lm")},
                         "tiny-llama": {"source": "synthetic", "config": TINY_LLAMA, "seed": 0}},
              "device": "cpu", "headmerge": {"enabled": False},
              "eval": {"seq_len": 32, "max_tokens": 256, "corpus": {"path": str(WIKITEXT)}},
              "compress": {"min_bits_over_chance": 0, "quant": {"formats": ["bf16", "int8", "int4"]},
                           "sensitivity": {"matrices": 7, "max_tokens": 64}}}
    work = tmp_path / "work"
    targets = [f"results/{m}/compress/sensitivity/{name}" for m in ("tiny-lm", "tiny-llama")
               for name in SENSITIVITY_FILES]
    run_workflow(work, config, *targets)

    folder = work / "results/tiny-lm/compress/sensitivity"
    estimates, matrices = pd.read_parquet(folder / "estimates.parquet"), pd.read_parquet(folder / "matrices.parquet")
    agreement = json.loads((folder / "agreement.json").read_text())
    metrics = pd.read_parquet(work / "results/tiny-lm/metrics.parquet")
    planned = metrics[metrics["block_type"].isin(TYPES)]
    perturbations = ["bf16", "int8", "int4", "int3", "prune_0.5"]
    assert list(estimates.columns) == layout.SENSITIVITY_ESTIMATE_COLUMNS
    assert len(estimates) == len(planned) * len(perturbations) == 14 * 5
    assert not estimates.duplicated(["param_name", "perturbation"]).any()
    assert set(estimates["param_name"]) == set(planned["param_name"])
    assert list(dict.fromkeys(estimates["perturbation"])) == perturbations
    measured = estimates[estimates["measured"]]
    assert sorted(set(measured["perturbation"])) == ["int3", "int4", "prune_0.5"] and len(measured) == 7 * 3
    assert set(measured["block_type"]) == set(TYPES)  # 7 matrices, one per type
    assert (measured["kl_divergence"] > 0).all() and estimates.loc[~estimates["measured"], "kl_divergence"].isna().all()
    assert np.isfinite(estimates["proxy"]).all() and np.isfinite(estimates["estimated_kl"]).all()
    assert (measured["estimated_kl"] == measured["kl_divergence"]).all()
    int3, int4 = (estimates[estimates["perturbation"] == p].set_index("param_name") for p in ("int3", "int4"))
    assert (int3["weight_error"] > int4["weight_error"]).all()

    # one measured row again, independently: the checkpoint loaded, that matrix quantised, scored on the same windows
    import transformers

    row = measured[measured["perturbation"] == "int4"].iloc[0]
    model = transformers.AutoModelForCausalLM.from_pretrained(work / "resources/models/tiny-lm").eval()
    with torch.no_grad():
        weight = dict(model.named_parameters())[row["param_name"]]
        weight.copy_(quantize(weight, "int4", 32))
    whole = load_base(work / "results/tiny-lm/eval/base.safetensors")
    base = whole.spread_windows(64)  # 2 of the base's 8 windows of 32, spread over them, as the job read them
    assert agreement["windows_kept"] == base.settings["windows_kept"] and len(agreement["windows_kept"]) == 2
    scores = evaluate_variant(model, base)
    assert row["kl_divergence"] == pytest.approx(sum(scores.kl) / sum(scores.tokens), rel=1e-5)
    assert agreement["tokens"] == sum(scores.tokens) == 2 * 31 and agreement["low_format"] == "int4"
    assert set(agreement["perturbations"]) == set(perturbations) and agreement["measured_matrices"]
    assert agreement["perturbations"]["int4"]["n"] == 7

    assert len(matrices) == 14 and list(matrices.columns) == layout.SENSITIVITY_MATRIX_COLUMNS + [
        c for p in perturbations for c in layout.sensitivity_columns(p)]
    wide = matrices.set_index("param_name")
    stored = planned.set_index("param_name")
    assert wide["alpha"].to_numpy() == pytest.approx(stored.loc[wide.index, "alpha"].to_numpy())
    assert wide["int4_kl"].to_numpy() == pytest.approx(int4.loc[wide.index, "estimated_kl"].to_numpy())
    assert wide["int4_measured"].sum() == 7 and np.isfinite(wide["alpha_hill_relative_range"]).all()

    # a model that cannot be evaluated (no tokenizer): empty tables with their columns, the reason
    skipped = work / "results/tiny-llama/compress/sensitivity"
    assert pd.read_parquet(skipped / "estimates.parquet").empty
    assert list(pd.read_csv(skipped / "estimates.csv").columns) == layout.SENSITIVITY_ESTIMATE_COLUMNS
    empty = pd.read_parquet(skipped / "matrices.parquet")
    assert empty.empty and list(empty.columns) == list(matrices.columns)
    assert "tokenizer" in json.loads((skipped / "agreement.json").read_text())["skipped"]
