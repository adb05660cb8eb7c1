"""Quantisation formats, compression plans and pruning allocations, on small real tensors and tables."""

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from blockscope.compression import experiments as compress
from blockscope.compression import plans
from blockscope.compression.formats import FORMATS, bits_per_weight, hint_format, quantize
from blockscope.compression.hints import quantization_hint
from blockscope.compression.pruning import achieved_sparsity, magnitude_prune
from blockscope.config.validation import validate_config
from blockscope.errors import BlockscopeError
from blockscope.reporting import compression_section

from conftest import ROOT

# --- formats: each round trip against a hand-computed example ---------------------------------------------


def test_bf16_and_fp16_round_to_nearest_even():
    # bf16 keeps 7 fraction bits: 1 + 2^-8 is a tie (to 1), 1 + 3 * 2^-8 a tie (to 1 + 2^-6)
    assert quantize(torch.tensor([[1 + 2**-8, 1 + 3 * 2**-8]]), "bf16").tolist() == [[1.0, 1 + 2**-6]]
    # fp16 keeps 10: 1 + 2^-11 is a tie (to 1); 65504 is its largest finite value
    assert quantize(torch.tensor([[1 + 2**-11, 65504.0]]), "fp16").tolist() == [[1.0, 65504.0]]


def test_fp8_e4m3_scales_each_row_to_448():
    # row 0: scale 448 / 448 = 1; 0.3 = 1.2 * 2^-2 rounds to 1.25 * 2^-2 (3 fraction bits)
    # row 1: scale 224 / 448 = 0.5; 0.3 / 0.5 = 0.6 -> 0.625, times 0.5 = 0.3125
    w = torch.tensor([[448.0, 1.0, 0.3], [224.0, 0.3, 0.0]])
    assert quantize(w, "fp8-e4m3").tolist() == [[448.0, 1.0, 0.3125], [224.0, 0.3125, 0.0]]


def test_int8_is_symmetric_per_row():
    # scale 127 / 127 = 1; -63.5 rounds half to even (-64); 0.4 -> 0
    assert quantize(torch.tensor([[127.0, -63.5, 0.4, 1.0]]), "int8").tolist() == [[127.0, -64.0, 0.0, 1.0]]
    # a second row with its own scale: 2 / 127 per step
    out = quantize(torch.tensor([[2.0, 1.0]]), "int8")
    assert out[0, 0] == pytest.approx(2.0, abs=1e-3) and out[0, 1] == pytest.approx(round(63.5) * 2 / 127, abs=1e-3)


def test_int4_groups_with_a_partial_last_group():
    # group_size 4 over 6 columns: [-5, 0, 2.4, 10] has range [-5, 10] -> scale 1, zero point 5, 2.4 -> 2;
    # the partial group [0.7, 7.5] has range [0, 7.5] (zero kept) -> scale 0.5, zero 0, 0.7 -> 0.5
    w = torch.tensor([[-5.0, 0.0, 2.4, 10.0, 0.7, 7.5]])
    assert quantize(w, "int4", group_size=4).tolist() == [[-5.0, 0.0, 2.0, 10.0, 0.5, 7.5]]


def test_zero_matrices_stay_zero():
    for fmt in FORMATS:
        assert not quantize(torch.zeros(2, 8), fmt, group_size=4).any(), fmt


def test_bits_per_weight_count_scales_and_zero_points():
    assert bits_per_weight("bf16", 576) == bits_per_weight("fp16", 576) == 16
    assert bits_per_weight("int8", 576) == bits_per_weight("fp8-e4m3", 576) == 8 + 16 / 576
    assert bits_per_weight("int4", 576, 32) == 4 + 18 * 20 / 576 == 4.625
    assert bits_per_weight("int4", 6, 4) == pytest.approx((6 * 4 + 2 * 20) / 6)  # the partial group has its own


