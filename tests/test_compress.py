"""Quantisation formats, compression plans and pruning allocations, on small real tensors and tables."""

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from blockscope import layout
from blockscope.compression import controls, plans
from blockscope.compression import experiments as compress
from blockscope.compression.formats import FORMATS, bits_per_weight, hint_format, quantize
from blockscope.compression.pruning import achieved_sparsity, magnitude_prune
from blockscope.config.validation import validate_config
from blockscope.errors import BlockscopeError

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

BLOCKS = (("q_proj", (64, 64)), ("k_proj", (32, 64)), ("down_proj", (64, 128)))


def metrics_table(layers=4, seed=0, alphas=None) -> pd.DataFrame:
    """A metrics table of a llama-like model: q (64x64), k (32x64) and down (64x128) per layer;
    every exponent drawn from U(2, 6), or `alphas` (one per matrix, layer by layer) for all of them."""
    rng = np.random.default_rng(seed)
    rows = []
    for layer in range(layers):
        for b, (block, shape) in enumerate(BLOCKS):
            given = None if alphas is None else alphas[layer * len(BLOCKS) + b]
            rows.append({"param_name": f"model.layers.{layer}.{block}.weight", "matrix": f"layers.{layer}.{block}",
                         "expert": np.nan, "block_type": block, "layer_index": float(layer), "rows": shape[0],
                         "cols": shape[1], "status": "ok",
                         **{m: rng.uniform(2, 6) if given is None else given for m in plans.ALPHA_METRICS}})
    rows.append({"param_name": "model.norm.weight", "block_type": "norm", "layer_index": np.nan, "rows": 64,
                 "status": "1-D parameter: statistics only"})
    return pd.DataFrame(rows)


def test_plan_matrices_are_the_block_linears():
    matrices = plans.plan_matrices(metrics_table())
    assert len(matrices) == 12 and "model.norm.weight" not in matrices.index
    assert matrices.loc["model.layers.0.down_proj.weight", "params"] == 64 * 128


def test_hint_plan_follows_the_bands_and_its_mirror_reverses_each_shape():
    # layer by layer (q, k, down): alpha_pruning's bands [3, 5): below 3 bf16, 3 to 5 fp8, from 5 int4
    alphas = [2.0, 3.0, 5.0,  4.9, 6.0, 2.9,  5.5, 2.5, 3.5,  3.2, 4.0, 7.0]
    matrices = plans.plan_matrices(metrics_table(alphas=alphas))
    plan, _ = plans.hint_plan(matrices, plans.preset_settings("alpha_pruning", 32))
    bf16, fp8, int4 = "bf16", "fp8-e4m3", "int4"
    expected = [bf16, fp8, int4,  fp8, int4, bf16,  int4, bf16, fp8,  fp8, fp8, int4]
    names = [f"model.layers.{layer}.{block}.weight" for layer in range(4) for block, _ in BLOCKS]
    assert plan[names].tolist() == expected
    # within each shape the formats in reversed alpha order: q alphas 2, 4.9, 5.5, 3.2 have ranks
    # 0, 2, 3, 1 and take the formats of ranks 3, 1, 0, 2 (bf16, fp8, fp8, int4 by rank)
    mirror = plans.mirror_plan(plan, matrices, "alpha")
    assert list(mirror[[f"model.layers.{i}.q_proj.weight" for i in range(4)]]) == [int4, fp8, bf16, fp8]
    # k: 3, 6, 2.5, 4 -> ranks 1, 3, 0, 2 -> formats of ranks 2, 0, 3, 1 (bf16, fp8, fp8, int4 by rank)
    assert list(mirror[[f"model.layers.{i}.k_proj.weight" for i in range(4)]]) == [fp8, bf16, int4, fp8]
    # down: 5, 2.9, 3.5, 7 -> ranks 2, 0, 1, 3 -> formats of ranks 1, 3, 2, 0 (bf16, fp8, int4, int4)
    assert list(mirror[[f"model.layers.{i}.down_proj.weight" for i in range(4)]]) == [fp8, int4, int4, bf16]
    # bits: q 64x64, k 32x64, down 64x128; int4 4 + 2 * 20 / 64 = 4.625 (64 cols), 4.625 (128 cols);
    # fp8 8 + 16 / cols; per layer 4096 + 2048 + 8192 weights
    params = {name: r * c for name, r, c in zip(matrices.index, matrices["rows"], matrices["cols"])}
    bits = {bf16: lambda c: 16, fp8: lambda c: 8 + 16 / c, int4: lambda c: 4.625}
    budget = sum(bits[f](c) * params[n] for n, f, c in zip(matrices.index, plan, matrices["cols"])) / 57344
    assert sum(params.values()) == 57344
    assert plans.average_bits(plan, matrices, 32) == pytest.approx(budget)
    assert plans.average_bits(mirror, matrices, 32) == pytest.approx(budget)
    assert plans.stored_bits("int4", 64, 64, 32) == 64 * 64 * 4 + 64 * 2 * 20
    assert plans.plan_stored_bits(plan, matrices, 32) == round(budget * 57344)


