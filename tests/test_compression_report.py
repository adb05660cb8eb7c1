"""The compression experiments in the report: findings read from hand-made comparisons tables (a
winner named only on a verdict of better or worse, intervals in nats and in perplexity %), the
random controls' distribution, the additive model's check and the source notes."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from blockscope.layout import COMPARISON_COLUMNS
from blockscope.reporting import compression_section as cs

LN = math.log  # differences chosen as logs of perplexity ratios, so the % are known by hand


def comparison(plan="hint_p", against="mirror", against_plan="mirror_p", estimate=0.0, low=-0.01, high=0.01,
               verdict="no detectable difference", p_value=np.nan, n_random=np.nan, experiment="quant") -> dict:
    row = {"model": "m", "experiment": experiment, "plan": plan, "against": against, "against_plan": against_plan,
           "metric": "nll", "estimate": estimate, "ci_low": low, "ci_high": high, "level": 0.95, "min_effect": 0.002,
           "verdict": verdict, "p_value": p_value, "n_random": n_random, "windows": 8, "tokens": 2040,
           "articles": 5}
    return {column: row[column] for column in COMPARISON_COLUMNS}


def frame(*rows) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=COMPARISON_COLUMNS)


def quant_summary() -> pd.DataFrame:
    rows = [{"model": "m", "plan": "base", "kind": "base", "perplexity": 20.0, "kl_divergence": 0.0},
            {"model": "m", "plan": "uniform_int8", "kind": "uniform", "bits_per_weight": 8.25, "perplexity": 21.0,
             "kl_divergence": 0.01, "predicted_kl": 0.012},
            {"model": "m", "plan": "hint_p", "kind": "hint", "of": "p", "bits_per_weight": 9.5,
             "direction": "lower alpha keeps more bits", "perplexity": 20.5, "kl_divergence": 0.02,
             "predicted_kl": 0.018},
            {"model": "m", "plan": "mirror_p", "kind": "mirror", "of": "p", "bits_per_weight": 9.5,
             "direction": "higher alpha keeps more bits", "perplexity": 20.7, "kl_divergence": 0.03,
             "predicted_kl": 0.021},
            {"model": "m", "plan": "oracle_p", "kind": "oracle", "of": "p", "bits_per_weight": 9.4,
             "perplexity": 20.2, "kl_divergence": 0.005, "predicted_kl": 0.004}]
    rng = np.random.default_rng(0)
    for kind, count in (("random", 7), ("budget_random", 5)):
        for seed in range(count):
            rows.append({"model": "m", "plan": f"{kind}_p_{seed}", "kind": kind, "of": "p", "seed": seed,
                         "bits_per_weight": 9.5, "perplexity": 20 + rng.uniform(0, 2),
                         "kl_divergence": rng.uniform(0.01, 0.05), "predicted_kl": np.nan})
    return pd.DataFrame(rows)


def test_no_detectable_difference_names_no_winner_and_prints_the_interval():
    # +2 % perplexity [-1 %, +5 %]: the interval covers zero
    rows = frame(comparison(estimate=LN(1.02), low=LN(0.99), high=LN(1.05)),
                 comparison(against="uniform", against_plan="uniform_int8", estimate=LN(0.99), low=LN(0.97),
                            high=LN(1.01)))
    (sentence,) = cs.quant_findings(rows, quant_summary())
    assert "is better" not in sentence and sentence.count("no detectable difference at this sample size") == 2
    assert "perplexity +2.00 % [-1.00 %, +5.00 %]" in sentence  # 100 (e^d - 1) at the estimate and both ends
    assert f"{LN(1.02):+.4f} nats per token, perplexity +2.00 %" in sentence
    assert "perplexity -1.00 % [-3.00 %, +1.00 %]" in sentence
    shown = cs.comparison_table(rows)  # the section's table: the nats interval and the same in %
    assert shown.loc[0, ["ci_low", "ci_high"]].tolist() == [LN(0.99), LN(1.05)]
    assert shown.loc[0, ["ppl %", "ppl % low", "ppl % high"]].tolist() == pytest.approx([2.0, -1.0, 5.0])
    assert sentence.startswith("Quantisation, preset p: hint_p (9.50 bits per weight, lower alpha keeps more bits)")
    assert "on 8 windows, 2040 tokens from 5 WikiText articles, plan minus control with 95 % CI" in sentence
    assert "against its mirror mirror_p, no detectable" in sentence
    assert "against uniform_int8, the uniform plan at or below its budget, no detectable" in sentence


def test_a_winner_is_named_only_by_its_verdict():
    rows = frame(
        comparison(estimate=-0.05, low=-0.08, high=-0.02, verdict="better"),
        comparison(against="uniform", against_plan="uniform_int8", estimate=0.03, low=0.01, high=0.05,
                   verdict="worse"),
        comparison(against="random", against_plan="mean of 7 random plans", estimate=0.01, low=0.004, high=0.016,
                   verdict="worse", p_value=0.875, n_random=7),
        comparison(against="budget_random", against_plan="mean of 5 budget-matched random plans", estimate=-0.001,
                   low=-0.0015, high=-0.0005, verdict="below minimum effect", p_value=1 / 6, n_random=5),
        comparison(against="oracle", against_plan="oracle_p", estimate=0.0, low=-0.01, high=0.01))
    (sentence,) = cs.quant_findings(rows, quant_summary())
    clauses = sentence.split("; against ")
    assert "hint_p is better" in clauses[0] and "mirror_p is better" not in sentence
    assert "uniform_int8 is better" in clauses[1]
    assert "the mean of its 7 distinct within-shape random plans, the within-shape random plans' mean is better" \
        in clauses[2] and "rank p = 0.88 among them" in clauses[2]
    assert "the mean of its 5 distinct budget-matched random plans, a difference below the minimum effect of " \
           "0.002 nats per token" in clauses[3] and "rank p = 0.17" in clauses[3]
    assert "is better" not in clauses[3] + clauses[4]
    assert "the oracle plan oracle_p" in clauses[4] and "no detectable difference" in clauses[4]
    # the percentage of a better plan, by hand: 100 (e^-0.05 - 1) = -4.877 %
    assert "perplexity -4.88 % [-7.69 %, -1.98 %]" in clauses[0]


def test_controls_come_in_a_fixed_order_and_a_missing_one_says_why():
    rows = frame(comparison(against="oracle", against_plan="oracle_p"),
                 comparison(against="random", against_plan="mean of 3 random plans", p_value=0.5, n_random=3),
                 comparison(estimate=0.0, low=0.0, high=0.0))
    missing = comparison(against="uniform", against_plan="none at or below this budget")
    missing.update(estimate=np.nan, ci_low=np.nan, ci_high=np.nan, verdict=np.nan)
    (sentence,) = cs.quant_findings(pd.concat([rows, frame(missing)], ignore_index=True), quant_summary())
    order = [sentence.index(text) for text in ("its mirror", "uniform plan at or below", "random plans",
                                               "the oracle plan")]
    assert order == sorted(order)
    assert "against the uniform plan at or below its budget: none (none at or below this budget)" in sentence
    assert "against its mirror mirror_p: identical scores on every window (the same weights), no direction" \
        in sentence


def test_pruning_findings_one_per_target_and_without_a_summary():
    rows = frame(comparison("alpha_0.5", "mirror", "mirror_0.5", experiment="prune"),
                 comparison("alpha_0.5", "uniform", "uniform_0.5", -0.02, -0.03, -0.01, "better", experiment="prune"),
                 comparison("alpha_0.7", "random", "mean of 4 random allocations", 0.0, -0.01, 0.01, p_value=0.4,
                            n_random=4, experiment="prune"))
    summary = pd.DataFrame({"plan": ["alpha_0.5", "alpha_0.7"], "kind": "alpha", "target": [0.5, 0.7],
                            "direction": "higher alpha pruned more (AlphaPruning)"})
    first, second = cs.prune_findings(rows, summary)
    assert first.startswith("Pruning at 0.5 sparsity: alpha_0.5 (higher alpha pruned more (AlphaPruning))")
    assert "against uniform_0.5, the uniform allocation, alpha_0.5 is better" in first
    assert "the mean of its 4 distinct random allocations, no detectable difference" in second
    assert [s.split(":")[0] for s in cs.prune_findings(rows)] == ["Pruning at 0.5 sparsity", "Pruning at 0.7 sparsity"]
    assert cs.prune_findings(frame()) == [] and cs.quant_findings(None) == []


def test_random_distribution_is_the_quantiles_of_the_distinct_plans():
    summary = quant_summary()
    table = cs.random_distribution(summary, "quant").set_index("control")
    for kind, control in (("random", "within-shape random plans"), ("budget_random", "budget-matched random plans")):
        plans = summary[summary["kind"] == kind]
        row = table.loc[control]
        assert row["plans"] == len(plans) and row["of"] == "p"
        q05, median, q95 = np.quantile(plans["perplexity"], [0.05, 0.5, 0.95])
        assert (row["perplexity 5 %"], row["perplexity median"], row["perplexity 95 %"]) == pytest.approx(
            (q05, median, q95))
        kl = np.quantile(plans["kl_divergence"], [0.05, 0.5, 0.95])
        assert (row["KL 5 %"], row["KL median"], row["KL 95 %"]) == pytest.approx(tuple(kl))
    # the plan table keeps the oracle and drops the random plans (shown as their distribution)
    shown = cs.plan_table(summary, "quant")
    assert "oracle_p" in set(shown["plan"]) and not shown["plan"].str.contains("random").any()


def test_additive_check_gives_spearman_and_the_largest_relative_error():
    summary = quant_summary()
    sentence = cs.additive_check(summary)
    rows = summary[summary["predicted_kl"].notna()]
    rho = stats.spearmanr(rows["predicted_kl"], rows["kl_divergence"]).statistic
    assert f"measured KL of the {len(rows)} evaluated plans: Spearman's rho {rho:.2f}" in sentence
    # relative errors |pred - meas| / meas: 0.2, 0.1, 0.3, 0.2 -> mirror_p's 30 % is the largest
    assert "largest relative error 30 % (mirror_p)" in sentence
    assert "predicted / measured median 0.85 (from 0.70 to 1.20)" in sentence
    assert cs.additive_check(summary.assign(predicted_kl=np.nan)) is None


def test_source_lines_say_the_group_used_and_what_each_format_was_evaluated_as():
    from blockscope.compression.source_blocks import int4_group_for, source_effects

    plans_json = {"group_size": 48, "simulated_as": {
        "hint_p": {"bf16": "bf16 (round to nearest even)",
                   "fp8/int8": "fp8-e4m3 with one fp16 scale per output row; fp8/int8 names more than one format "
                               "and only fp8-e4m3 is evaluated"},
        "uniform_bf16": {"bf16": "bf16 (round to nearest even)"}}}
    text = "\n".join(cs.source_lines(["Q4_1"], plans_json, group_size=32))
    assert "stored as Q4_1" in text
    # a group that int4_group_for did not choose: only the bare note
    assert "int4 was evaluated with groups of 48 inputs, not `quantization.group_size` = 32." in text
    assert "- `fp8/int8`: fp8-e4m3 with one fp16 scale per output row; fp8/int8 names more than one format" in text
    assert text.count("`bf16`") == 1
    # what a Q4_1 source does to each answer, one bullet per sentence of source_effects
    effects = source_effects(["Q4_1"])
    assert effects and all(f"- {sentence}" in text for sentence in effects)
    # the group int4_group_for chose on a Q4_1 source (not 32, its blocks): the report says why
    group, reason = int4_group_for(["Q4_1"], 32)
    assert group != 32 and "not the configured 32" in reason
    chosen = cs.source_lines(["Q4_1"], {**plans_json, "group_size": group}, 32)
    assert reason in chosen and not any("was evaluated with groups" in line for line in chosen)
    # a BF16 source: no effects, no group sentence when the configured group ran
    plain = "\n".join(cs.source_lines(["BF16"], {**plans_json, "group_size": 32}, 32))
    assert "What this source does" not in plain and "groups of" not in plain


def test_section_shows_findings_comparisons_plans_and_random_controls():
    comparisons = frame(comparison(estimate=LN(1.02), low=LN(0.99), high=LN(1.05)))
    lines = cs.compress_section(quant_summary(), None, ["BF16"], comparisons={"quant": comparisons},
                                link=lambda p: f"../{p}")
    text = "\n".join(lines)
    assert "- Quantisation, preset p: hint_p" in text
    assert "([table](../results/m/compress/quant/comparisons.csv))" in text
    header = next(line for line in lines if line.startswith("| plan ") and "against" in line)
    assert "ppl %" in header and "verdict" in header
    assert "Random controls (distinct plans" in text and "budget-matched random plans" in text
    assert "The additive model" in text and "oracle_p" in text
    assert "### Unstructured magnitude pruning\n\n_(none)_" in text


def test_findings_and_sensitivity_findings_are_read_from_the_files_at_hand(tmp_path, monkeypatch):
    from blockscope.compression.metric_prediction import metric_correlations

    monkeypatch.chdir(tmp_path)
    quant = tmp_path / "results/m/compress/quant"
    quant.mkdir(parents=True)
    frame(comparison()).to_parquet(quant / "comparisons.parquet")
    quant_summary().to_parquet(quant / "summary.parquet")
    paths = ["results/m/compress/quant/comparisons.parquet", "results/m/compress/quant/summary.parquet"]
    (found,) = cs.compress_findings("m", paths, "results/m")
    assert found.endswith("([table](compress/quant/comparisons.csv))") and "hint_p (9.50 bits" in found
    assert cs.compress_findings("m", paths[1:], "results/m") == []  # no comparisons table: no finding

    rng = np.random.default_rng(0)
    alpha_hill = rng.uniform(2, 6, 30)
    matrices = pd.DataFrame({"model": "m", "param_name": [f"w{i}" for i in range(30)], "block_type": "q_proj",
                             "layer_index": np.arange(30), "params": 4096, "alpha_hill": alpha_hill,
                             "int4_kl": 0.01 * alpha_hill + rng.normal(0, 0.002, 30), "int4_measured": True,
                             "int4_weight_error": rng.uniform(0, 1, 30)})
    folder = tmp_path / "results/m/compress/sensitivity"
    folder.mkdir(parents=True)
    matrices.to_parquet(folder / "matrices.parquet")
    metric_correlations(matrices, samples=200).to_parquet(folder / "metric_correlations.parquet")
    files = ["results/m/compress/sensitivity/matrices.parquet",
             "results/m/compress/sensitivity/metric_correlations.parquet"]
    (sentence,) = cs.sensitivity_report_findings("m", files, "results/m")
    assert "alpha_hill predicts it best" in sentence
    assert sentence.endswith("([table](compress/sensitivity/metric_correlations.csv))")
    assert cs.sensitivity_report_findings("m", files[:1], "results/m") == []  # compress.sensitivity off