def test_schema_formats_are_the_simulated_ones():
    schema = yaml.safe_load((ROOT / "schemas/config.schema.yaml").read_text())
    assert tuple(schema["properties"]["compress"]["properties"]["quant"]["properties"]["formats"]["items"]["enum"]) \
        == FORMATS
    assert hint_format("fp8/int8") == "fp8-e4m3" and hint_format("fp16/bf16") == "fp16"


# --- plans ------------------------------------------------------------------------------------------------

def metrics_table(layers=4, seed=0) -> pd.DataFrame:
    """A metrics table of a llama-like model: q (64x64), k (32x64) and down (64x128) per layer."""
    rng = np.random.default_rng(seed)
    rows = []
    for layer in range(layers):
        for block, shape in (("q_proj", (64, 64)), ("k_proj", (32, 64)), ("down_proj", (64, 128))):
            rows.append({"param_name": f"model.layers.{layer}.{block}.weight", "matrix": f"layers.{layer}.{block}",
                         "expert": np.nan, "block_type": block, "layer_index": float(layer), "rows": shape[0],
                         "cols": shape[1], "status": "ok",
                         **{m: rng.uniform(2, 6) for m in plans.ALPHA_METRICS}})
    rows.append({"param_name": "model.norm.weight", "block_type": "norm", "layer_index": np.nan, "rows": 64,
                 "status": "1-D parameter: statistics only"})
    return pd.DataFrame(rows)


def test_plan_matrices_are_the_block_linears():
    matrices = plans.plan_matrices(metrics_table())
    assert len(matrices) == 12 and "model.norm.weight" not in matrices.index
    assert matrices.loc["model.layers.0.down_proj.weight", "params"] == 64 * 128


def test_hint_plan_is_the_aggregate_rule_and_its_controls_keep_the_budget():
    matrices = plans.plan_matrices(metrics_table())
    settings = plans.preset_settings("alpha_pruning", 32)
    plan, _ = plans.hint_plan(matrices, settings)
    expected = [hint_format(quantization_hint(a, [3.0, 5.0], ["bf16", "fp8/int8", "int4"], "lower_alpha_more_bits"))
                for a in matrices["alpha"]]
    assert list(plan) == expected and plan.nunique() > 1
    mirror = plans.mirror_plan(plan, matrices, "alpha")
    groups = plans.shape_groups(matrices)
    for _, index in groups.groupby(groups).groups.items():  # the same formats within each shape, reversed in alpha
        assert sorted(mirror[index]) == sorted(plan[index])
        order = matrices.loc[index, "alpha"].sort_values().index
        assert list(mirror[order]) == list(plan[order])[::-1]
    budget = plans.average_bits(plan, matrices, 32)
    assert plans.average_bits(mirror, matrices, 32) == pytest.approx(budget)
    randoms = [plans.random_plan(plan, matrices, seed) for seed in range(5)]
    assert all(plans.average_bits(r, matrices, 32) == pytest.approx(budget) for r in randoms)
    assert any(not r.equals(plan) for r in randoms)


def test_alpha_allocation_follows_alphapruning():
    alpha, params = np.array([2.0, 3.0, 5.0, 4.0]), np.array([10.0, 10.0, 10.0, 10.0])
    s = plans.alpha_allocation(alpha, params, 0.5, 0.3)
    assert np.dot(s, params) / params.sum() == pytest.approx(0.5)
    assert s.tolist() == pytest.approx([0.35, 0.45, 0.65, 0.55])  # 1 - eps .. 1 + eps, already mean 1
    assert np.argsort(s).tolist() == np.argsort(alpha).tolist()  # higher alpha, more pruning
    unequal = plans.alpha_allocation(alpha, np.array([1.0, 2.0, 3.0, 4.0]), 0.6, 0.2)
    assert np.dot(unequal, [1, 2, 3, 4]) / 10 == pytest.approx(0.6)
    assert unequal.max() / unequal.min() == pytest.approx(1.2 / 0.8)  # the range survives the rescaling
    assert plans.alpha_allocation(np.full(3, 4.0), np.ones(3), 0.5, 0.3).tolist() == [0.5, 0.5, 0.5]


