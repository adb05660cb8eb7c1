"""Low-rank edits: the truncation against numpy's SVD and Eckart-Young, the plans' budgets and
controls, the energy plan against a brute-force search, LASER's targets and controls, the
experiment on a real tiny model, its comparisons; and (slow) the rule in the real workflow."""

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch

from blockscope import layout
from blockscope.compression import low_rank as lr
from blockscope.compression import low_rank_experiment as lre
from blockscope.compression.experiments import Scorer, WeightSwap
from blockscope.diagnostic_layout import LOWRANK_ALLOCATION_COLUMNS, LOWRANK_SUMMARY_COLUMNS, column_type

from conftest import ROOT, run_workflow, save_tiny, word_tokenizer

# --- the truncation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (16, 16)])
def test_truncation_is_numpys_best_rank_r_approximation(shape):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape) @ np.diag(np.linspace(3, 0.1, shape[1]))
    u, s, vh = np.linalg.svd(w, full_matrices=False)  # the independent computation
    tu, ts, tvh = lr.svd64(torch.from_numpy(w))
    assert np.allclose(ts.numpy(), s, rtol=1e-12)
    for r in (1, 3, min(shape) // 2, min(shape)):
        ours = lr.truncated(tu, ts, tvh, r).numpy()
        expected = (u[:, :r] * s[:r]) @ vh[:r]
        assert np.allclose(ours, expected, atol=1e-12), r
        assert np.linalg.matrix_rank(ours) == r
        # Eckart-Young: the Frobenius error is the root of the dropped energy...
        error = np.linalg.norm(w - ours)
        assert error == pytest.approx(np.sqrt(np.sum(s[r:] ** 2)), rel=1e-10, abs=1e-12)
        assert lr.truncation_error(s, r) == pytest.approx(error, rel=1e-10, abs=1e-12)
        assert lr.kept_energy(s, r) == pytest.approx(1 - error ** 2 / np.sum(w ** 2), abs=1e-12)
        # ...and no other rank-r matrix is closer (random rank-r ones, and the truncation nudged)
        for seed in range(5):
            other = np.random.default_rng(seed)
            candidate = other.standard_normal((shape[0], r)) @ other.standard_normal((r, shape[1]))
            assert np.linalg.norm(w - candidate) > error
            nudged = (u[:, :r] * (s[:r] + 0.01 * other.standard_normal(r))) @ vh[:r]
            assert np.linalg.norm(w - nudged) > error


def test_factors_store_back_in_the_weights_dtype_and_on_the_break_even_rank():
    w = torch.randn(48, 20, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    factors = lr.Factors({"w": w})
    u, s, vh = np.linalg.svd(w.double().numpy(), full_matrices=False)  # float64 from the stored weights
    out = factors.weight("w", 5, w)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, torch.from_numpy((u[:, :5] * s[:5]) @ vh[:5]).to(torch.bfloat16))
    assert factors.kept["w"][0].shape == (48, 48 * 20 // 68) and lr.break_even_rank(48, 20) == 14
    assert lr.factor_params(48, 20, 14) == 14 * 68 <= 48 * 20 < 15 * 68  # the last rank whose factors are smaller
    assert np.allclose(factors.sigma("w"), s)


def test_energy_rank_is_the_smallest_rank_reaching_the_fraction():
    s = np.array([3.0, 2.0, 1.0, 1.0])  # energies 9, 4, 1, 1 of 15
    curve = lr.energy_curve(s)
    assert curve.tolist() == pytest.approx([9 / 15, 13 / 15, 14 / 15, 1.0])
    assert [lr.energy_rank(curve, f) for f in (0.0, 0.6, 0.61, 13 / 15, 0.9, 1.0)] == [1, 1, 2, 2, 3, 4]
    assert lr.energy_curve(np.zeros(3)).tolist() == [1.0, 1.0, 1.0]


# --- the plans: small tables of matrices with made-up spectra ------------------------------------------

SHAPES = {"q_proj": (32, 32), "k_proj": (16, 32), "gate_proj": (64, 32), "down_proj": (32, 64)}


def matrix_table(layers=5, seed=0) -> pd.DataFrame:
    """A metrics table: q 32x32, k 16x32, gate 64x32, down 32x64 per layer (gate and down: one shape
    up to transposition), alpha_peak and effective_rank drawn."""
    rng = np.random.default_rng(seed)
    rows = [{"param_name": f"model.layers.{i}.{b}.weight", "matrix": f"layers.{i}.{b}", "expert": np.nan,
             "block_type": b, "layer_index": float(i), "rows": r, "cols": c, "status": "ok",
             **{m: rng.uniform(2, 6) for m in ("alpha", "alpha_hill", "alpha_peak", "alpha_mid")},
             "effective_rank": rng.uniform(4, 30)}
            for i in range(layers) for b, (r, c) in SHAPES.items()]
    return pd.DataFrame(rows)


def spectra(matrices, seed=0) -> dict:
    """Power-law singular values, a different exponent per matrix."""
    rng = np.random.default_rng(seed)
    return {n: np.arange(1, k + 1, dtype=float) ** -rng.uniform(0.2, 1.5) for n, k in matrices["full_rank"].items()}


@pytest.fixture(scope="module")
def planned():
    matrices = lr.lowrank_matrices(matrix_table(), ["alpha_peak", "effective_rank"])
    return matrices, spectra(matrices)


def test_groups_pair_transposed_shapes(planned):
    matrices, _ = planned
    groups = lr.rank_groups(matrices)
    assert groups["model.layers.0.gate_proj.weight"] == groups["model.layers.0.down_proj.weight"] == "32x64"
    assert groups.nunique() == 3
    assert dict(zip(matrices["block_type"], matrices["break_even_rank"])) == {
        "q_proj": 16, "k_proj": 10, "gate_proj": 21, "down_proj": 21}


@pytest.mark.parametrize("budget", [0.2, 0.5, 0.9])
def test_every_plan_meets_the_budget_and_every_control_keeps_the_plans_parameters(planned, budget):
    matrices, sigmas = planned
    total = int(matrices["params"].sum())
    specs = lr.budget_specs(matrices, sigmas, budget, lr.FAMILIES, "alpha_peak", 0.3, seeds=4)
    by_name = {s["plan"]: s for s in specs}
    # within one rank of every shape group below the budget (the floors), never above it
    slack = sum(int(r) + int(c) for (r, c) in {tuple(sorted(x)) for x in zip(matrices["rows"], matrices["cols"])})
    for s in specs:
        kept = lr.plan_params(s["ranks"], matrices)
        assert kept == sum((r + c) * k for r, c, k in zip(matrices["rows"], matrices["cols"], s["ranks"]))
        assert kept <= budget * total, s["plan"]
        assert (s["ranks"] >= 1).all() and (s["ranks"] <= matrices["break_even_rank"]).all(), s["plan"]
        if s["kind"] != "energy" and s["of"] != "energy":
            assert kept >= budget * total - slack, s["plan"]
    for family in lr.FAMILIES:
        plan = by_name[f"{family}_{budget:g}"]
        kept = lr.plan_params(plan["ranks"], matrices)
        controls = [s for s in specs if s["of"] == family] + (
            [by_name[f"uniform_{budget:g}"]] if family != "energy" or f"uniform_energy_{budget:g}" not in by_name
            else [])
        assert {s["kind"] for s in controls} == {"mirror", "uniform", "random"}, family
        for s in controls:
            assert lr.plan_params(s["ranks"], matrices) == kept, s["plan"]  # exactly the plan's parameters
            for _, index in lr.rank_groups(matrices).groupby(lr.rank_groups(matrices)).groups.items():
                assert s["ranks"][index].sum() == plan["ranks"][index].sum()  # and per shape
        randoms = [tuple(s["ranks"]) for s in controls if s["kind"] == "random"]
        assert len(randoms) == 4 and len(set(randoms)) == 4  # distinct from each other...
        assert not set(randoms) & {tuple(s["ranks"]) for s in specs if s["kind"] != "random"}  # ...and the others
        for s in controls:
            if s["kind"] in ("mirror", "random"):  # permutations of the plan's ranks within each shape
                for _, index in lr.rank_groups(matrices).groupby(lr.rank_groups(matrices)).groups.items():
                    assert sorted(s["ranks"][index]) == sorted(plan["ranks"][index])
            if s["kind"] == "uniform":  # every matrix of a shape the same rank, up to one
                for _, index in lr.rank_groups(matrices).groupby(lr.rank_groups(matrices)).groups.items():
                    assert s["ranks"][index].max() - s["ranks"][index].min() <= 1
    assert len({s["plan"] for s in specs}) == len(specs)
    named = [tuple(s["ranks"]) for s in specs if s["kind"] in (*lr.FAMILIES, "mirror")]
    assert len(set(named)) == len(named)


def brute_force_energy(sigmas, matrices, budget):
    """The energy plan by scanning every energy level, with ranks counted by a loop."""
    best = None
    levels = sorted({float(x) for n, s in sigmas.items() for x in
                     (np.cumsum(s ** 2) / np.sum(s ** 2))[: int(matrices.loc[n, "break_even_rank"])]})
    for level in levels:
        ranks = {}
        for n, s in sigmas.items():
            energy, r = np.cumsum(s ** 2) / np.sum(s ** 2), 1
            while energy[r - 1] < level:
                r += 1
            ranks[n] = min(r, int(matrices.loc[n, "break_even_rank"]))
        kept = sum(ranks[n] * (int(matrices.loc[n, "rows"]) + int(matrices.loc[n, "cols"])) for n in ranks)
        if kept <= budget * matrices["params"].sum():
            best = (level, ranks)
    return best


@pytest.mark.parametrize("budget", [0.15, 0.4, 0.8])
def test_the_energy_plan_keeps_at_least_its_stated_energy_and_is_the_largest_that_fits(planned, budget):
    matrices, sigmas = planned
    ranks, fraction = lr.energy_plan(sigmas, matrices, budget)
    level, expected = brute_force_energy(sigmas, matrices, budget)
    assert fraction == level and ranks.to_dict() == expected
    for name, rank in ranks.items():
        capped = rank == matrices.loc[name, "break_even_rank"]
        assert capped or lr.kept_energy(sigmas[name], rank) >= fraction, name
        assert rank == 1 or lr.kept_energy(sigmas[name], rank - 1) < fraction or capped
    with pytest.raises(ValueError, match="rank 1 in every matrix"):
        lr.energy_plan(sigmas, matrices, 0.001)


def test_alpha_allocation_gives_lower_alpha_more_rank_and_its_mirror_the_reverse(planned):
    matrices, sigmas = planned
    specs = {s["plan"]: s for s in lr.budget_specs(matrices, sigmas, 0.5, ["alpha"], "alpha_peak", 0.3, 0)}
    alpha, mirror = specs["alpha_0.5"]["ranks"], specs["mirror_alpha_0.5"]["ranks"]
    for _, index in lr.rank_groups(matrices).groupby(lr.rank_groups(matrices)).groups.items():
        order = matrices.loc[index, "alpha_peak"].sort_values().index  # lowest alpha first
        assert (np.diff(alpha[order].to_numpy()) <= 0).all()  # keeps the most rank
        assert (np.diff(mirror[order].to_numpy()) >= 0).all()
        # by hand: the weights (1 + eps) - 2 eps (a - min) / (max - min), the shape's ranks in proportion
        a = matrices.loc[index, "alpha_peak"].to_numpy()
        weights = 1.3 - 0.6 * (a - a.min()) / (a.max() - a.min())
        share = weights / weights.sum() * alpha[index].sum()
        assert np.abs(alpha[index].to_numpy() - share).max() < 1 + 1e-9
    assert specs["uniform_0.5"]["of"] is None


def test_weighted_ranks_sum_exactly_within_their_bounds():
    assert lr.weighted_ranks([1, 1, 2], 8, 1, 10).tolist() == [2, 2, 4]
    assert lr.weighted_ranks([1, 1, 1], 8, 1, 10).tolist() == [3, 3, 2]  # the remainder to the first
    assert lr.weighted_ranks([10, 1, 1], 12, 1, 6).tolist() == [6, 3, 3]  # capped, the rest rescaled
    assert lr.weighted_ranks([100, 1, 1], 6, 1, 10).tolist() == [4, 1, 1]
    rng = np.random.default_rng(0)
    for _ in range(200):
        n, low, high = rng.integers(1, 9), 1, int(rng.integers(1, 30))
        total = int(rng.integers(n * low, n * high + 1))
        ranks = lr.weighted_ranks(rng.uniform(0.1, 3, n), total, low, high)
        assert ranks.sum() == total and ranks.min() >= low and ranks.max() <= high
    with pytest.raises(ValueError):
        lr.weighted_ranks([1, 1], 30, 1, 10)


def test_laser_reduces_the_last_layers_mlp_against_same_shaped_matrices_elsewhere(planned):
    matrices, _ = planned
    specs, missing = lr.laser_specs(matrices, ["down_proj", "gate_proj"], 2, 0.1, 1, seed=0)
    plans = [s for s in specs if s["kind"] == "laser"]
    assert [s["plan"] for s in plans] == ["laser_4_down_proj", "laser_4_gate_proj", "laser_3_down_proj",
                                          "laser_3_gate_proj"] and not missing
    chosen = set()
    for plan in plans:
        edited = plan["ranks"][plan["ranks"] > 0]
        assert list(edited.index) == [plan["matrix"]] and edited.iloc[0] == 3  # floor(0.1 x 32)
        row = matrices.loc[plan["matrix"]]
        controls = [s for s in specs if s["of"] == plan["plan"]]
        assert len(controls) == 1
        for control in controls:
            other = matrices.loc[control["matrix"]]
            assert other["block_type"] == row["block_type"] and (other["rows"], other["cols"]) == (row["rows"],
                                                                                                  row["cols"])
            assert other["layer_index"] < 3 and control["ranks"].sum() == 3 and control["matrix"] not in chosen
            chosen.add(control["matrix"])
    assert lr.laser_rank(576, 0.01) == 5 and lr.laser_rank(32, 0.01) == 1
    # three layers left for two plans, two controls each: the second gets the one left, never a repeat
    short, missing = lr.laser_specs(matrices, ["down_proj"], 2, 0.1, 2, seed=0)
    assert [len([s for s in short if s["of"] == p]) for p in ("laser_4_down_proj", "laser_3_down_proj")] == [2, 1]
    assert not missing
    every, missing = lr.laser_specs(matrices, ["down_proj"], 5, 0.1, 1, seed=0)  # every layer a LASER layer
    assert not [s for s in every if s["kind"] == "laser_control"] and len(missing) == 5
    assert missing[("laser_0_down_proj", "random_matrix")] == "no other down_proj of shape 32x64 outside the " \
                                                              "LASER layers"
    assert lr.laser_specs(matrices, ["down_proj"], 1, 0.1, 0, seed=0)[1] == {
        ("laser_4_down_proj", "random_matrix"): "none drawn (compress.lowrank.laser.controls: 0)"}


# --- the experiment on a real tiny model ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    """A tiny llama (4 layers) in memory, its base evaluation on 4 random windows, its metrics."""
    import transformers

    from blockscope.evaluation.forward import evaluate_base

    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
    model = transformers.LlamaForCausalLM(config).eval()
    windows = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(0))
    base = evaluate_base(model, windows, top_k=8)
    rng = np.random.default_rng(0)
    rows = [{"param_name": n, "matrix": n, "expert": np.nan, "block_type": n.split(".")[-2],
             "layer_index": float(n.split(".")[2]), "rows": p.shape[0], "cols": p.shape[1], "status": "ok",
             **{m: rng.uniform(2, 6) for m in ("alpha", "alpha_hill", "alpha_peak", "alpha_mid")},
             "effective_rank": rng.uniform(5, 15)}
            for n, p in model.named_parameters() if ".layers." in n and p.ndim == 2]
    return model, base, pd.DataFrame(rows)


SETTINGS = {"budgets": [0.5], "allocations": ["energy", "alpha"], "alpha_metric": "alpha_peak", "eps": 0.3,
            "random_seeds": 2, "block_types": None, "last_layers": None,
            "laser": {"enabled": True, "block_types": ["down_proj", "up_proj"], "last_layers": 1,
                      "rank_fraction": 0.1, "controls": 1, "seed": 0}}


def run_experiment(tiny, settings=SETTINGS):
    model, base, metrics = tiny
    matrices = lre.planned_matrices(metrics, settings)
    swap = WeightSwap(model, list(matrices.index))
    factors = lr.Factors(swap.original)
    scorer = Scorer(model, base, "cpu", swap, 50, 4)
    return lre.lowrank_experiment(scorer, matrices, factors, settings, "tiny"), matrices, swap


def test_the_experiment_scores_every_plan_once_and_restores_the_weights(tiny):
    from blockscope.evaluation.forward import evaluate_variant

    model, base, _ = tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    outcome, matrices, swap = run_experiment(tiny)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the originals back
    table = outcome.table.set_index("plan")
    assert list(outcome.table.columns) == LOWRANK_SUMMARY_COLUMNS
    assert {c: str(outcome.table[c].dtype) for c in ("seed", "params_kept", "budget")} == {
        "seed": "Int64", "params_kept": "Int64", "budget": "float64"}
    assert column_type("plan") == "str" and column_type("rank") == "Int64"
    assert table.loc["base", "kind"] == "base" and table.loc["base", "params_share"] == 1
    kinds = outcome.table["kind"].value_counts().to_dict()
    assert kinds["laser"] == 2 and kinds["laser_control"] == 2 and kinds["random"] == 4
    assert set(outcome.scores) == set(table.index) - {"base"}
    # a plan's score is that of the model with the truncations written in by hand
    plan = "alpha_0.5"
    ranks = outcome.plans[plan]
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, rank in ranks.items():
            u, s, vh = np.linalg.svd(before[name].double().numpy(), full_matrices=False)
            params[name].copy_(torch.from_numpy((u[:, :rank] * s[:rank]) @ vh[:rank]).float())
        direct = evaluate_variant(model, base, "cpu", 4)
        for name in ranks:
            params[name].copy_(before[name])
    assert outcome.scores[plan].nll == pytest.approx(direct.nll, rel=1e-5)
    assert table.loc[plan, "perplexity"] == pytest.approx(direct.summary()["perplexity"], rel=1e-5)
    # the allocations: one row per edited matrix, its error against a direct computation
    allocations = outcome.details["allocations"]
    assert list(allocations.columns) == LOWRANK_ALLOCATION_COLUMNS
    rows = allocations[allocations["plan"] == plan].set_index("param_name")
    assert len(rows) == len(matrices) and rows["rank"].to_dict() == ranks
    for name, rank in ranks.items():
        w = before[name].double().numpy()
        u, s, vh = np.linalg.svd(w, full_matrices=False)
        error = np.linalg.norm(w - (u[:, :rank] * s[:rank]) @ vh[:rank]) / np.linalg.norm(w)
        assert rows.loc[name, "relative_error"] == pytest.approx(error, rel=1e-8)
        assert rows.loc[name, "params_kept"] == rank * (w.shape[0] + w.shape[1])
    assert table.loc[plan, "params_kept"] == rows["params_kept"].sum()
    assert table.loc[plan, "params_share"] <= 0.5
    laser = allocations[allocations["plan"] == "laser_3_down_proj"]
    assert len(laser) == 1 and laser["rank"].iloc[0] == 3  # floor(0.1 x 32)
    assert outcome.details["stated_energy"]["energy_0.5"] == table.loc["energy_0.5", "stated_energy"]


def test_the_comparisons_have_the_declared_columns_and_verdicts(tiny):
    outcome, _, _ = run_experiment(tiny)
    model, base, _ = tiny
    out = lre.lowrank_comparisons(outcome.table, outcome.scores, base, "tiny", 0.95, 0.002, 3,
                                  missing=outcome.missing)
    assert list(out.columns) == layout.COMPARISON_COLUMNS and set(out["experiment"]) == {"lowrank"}
    assert set(out["verdict"].dropna()) <= set(layout.VERDICTS) and out["verdict"].notna().all()
    pairs = list(zip(out["plan"], out["against"]))
    assert pairs == [(p, a) for p in ("energy_0.5", "alpha_0.5") for a in ("mirror", "uniform", "random")] + [
        (p, a) for p in ("laser_3_down_proj", "laser_3_up_proj") for a in ("base", "random_matrix")]
    rows = out.set_index(["plan", "against"])
    assert rows.loc[("alpha_0.5", "uniform"), "against_plan"] == "uniform_0.5"
    assert rows.loc[("energy_0.5", "random"), "n_random"] == 2
    # against the base: the per-window mean difference of NLL per token, by hand
    d = (np.asarray(outcome.scores["laser_3_down_proj"].nll) - np.asarray(base.nll)) / np.asarray(base.tokens)
    row = rows.loc[("laser_3_down_proj", "base")]
    assert row["estimate"] == pytest.approx(d.mean()) and row["against_plan"] == "base" and row["articles"] == 3
    control = rows.loc[("laser_3_down_proj", "random_matrix"), "against_plan"]
    assert outcome.table.set_index("plan").loc[control, "of"] == "laser_3_down_proj"


def test_missing_controls_say_why(tiny):
    settings = {**SETTINGS, "allocations": ["alpha"], "random_seeds": 0,
                "laser": {**SETTINGS["laser"], "last_layers": 4, "block_types": ["down_proj"]}}
    outcome, _, _ = run_experiment(tiny, settings)
    model, base, _ = tiny
    out = lre.lowrank_comparisons(outcome.table, outcome.scores, base, "tiny", 0.95, 0.002, None,
                                  missing=outcome.missing).set_index(["plan", "against"])
    assert out.loc[("alpha_0.5", "random"), "against_plan"] == "none drawn (compress.lowrank.random_seeds: 0)"
    why = out.loc[("laser_3_down_proj", "random_matrix"), "against_plan"]
    assert why == "no other down_proj of shape 32x64 outside the LASER layers"
    assert pd.isna(out.loc[("laser_3_down_proj", "random_matrix"), "verdict"])


def test_a_budget_below_rank_one_names_the_key(tiny):
    from blockscope.errors import BlockscopeError

    with pytest.raises(BlockscopeError, match="compress.lowrank.budgets"):
        run_experiment(tiny, {**SETTINGS, "budgets": [0.01], "allocations": ["energy"]})
    with pytest.raises(BlockscopeError, match="outside"):
        lr.check_budget(1.0)


# --- the rule in the real workflow (slow) -------------------------------------------------------------------

WIKITEXT = ROOT.parent / "shared/data/wikitext-2-raw/wiki.test.raw"


@pytest.mark.slow
def test_the_lowrank_rule_in_the_workflow(tmp_path):
    if not WIKITEXT.exists():
        pytest.skip("shared WikiText-2 copy not present")
    vocab = word_tokenizer(tmp_path / "lm", WIKITEXT.read_text(encoding="utf-8").splitlines()[:400])
    save_tiny("LlamaForCausalLM", {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                   "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
                                   "vocab_size": vocab}, tmp_path / "lm")
    config = {"models": {"tiny-lm": {"source": "local", "path": str(tmp_path / "lm")}}, "device": "cpu",
              "embedding": {"k_max": 4}, "headmerge": {"enabled": False},
              "eval": {"seq_len": 32, "max_tokens": 256, "bootstrap": 100, "corpus": {"path": str(WIKITEXT)}},
              # a random init predicts at chance: 0 runs the experiments on it all the same
              "compress": {"random_seeds": 2, "min_bits_over_chance": 0, "sensitivity": {"enabled": False},
                           "save_variants": True,
                           "quant": {"formats": ["bf16"], "presets": ["alpha_pruning"]}}}
    folder = tmp_path / "work/results/tiny-lm/compress/lowrank"
    run_workflow(tmp_path / "work", config, f"{folder.relative_to(tmp_path / 'work')}/pareto.png",
                 f"{folder.relative_to(tmp_path / 'work')}/variant")
    summary, comparisons = pd.read_parquet(folder / "summary.parquet"), pd.read_parquet(folder / "comparisons.parquet")
    plans = json.loads((folder / "plans.json").read_text())
    # the defaults: budget 0.5, three allocations with their controls, LASER on the last 2 of 4 layers
    assert set(summary["kind"]) == {"base", "energy", "alpha", "effective_rank", "mirror", "uniform", "random",
                                    "laser", "laser_control"}
    spectral = summary[summary["budget"] == 0.5]
    assert (spectral["params_share"] <= 0.5).all() and (spectral["tokens_evaluated"] == 8 * 31).all()
    for family in ("energy", "alpha", "effective_rank"):
        own = spectral[(spectral["plan"] == f"{family}_0.5") | (spectral["of"] == family)]
        assert own["params_kept"].nunique() == 1, family  # mirror, uniform, random: the plan's parameters
    assert (summary["kind"] == "laser").sum() == 6 and plans["settings"]["laser"]["last_layers"] == 2
    assert list(comparisons.columns) == layout.COMPARISON_COLUMNS
    assert set(comparisons["verdict"].dropna()) <= set(layout.VERDICTS)
    assert set(comparisons["against"]) == {"mirror", "uniform", "random", "base", "random_matrix"}
    assert len(pd.read_csv(folder / "allocations.csv")) == len(pd.read_parquet(folder / "allocations.parquet"))
    assert (folder / "pareto.png").stat().st_size > 10_000
    assert set(itertools.chain(*plans["ranks"].values())) <= set(pd.read_parquet(folder / "allocations.parquet")
                                                                 ["param_name"])
    # the chosen variant reloads, its edited matrices at their ranks
    from transformers import AutoModelForCausalLM

    info = json.loads((folder / "variant/variant.json").read_text())
    assert info["plan"] in set(summary.loc[summary["kind"].isin(["energy", "alpha", "effective_rank", "mirror",
                                                                   "laser"]), "plan"])
    weights = dict(AutoModelForCausalLM.from_pretrained(folder / "variant").named_parameters())
    for name, rank in info["ranks"].items():  # stored in float32: what lies beyond the rank is its rounding
        sigma = torch.linalg.svdvals(weights[name].detach().double())
        assert sigma[rank - 1] / sigma[0] > 1e-4 and (rank == len(sigma) or sigma[rank] / sigma[0] < 1e-6), name