def test_simulated_as_says_what_is_evaluated():
    said = plans.simulated_as(["bf16", "fp8/int8", "int4"], 32)
    assert said["fp8/int8"].startswith("fp8-e4m3 with one fp16 scale per output row")
    assert "only fp8-e4m3 is evaluated" in said["fp8/int8"] and "evaluated" not in said["bf16"]
    assert "group of 32 inputs" in said["int4"]
    assert plans.plan_formats(["fp16/bf16", "fp8/int8", "int4"]) == ["fp16", "fp8-e4m3", "int4"]


# --- controls: distinct random plans, budget-matched ones, the uniform plan at or below a budget ----------

def shapes_table(shapes) -> pd.DataFrame:
    """Planned matrices of the given (rows, cols), one per entry, in one layer each."""
    rows = [{"param_name": f"m{i}", "layer_index": i, "rows": r, "cols": c, "params": r * c}
            for i, (r, c) in enumerate(shapes)]
    return pd.DataFrame(rows).set_index("param_name", drop=False).rename_axis(None)


def test_within_shape_random_plans_are_every_distinct_permutation_at_most_once():
    matrices = shapes_table([(8, 8)] * 3 + [(4, 8)] * 2 + [(8, 16)])
    hint = pd.Series(["int4", "int4", "bf16", "int8", "bf16", "int4"], index=matrices.index, dtype=object)
    # by hand: 3 orders of (int4, int4, bf16) x 2 of (int8, bf16) x 1 (a shape of one matrix) = 6
    every = {tuple(a) + tuple(b) + ("int4",) for a in set(itertools.permutations(["int4", "int4", "bf16"]))
             for b in set(itertools.permutations(["int8", "bf16"]))}
    assert len(every) == 6 == controls.distinct_permutations(hint, plans.shape_groups(matrices))
    taken = {controls.format_key(hint): hint}
    drawn = controls.within_shape_random_plans(hint, matrices, 10, taken)
    plans_drawn = {tuple(plan) for _, plan in drawn}
    assert len(drawn) == len(plans_drawn) == 5 and plans_drawn == every - {tuple(hint)}  # no repeat, not the hint
    assert [seed for seed, _ in drawn] == sorted(seed for seed, _ in drawn)
    # a second call with the same taken plans finds nothing new
    assert controls.within_shape_random_plans(hint, matrices, 10, taken) == []
    # a shape of one matrix each: no other plan keeps the budget
    single = shapes_table([(8, 8), (4, 8), (8, 16)])
    alone = pd.Series(["int4", "bf16", "int8"], index=single.index, dtype=object)
    assert controls.within_shape_random_plans(alone, single, 5, {controls.format_key(alone): alone}) == []