def test_prune_allocations_mirror_and_random_keep_the_multiset_and_budget():
    matrices = plans.plan_matrices(metrics_table(layers=6))
    layers = plans.layer_table(matrices, "alpha_peak")
    out = plans.prune_allocations(layers, 0.5, 0.3, seeds=5)
    assert set(out) == {"uniform", "alpha", "mirror", *[f"random_{s}" for s in range(5)]}
    for name, allocation in out.items():
        assert plans.weighted_mean(plans.matrix_sparsity(allocation, matrices), matrices) == pytest.approx(0.5), name
        assert sorted(allocation) == pytest.approx(sorted(out["alpha"]) if name != "uniform" else [0.5] * 6)
    ranks = layers["alpha"].rank()
    # higher alpha prunes more; the mirror gives the layer of rank r the sparsity of rank n + 1 - r
    assert out["alpha"].rank().equals(ranks) and out["mirror"].rank().equals(len(ranks) + 1 - ranks)


def test_too_wide_an_allocation_is_refused():
    with pytest.raises(BlockscopeError, match="compress.prune"):
        plans.check_allocation(pd.Series([0.5, 1.0]), "m")


def test_magnitude_pruning_achieves_the_allocation():
    w = torch.randn(64, 48, generator=torch.Generator().manual_seed(0))
    for sparsity in (0.0, 0.3, 0.5, 0.77):
        pruned = magnitude_prune(w, sparsity)
        assert abs(achieved_sparsity(pruned) - sparsity) <= 0.5 / w.numel()
        kept = pruned != 0
        if sparsity:  # every kept entry is at least as large as every pruned one
            assert w[kept].abs().min() >= w[~kept].abs().max()
    assert torch.equal(magnitude_prune(w, 0.0), w)


def test_magnitude_pruning_breaks_ties_by_position():
    # a dequantised matrix: few levels, so most magnitudes tie; the first tied entries go
    w = torch.tensor([[0.5, -0.25, 0.25, 1.0], [0.25, -0.5, 0.25, 0.75]])
    pruned = magnitude_prune(w, 3 / 8)  # the three smallest of four 0.25s: positions 1, 2, 4
    assert pruned.flatten().tolist() == [0.5, 0.0, 0.0, 1.0, 0.0, -0.5, 0.25, 0.75]
    levels = torch.randint(-8, 8, (96, 64), generator=torch.Generator().manual_seed(1)).float() / 8
    first = magnitude_prune(levels, 0.5)
    assert torch.equal(first, magnitude_prune(levels.clone(), 0.5)) and achieved_sparsity(first) == 0.5


def test_sentences_name_the_winner_and_the_controls():
    rows = pd.DataFrame([
        {"plan": "hint_p", "kind": "hint", "of": "p", "direction": "lower alpha keeps more bits", "perplexity": 10.0,
         "kl_divergence": 0.1, "bits_per_weight": 6.0},
        {"plan": "mirror_p", "kind": "mirror", "of": "p", "direction": "higher alpha keeps more bits",
         "perplexity": 12.0, "kl_divergence": 0.2, "bits_per_weight": 6.0},
        *[{"plan": f"random_p_{s}", "kind": "random", "of": "p", "perplexity": 11.0 + s / 10, "kl_divergence": 0.1}
          for s in range(3)]])
    (sentence,) = compression_section.quant_sentences(rows)
    assert "lower alpha keeps more bits won" in sentence and "2.000 lower" in sentence
    assert "gap is larger than 2 sd" in sentence and "winner is more than 2 sd below their mean" in sentence
    rows.loc[1, "perplexity"] = 10.05
    assert "gap is not larger than 2 sd" in compression_section.quant_sentences(rows)[0]
    rows.loc[2:, "perplexity"] = [9.0, 10.0, 11.0]  # controls as good as the winner
    assert "winner is within 2 sd of their mean" in compression_section.quant_sentences(rows)[0]