def test_budget_random_plans_stay_within_the_budget_and_cross_shapes():
    matrices = plans.plan_matrices(metrics_table(layers=6, seed=3))
    hint, _ = plans.hint_plan(matrices, plans.preset_settings("alpha_pruning", 32))
    formats = ["bf16", "fp8-e4m3", "int4"]
    budget = plans.plan_stored_bits(hint, matrices, 32)
    cost = {(n, f): r * c * bits_per_weight(f, c, 32) for n, r, c in zip(matrices.index, matrices["rows"],
                                                                          matrices["cols"]) for f in formats}
    taken = {controls.format_key(hint): hint}
    drawn = controls.budget_random_plans(hint, formats, matrices, 8, taken, 32)
    assert len(drawn) == 8 and len({tuple(p) for _, p in drawn} | {tuple(hint)}) == 9
    groups = plans.shape_groups(matrices)
    per_shape = lambda plan: sorted(zip(groups, plan))  # noqa: E731 (format counts per shape)
    assert any(per_shape(plan) != per_shape(hint) for _, plan in drawn)  # formats moved across shapes
    for _, plan in drawn:
        spent = sum(cost[(n, f)] for n, f in plan.items())
        assert spent <= budget + 1e-6  # never above the hint's bits
        # as close as the draw allows: no single matrix could still move to a format with more bits
        left = budget - spent
        assert not any(cost[(n, g)] > cost[(n, f)] and cost[(n, g)] - cost[(n, f)] <= left + 1e-6
                       for n, f in plan.items() for g in formats)
    assert plans.average_bits(drawn[0][1], matrices, 32) <= plans.average_bits(hint, matrices, 32)


def test_the_uniform_plan_at_or_below_a_budget():
    bits = {"uniform_bf16": 16.0, "uniform_fp16": 16.0, "uniform_fp8-e4m3": 8.25, "uniform_int4": 4.625}
    assert controls.uniform_at_or_below(bits, 8.25) == "uniform_fp8-e4m3"  # the same budget
    assert controls.uniform_at_or_below(bits, 10.0) == "uniform_fp8-e4m3"
    assert controls.uniform_at_or_below(bits, 8.2) == "uniform_int4"
    assert controls.uniform_at_or_below(bits, 16.0) == "uniform_bf16"  # a tie: the first listed
    assert controls.uniform_at_or_below(bits, 4.6) is None


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
    out = controls.prune_plans(layers, 0.5, 0.3, seeds=5)
    assert set(out) == {"uniform", "alpha", "mirror", *[f"random_{s}" for s in range(5)]}
    for name, allocation in out.items():
        assert plans.weighted_mean(plans.matrix_sparsity(allocation, matrices), matrices) == pytest.approx(0.5), name
        assert sorted(allocation) == pytest.approx(sorted(out["alpha"]) if name != "uniform" else [0.5] * 6)
    assert len({tuple(np.round(a, 9)) for a in out.values()}) == len(out)  # no two the same
    ranks = layers["alpha"].rank()
    # higher alpha prunes more; the mirror gives the layer of rank r the sparsity of rank n + 1 - r
    assert out["alpha"].rank().equals(ranks) and out["mirror"].rank().equals(len(ranks) + 1 - ranks)


def test_random_allocations_are_the_other_orders_when_few_exist():
    # 3 layers of distinct alpha: 3! = 6 orders, minus alpha's own and its mirror: 4 random ones
    three = plans.layer_table(plans.plan_matrices(metrics_table(layers=3, seed=1)), "alpha_peak")
    randoms = {k for k in controls.prune_plans(three, 0.5, 0.3, seeds=10) if k.startswith("random")}
    assert len(randoms) == 4
    # 2 layers: their two orders are alpha and the mirror; no random allocation is left
    two = plans.layer_table(plans.plan_matrices(metrics_table(layers=2, seed=1)), "alpha_peak")
    assert set(controls.prune_plans(two, 0.5, 0.3, seeds=5)) == {"uniform", "alpha", "mirror"}


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