@pytest.mark.parametrize("key, value, named", [
    (("quant", "formats"), ["int3"], "compress.quant.formats.0"),
    (("prune", "targets"), [1.0], "compress.prune.targets.0"),
    (("prune", "gpu_targets"), [-0.1], "compress.prune.gpu_targets.0"),
    (("prune", "eps"), 1.0, "compress.prune.eps"),
    (("prune", "alpha_metric"), "alpha_max", "compress.prune.alpha_metric"),
])
def test_bad_compress_settings_name_the_key(key, value, named):
    section, name = key
    config = {"models": {"m": {"source": "local", "path": "/x"}}, "compress": {section: {name: value}}}
    with pytest.raises(BlockscopeError, match=f"config key {named}"):
        validate_config(config, ROOT / "schemas" / "config.schema.yaml")


def test_bits_over_chance_and_the_skip_it_drives():
    from blockscope.evaluation.loading import bits_over_chance, chance_reason

    assert bits_over_chance(64, 64) == 0 and bits_over_chance(8, 64) == 3
    assert bits_over_chance(38.28, 49152) == pytest.approx(10.326, abs=1e-3)  # the demo's base
    assert chance_reason("m", 40.0, 64, 0.5) is None and chance_reason("m", 40.0, 64, 1.0)  # 0.68 bits over
    assert chance_reason("m", 32.0, 64, 1.0) is None  # exactly one bit over chance: evaluated
    reason = chance_reason("m", 33.0, 64, 1.0)
    assert reason.startswith("m predicts at chance: base perplexity 33 against a vocabulary of 64, +0.96 bits")
    assert chance_reason("m", 53909.0, 49152, 0) is None and chance_reason("m", 5.0, None, 1.0) is None


def test_round_trips_are_computed_once_and_equal_quantize():
    from blockscope.compression.formats import quantize

    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    budget = 8 * 64 * 4 + 8 * 64 * 2  # room for the int4 round trip and one bf16 one
    trips = compress.RoundTrips(group_size=32, budget=budget)
    for fmt in ("int4", "bf16", "int8"):
        assert torch.equal(trips("w", w, fmt), quantize(w, fmt, 32))
    assert set(trips.kept) == {("w", "int4"), ("w", "bf16")} and trips.used == budget  # int8 did not fit
    assert trips.kept[("w", "bf16")].dtype == torch.bfloat16
    for fmt in ("int4", "bf16", "int8"):  # kept ones come back exactly, as float32
        again = trips("w", w, fmt)
        assert again.dtype == torch.float32 and torch.equal(again, quantize(w, fmt, 32))
    assert compress.RoundTrips(32, 0)("w", w, "fp16").equal(quantize(w, "fp16", 32))


def test_plans_are_scored_on_the_first_windows_of_the_base():
    from blockscope.evaluation.base_artifact import BaseEvaluation

    n, seq, k = 4, 9, 3
    base = BaseEvaluation(nll=[1.0, 2.0, 3.0, 4.0], correct=[1, 2, 3, 4], tokens=[8] * n,
                          windows=torch.arange(n * seq).reshape(n, seq), predicted=torch.zeros(n, seq - 1),
                          top_ids=torch.zeros(n, seq - 1, k), top_logprobs=torch.zeros(n, seq - 1, k),
                          tail_ids=torch.zeros(n, seq - 1, 2), tail_logprobs=torch.zeros(n, seq - 1, 2))
    first = base.first_windows(20)  # 20 tokens: two windows of 9
    assert first.nll == [1.0, 2.0] and first.tokens == [8, 8] and first.windows.shape == (2, seq)
    assert first.top_ids.shape == (2, seq - 1, k) and first.settings["windows_scored"] == 2
    assert first.summary()["perplexity"] == pytest.approx(np.exp(3 / 16))
    assert base.first_windows(None) is base and base.first_windows(10_000) is base
    assert base.first_windows(8).nll == [1.0]  # fewer than one window's tokens: one window