@pytest.mark.parametrize("key, value, named", [
    (("quant", "formats"), ["int2"], "compress.quant.formats.0"),
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


def test_plans_are_scored_on_windows_spread_over_the_base():
    from blockscope.evaluation.base_artifact import BaseEvaluation

    n, seq, k = 4, 9, 3
    base = BaseEvaluation(nll=[1.0, 2.0, 3.0, 4.0], correct=[1, 2, 3, 4], tokens=[8] * n,
                          windows=torch.arange(n * seq).reshape(n, seq), predicted=torch.zeros(n, seq - 1),
                          top_ids=torch.zeros(n, seq - 1, k), top_logprobs=torch.zeros(n, seq - 1, k),
                          tail_ids=torch.zeros(n, seq - 1, 2), tail_logprobs=torch.zeros(n, seq - 1, 2),
                          settings={"window_offsets": [0, 9, 18, 27], "window_articles": [[0, 0], [0, 1], [1, 1],
                                                                                          [2, 2]]})
    kept = base.spread_windows(20)  # 20 tokens: two windows of 9, the first and the last
    assert kept.nll == [1.0, 4.0] and kept.tokens == [8, 8] and kept.windows[:, 0].tolist() == [0, 27]
    assert kept.top_ids.shape == (2, seq - 1, k) and kept.settings["windows_scored"] == 2
    assert kept.settings["window_offsets"] == [0, 27] and kept.settings["window_articles"] == [[0, 0], [2, 2]]
    assert kept.summary()["perplexity"] == pytest.approx(np.exp(5 / 16))
    assert base.spread_windows(27).nll == [1.0, 3.0, 4.0]  # three of four: indices round(0, 1.5, 3)
    assert base.spread_windows(None) is base and base.spread_windows(10_000) is base
    assert base.spread_windows(8).nll == [1.0]  # fewer than one window's tokens: one window


# --- comparisons: paired by window, against hand computations ---------------------------------------------

T_975_3 = 3.182446305284263  # Student t, 97.5 % quantile, 3 degrees of freedom (tables: 3.182)


def window_scores(nll, tokens=10):
    from blockscope.evaluation.scores import WindowScores

    return WindowScores(nll=list(map(float, nll)), correct=[0] * len(nll), tokens=[tokens] * len(nll))


def test_quant_comparisons_by_hand():
    from scipy import stats

    from blockscope.compression.comparisons import quant_comparisons

    table = pd.DataFrame([
        {"plan": "uniform_bf16", "kind": "uniform", "of": None, "bits_per_weight": 16.0},
        {"plan": "uniform_fp8-e4m3", "kind": "uniform", "of": None, "bits_per_weight": 8.25},
        {"plan": "uniform_int4", "kind": "uniform", "of": None, "bits_per_weight": 4.625},
        {"plan": "hint_p", "kind": "hint", "of": "p", "bits_per_weight": 8.0},
        {"plan": "mirror_p", "kind": "mirror", "of": "p", "bits_per_weight": 8.0},
        *[{"plan": f"random_p_{s}", "kind": "random", "of": "p", "bits_per_weight": 8.0} for s in range(3)],
        {"plan": "hint_q", "kind": "hint", "of": "q", "bits_per_weight": 4.5},
    ])
    # four windows of 10 tokens; per-window sums of NLL
    scores = {"hint_p": window_scores([10, 20, 30, 40]), "mirror_p": window_scores([12, 21, 33, 44]),
              "uniform_int4": window_scores([10.5, 19.5, 30.5, 39.5]),
              "random_p_0": window_scores([11, 22, 31, 41]), "random_p_1": window_scores([9, 19, 29, 39]),
              "random_p_2": window_scores([13, 23, 36, 43]), "hint_q": window_scores([10, 20, 30, 40]),
              "uniform_bf16": window_scores([10, 20, 30, 40]), "uniform_fp8-e4m3": window_scores([10, 20, 30, 40])}
    out = quant_comparisons(table, scores, "m", 0.95, 0.002, 7)
    assert list(out.columns) == layout.COMPARISON_COLUMNS
    out = out.set_index(["plan", "against"])
    assert set(out.index) == {("hint_p", a) for a in ("mirror", "uniform", "random", "budget_random")} | {
        ("hint_q", a) for a in ("uniform", "random", "budget_random")}
    # hint - mirror per window: -0.2, -0.1, -0.3, -0.4: mean -0.25, sd sqrt(0.05 / 3)
    mirror = out.loc[("hint_p", "mirror")]
    half = T_975_3 * np.sqrt(0.05 / 3) / 2
    assert mirror["estimate"] == pytest.approx(-0.25)
    assert (mirror["ci_low"], mirror["ci_high"]) == pytest.approx((-0.25 - half, -0.25 + half))
    assert mirror["verdict"] == "better" and mirror["against_plan"] == "mirror_p" and np.isnan(mirror["p_value"])
    assert (mirror["windows"], mirror["tokens"], mirror["articles"], mirror["level"]) == (4, 40, 7, 0.95)
    # the uniform plan at or below 8.0 bits is int4 (fp8's 8.25 is above): -0.05, 0.05, -0.05, 0.05
    uniform = out.loc[("hint_p", "uniform")]
    assert uniform["against_plan"] == "uniform_int4" and uniform["estimate"] == pytest.approx(0, abs=1e-12)
    assert uniform["ci_high"] == pytest.approx(T_975_3 * np.sqrt(0.01 / 3) / 2)
    assert uniform["verdict"] == "no detectable difference"
    # the random plans' per-window mean: 1.1, 6.4 / 3, 3.2, 4.1 -> hint minus it -0.1, -0.4 / 3, -0.2, -0.1
    random = out.loc[("hint_p", "random")]
    # The interval is for the expected random plan: the windows' part s_w^2 / 4 plus the plans' part
    # s_p^2 / 3 (their own means 2.625, 2.4, 2.875), Welch-Satterthwaite degrees of freedom.
    d = np.array([-0.1, -0.4 / 3, -0.2, -0.1])
    windows_part = ((d - d.mean()) ** 2).sum() / 3 / 4
    means = np.array([2.625, 2.4, 2.875])
    plans_part = ((means - means.mean()) ** 2).sum() / 2 / 3
    df = (windows_part + plans_part) ** 2 / (windows_part ** 2 / 3 + plans_part ** 2 / 2)
    half = stats.t.ppf(0.975, df) * np.sqrt(windows_part + plans_part)
    assert random["estimate"] == pytest.approx(-0.4 / 3)
    assert (random["ci_low"], random["ci_high"]) == pytest.approx((-0.4 / 3 - half, -0.4 / 3 + half))
    # the hint's mean NLL 2.5 against 2.625, 2.4, 2.875: one at or below it -> (1 + 1) / (3 + 1)
    assert random["p_value"] == 0.5 and random["n_random"] == 3 and random["against_plan"] == "mean of 3 random plans"
    # the random plans spread more than the hint differs from them: no detectable difference
    assert random["ci_low"] < 0 < random["ci_high"] and random["verdict"] == "no detectable difference"
    # no budget-matched plan for p; no uniform plan at or below 4.5 bits for q: rows that say so
    for key, why in ((("hint_p", "budget_random"), "no distinct budget-matched random plan"),
                     (("hint_q", "uniform"), "none at or below this budget")):
        row = out.loc[key]
        assert row["against_plan"] == why and pd.isna(row["verdict"]) and np.isnan(row["estimate"])
        assert row["windows"] == 4 and row["tokens"] == 40


def test_a_verdict_needs_the_minimum_effect():
    from blockscope.compression.comparisons import quant_comparisons

    table = pd.DataFrame([{"plan": "hint_p", "kind": "hint", "of": "p", "bits_per_weight": 8.0},
                          {"plan": "mirror_p", "kind": "mirror", "of": "p", "bits_per_weight": 8.0}])
    scores = {"hint_p": window_scores([10, 20, 30, 40]), "mirror_p": window_scores([12, 21, 33, 44])}
    row = quant_comparisons(table, scores, "m", 0.95, 0.3, None).iloc[0]
    # the interval (-0.455, -0.045) excludes 0, but 0.25 nats is below a minimum effect of 0.3
    assert row["verdict"] == "below minimum effect" and np.isnan(row["articles"])


# --- the experiments on a real tiny model -----------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_session():
    """A tiny llama in memory, its base evaluation on 4 random windows, and a metrics table for its
    14 block matrices (q, o 32x32; k, v 16x32; gate, up 64x32; down 32x64) with exponents spread
    over the preset bands."""
    import transformers

    from blockscope.evaluation.forward import evaluate_base

    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
    model = transformers.LlamaForCausalLM(config).eval()
    windows = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(0))
    base = evaluate_base(model, windows, top_k=8)
    rng = np.random.default_rng(0)
    rows = []
    for name, param in model.named_parameters():
        if ".layers." in name and param.ndim == 2:
            alpha = rng.uniform(2, 6)
            rows.append({"param_name": name, "matrix": name, "expert": np.nan, "block_type": name.split(".")[-2],
                         "layer_index": float(name.split(".")[2]), "rows": param.shape[0], "cols": param.shape[1],
                         "status": "ok", "alpha": alpha, "alpha_peak": alpha, "alpha_mid": alpha,
                         "alpha_hill": rng.uniform(2, 3.5)})
    matrices = plans.plan_matrices(pd.DataFrame(rows))
    return model, base, matrices


def tiny_scorer(tiny_session):
    model, base, matrices = tiny_session
    return compress.Scorer(model, base, "cpu", compress.WeightSwap(model, list(matrices.index)), 50, 4)


def estimates_table(matrices) -> pd.DataFrame:
    """Made-up per-matrix estimates: matrix i costs 0.01 (i + 1) in int4, 0.001 (i + 1) in fp8, 0 in bf16 / fp16."""
    per_format = {"int4": 0.01, "fp8-e4m3": 0.001, "bf16": 0.0, "fp16": 0.0}
    return pd.DataFrame([{"param_name": name, "perturbation": fmt, "measured": False, "kl_divergence": np.nan,
                          "nll_change": np.nan, "proxy": np.nan, "estimated_kl": scale * (i + 1)}
                         for i, name in enumerate(matrices.index) for fmt, scale in per_format.items()])


def test_no_oracle_from_estimates_that_lack_a_format_of_the_preset():
    matrices = plans.plan_matrices(metrics_table())
    estimates = estimates_table(matrices)
    specs, _, missing = controls.quant_plans(matrices, ["int4"], 32, 1, 1, estimates)
    assert [s["plan"] for s in specs if s["kind"] == "oracle"] == ["oracle_alpha_pruning", "oracle_original_script"]
    partial = estimates[estimates["perturbation"] != "fp8-e4m3"]
    specs, _, missing = controls.quant_plans(matrices, ["int4"], 32, 1, 1, partial)
    assert not [s for s in specs if s["kind"] == "oracle"]
    assert missing == {(f"hint_{p}", "oracle"): "no oracle plan: the sensitivity estimates lack fp8-e4m3"
                       for p in ("alpha_pruning", "original_script")}


def test_the_scorer_scores_each_set_of_weights_once(tiny_session):
    scorer = tiny_scorer(tiny_session)
    _, _, matrices = tiny_session
    halve = lambda name, w: w / 2  # noqa: E731
    row, scores, new = scorer(("halved",), halve)
    again, scores_again, new_again = scorer(("halved",), halve)
    assert new and not new_again and scores_again is scores and again is row and len(scorer.scores) == 1
    assert len(scores.nll) == 4 and row["kl_divergence"] > 0
    outcome = compress.quant_experiment(scorer, matrices, ["bf16", "int4"], 32, seeds=3, budget_seeds=3,
                                        model_name="tiny", estimates=estimates_table(matrices))
    table = outcome.table.set_index("plan")
    keys = {controls.format_key(pd.Series(p)) for p in outcome.plans.values()}
    # every scored plan once: the halved weights and one evaluation per distinct plan
    assert len(scorer.scores) == 1 + len(keys)
    controls_drawn = table[table["kind"].isin(["random", "budget_random"])].index
    assert len({controls.format_key(pd.Series(outcome.plans[p])) for p in controls_drawn}) == len(controls_drawn)
    named_keys = {controls.format_key(pd.Series(outcome.plans[p])) for p in table.index
                  if p != "base" and p not in controls_drawn}
    assert not named_keys & {controls.format_key(pd.Series(outcome.plans[p])) for p in controls_drawn}
    assert set(outcome.scores) == set(table.index) - {"base"}
    for preset in ("alpha_pruning", "original_script"):
        hint_bits = table.loc[f"hint_{preset}", "bits_per_weight"]
        drawn = table[(table["of"] == preset) & (table["kind"] == "budget_random")]
        assert len(drawn) == 3 and (drawn["bits_per_weight"] <= hint_bits + 1e-9).all()
        assert table.loc[f"oracle_{preset}", "bits_per_weight"] <= hint_bits + 1e-9
    # the additive model: uniform int4 is the sum of 0.01 (i + 1) over 14 matrices
    assert table.loc["uniform_int4", "predicted_kl"] == pytest.approx(0.01 * 105)
    assert table.loc["uniform_bf16", "predicted_kl"] == 0 and np.isnan(table.loc["base", "predicted_kl"])
    simulated = outcome.details["simulated_as"]
    assert "only fp8-e4m3 is evaluated" in simulated["hint_alpha_pruning"]["fp8/int8"]
    assert set(simulated["uniform_int4"]) == {"int4"}


def test_comparisons_of_a_real_experiment_match_a_direct_computation(tiny_session):
    from scipy import stats

    from blockscope.compression.comparisons import quant_comparisons

    _, _, matrices = tiny_session
    outcome = compress.quant_experiment(tiny_scorer(tiny_session), matrices, ["bf16", "fp8-e4m3", "int4"], 32,
                                        seeds=4, budget_seeds=2, model_name="tiny")
    assert outcome.table["predicted_kl"].isna().all() and "oracle" not in set(outcome.table["kind"])
    out = quant_comparisons(outcome.table, outcome.scores, "tiny", 0.9, 0.002, None).set_index(["plan", "against"])
    scores = outcome.scores

    def means(plan):
        return np.asarray(scores[plan].nll) / np.asarray(scores[plan].tokens)

    table = outcome.table.set_index("plan")
    for preset in ("alpha_pruning", "original_script"):
        hint = f"hint_{preset}"
        randoms = table[(table["of"] == preset) & (table["kind"] == "random")].index
        d = means(hint) - np.mean([means(r) for r in randoms], axis=0)
        # the windows' part and the random plans' own spread, Welch-Satterthwaite degrees of freedom
        a, b = d.var(ddof=1) / len(d), np.var([means(r).mean() for r in randoms], ddof=1) / len(randoms)
        df = (a + b) ** 2 / (a * a / (len(d) - 1) + b * b / (len(randoms) - 1))
        half = stats.t.ppf(0.95, df) * np.sqrt(a + b)
        row = out.loc[(hint, "random")]
        assert (row["estimate"], row["ci_low"], row["ci_high"]) == pytest.approx((d.mean(), d.mean() - half,
                                                                                    d.mean() + half))
        overall = {p: np.sum(scores[p].nll) / np.sum(scores[p].tokens) for p in [hint, *randoms]}
        beaten_by = sum(overall[r] <= overall[hint] for r in randoms)
        assert row["p_value"] == pytest.approx((1 + beaten_by) / (len(randoms) + 1)) and row["n_random"] == len(randoms)
        d = means(hint) - means(f"mirror_{preset}")
        assert out.loc[(hint, "mirror"), "estimate"] == pytest.approx(d.mean())
        uniform = out.loc[(hint, "uniform"), "against_plan"]
        bits = table.loc[hint, "bits_per_weight"]
        # by hand: the formats' bits on these shapes (32 or 64 inputs): bf16 16, fp8 8 + 16 / cols, int4 4.625
        assert uniform == ("uniform_bf16" if bits >= 16 else "uniform_fp8-e4m3"
                           if bits >= table.loc["uniform_fp8-e4m3", "bits_per_weight"] else "uniform_int4")
        assert (out["windows"] == 4).all() and (out["tokens"] == 64).all()


def test_pruning_experiment_with_too_few_layers_for_random_orders(tiny_session):
    from blockscope.compression.comparisons import prune_comparisons

    _, _, matrices = tiny_session
    outcome = compress.prune_experiment(tiny_scorer(tiny_session), matrices, [0.5], 0.3, "alpha_peak", 5, "tiny")
    # two layers: their two orders are the alpha allocation and its mirror, so no random one
    assert list(outcome.table["kind"]) == ["base", "uniform", "alpha", "mirror"]
    out = prune_comparisons(outcome.table, outcome.scores, "tiny", 0.95, 0.002, 3).set_index("against")
    assert list(out.index) == ["mirror", "uniform", "random"] and (out["plan"] == "alpha_0.5").all()
    assert out.loc["random", "against_plan"] == "no distinct random plan" and pd.isna(out.loc["random", "verdict"])
    d = (np.asarray(outcome.scores["alpha_0.5"].nll) - np.asarray(outcome.scores["uniform_0.5"].nll)) / 16
    assert out.loc["uniform", "estimate"] == pytest.approx(d.mean()) and out.loc["uniform", "articles"] == 3


def test_only_the_configured_presets_are_planned():
    matrices = plans.plan_matrices(metrics_table())
    specs, hints, _ = controls.quant_plans(matrices, ["int4"], 32, 2, 2, presets=["alpha_pruning"])
    assert set(hints) == {"alpha_pruning"}
    assert {s["of"] for s in specs if s["kind"] != "uniform"} == {"alpha_pruning"}
    assert not [s for s in specs if "original_script" in s["plan"]]
