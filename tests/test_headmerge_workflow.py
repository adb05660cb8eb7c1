"""The head-merge stage in the real workflow: a tiny causal LM with a real tokenizer, and an encoder."""

import copy
import itertools
import json
import re
import shutil

import pandas as pd
import pytest

from conftest import ROOT, WORKFLOW_BASE, copy_tree, run_workflow, save_tiny, word_tokenizer

pytestmark = pytest.mark.slow
WIKITEXT = ROOT.parent / "shared/data/wikitext-2-raw/wiki.test.raw"
PLOTS = ("sweep", "pairs_per_layer", "similarity_matrices", "similarity_histograms")


def plot_targets(*models):
    # the figures by name (a dry run that asks for them alone)
    return [f"results/{m}/headmerge/{name}.png" for m in models for name in PLOTS]


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    if not WIKITEXT.exists():
        pytest.skip("shared WikiText-2 copy not present")
    root = tmp_path_factory.mktemp("headmerge")
    vocab = word_tokenizer(root / "lm", WIKITEXT.read_text(encoding="utf-8").splitlines()[:400])
    save_tiny("LlamaForCausalLM", {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                   "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                   "vocab_size": vocab}, root / "lm")
    save_tiny("BertForMaskedLM", {"model_type": "bert", "hidden_size": 32, "intermediate_size": 64,
                                  "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 128}, root / "enc")
    config = {"models": {"tiny-lm": {"source": "local", "path": str(root / "lm")},
                         "tiny-bert": {"source": "local", "path": str(root / "enc")}},
              "device": "cpu", "embedding": {"k_max": 4},
              "eval": {"seq_len": 32, "max_tokens": 512, "bootstrap": 200, "corpus": {"path": str(WIKITEXT)}},
              "headmerge": {"thresholds": [0.001, 0.99], "random_seeds": 2},
              # the tiny LM is a random init, at chance: 0 runs the experiments on it all the same
              "compress": {"random_seeds": 2, "save_variants": True, "quant": {"formats": ["bf16", "int4"]},
                           "min_bits_over_chance": 0, "max_tokens": 256}}
    run_workflow(root / "work", config, "all", *plot_targets("tiny-lm", "tiny-bert"))
    return root / "work"


def test_threshold_json_format_and_controls(merged):
    from blockscope import layout

    low = json.loads((merged / "results/tiny-lm/headmerge/threshold_0.001.json").read_text())
    for key in ("threshold", "original_metrics", "merged_metrics", "total_merged_pairs", "layer_results",
                "tokens_evaluated", "kl_divergence", "top1_agreement", "random_control", "perplexity_change_ci95",
                "similarity", "dtype", "device"):
        assert key in low, key
    assert set(low["original_metrics"]) == {"perplexity", "accuracy"} and low["tokens_evaluated"] == 16 * 31
    assert low["total_merged_pairs"] == sum(r["num_pairs"] for r in low["layer_results"].values()) > 0
    layer = low["layer_results"]["0"]
    assert len(layer["similarity_matrix"]) == 4 and all(p[2] > 0.001 for p in layer["pairs"])
    assert low["kl_divergence"] > 0 and low["merged_metrics"]["perplexity"] != low["original_metrics"]["perplexity"]
    # the controls: each layer's groups under a relabelling of its heads, distinct, as many as exist up to 2
    possible = 1
    for result in low["layer_results"].values():  # relabellings by enumeration, the plan's own among them
        possible *= len({tuple(sorted(tuple(sorted(p[h] for h in g)) for g in result["groups"]))
                         for p in itertools.permutations(range(4))})
    control = low["random_control"]
    assert control["distinct"] == len(control["runs"]) == min(2, possible - 1)
    for run in control["runs"]:
        for layer, result in low["layer_results"].items():
            groups = run["groups"].get(layer, [])
            assert sorted(map(len, groups)) == sorted(map(len, result["groups"]))  # as many heads removed
    ci = low["perplexity_change_ci95"]
    assert ci[0] <= ci[1]
    high = json.loads((merged / "results/tiny-lm/headmerge/threshold_0.99.json").read_text())
    assert high["total_merged_pairs"] == 0 and high["merged_metrics"] == high["original_metrics"]
    assert high["original_metrics"] == low["original_metrics"]  # the base is evaluated once and reused
    summary = pd.read_parquet(merged / "results/tiny-lm/headmerge/summary.parquet")
    assert list(summary["threshold"]) == [0.001, 0.99]
    assert list(summary["heads_removed"]) == [low["heads_removed"], 0]
    assert set(summary["selected_on"]) == {"even"} and set(summary["reported_on"]) == {"odd"}
    assert list(summary["heldout_windows"]) == [8, 8] and list(summary["heldout_tokens"]) == [8 * 31, 8 * 31]
    from blockscope.evaluation.head_merge import headline_index

    assert headline_index(summary, 100.0) in (0, None)  # merging nothing is never the headline
    assert (merged / "results/tiny-lm/headmerge/sweep.png").stat().st_size > 10_000
    for t in (0.001, 0.99):  # per threshold: original vs merged vs random, and the pairs by layer
        for name in (f"comparison_{t}", f"pairs_by_layer_{t}"):
            assert (merged / f"results/tiny-lm/headmerge/{name}.png").stat().st_size > 10_000, name
            assert (merged / f"results/tiny-bert/headmerge/{name}.png").exists(), name  # skipped: says why
    comparisons = pd.read_parquet(merged / "results/tiny-lm/headmerge/comparisons.parquet")
    assert list(comparisons.columns) == layout.COMPARISON_COLUMNS
    assert list(zip(comparisons["plan"], comparisons["against"])) == [
        ("threshold_0.001", "base"), *([("threshold_0.001", "random")] if control["distinct"] else []),
        ("threshold_0.99", "base")]
    assert set(comparisons["experiment"]) == {"headmerge"} and (comparisons["windows"] == 16).all()
    assert len(pd.read_csv(merged / "results/tiny-lm/headmerge/comparisons.csv")) == len(comparisons)
    skipped = pd.read_parquet(merged / "results/tiny-bert/headmerge/comparisons.parquet")
    assert skipped.empty and list(skipped.columns) == layout.COMPARISON_COLUMNS
    assert "on the even windows" in (merged / "results/tiny-lm/report.md").read_text()  # the finding
    sims = pd.read_parquet(merged / "results/tiny-lm/headmerge/similarities.parquet")
    assert set(sims["measure"]) == {"wq", "qk", "ov"} and set(sims["layer"]) == {0, 1} and len(sims) == 2 * 3 * 16


def test_the_base_is_evaluated_once_into_its_own_files(merged):
    from blockscope import layout

    base = json.loads((merged / "results/tiny-lm/eval/base.json").read_text())
    low = json.loads((merged / "results/tiny-lm/headmerge/threshold_0.001.json").read_text())
    assert base["tokens_evaluated"] == low["tokens_evaluated"] == 16 * 31 and base["top_k"] == 64
    # head merging read the base's scores from the file: the same numbers, no second evaluation
    assert base["perplexity"] == low["original_metrics"]["perplexity"]
    assert base["corpus_sha256"] == low["corpus_sha256"] and base["seq_len"] == low["seq_len"] == 32
    assert "base (results/tiny-lm/eval/base.safetensors)" in (merged / "logs/tiny-lm/headmerge.log").read_text()
    table = pd.read_parquet(merged / "results/tiny-lm/eval/base_windows.parquet")
    assert list(table.columns) == layout.EVAL_WINDOW_COLUMNS and len(table) == 16
    skipped = json.loads((merged / "results/tiny-bert/eval/base.json").read_text())
    assert skipped["skipped"].startswith("no tokenizer in the checkpoint")  # an encoder, but no tokenizer


def test_new_thresholds_rerun_head_merging_but_not_the_base_evaluation(merged, tmp_path):
    import yaml

    work = tmp_path / "work"
    copy_tree(merged, work)
    config = yaml.safe_load((merged / "config.yaml").read_text())
    config["headmerge"]["thresholds"] = [0.001, 0.5]
    result = run_workflow(work, config, "--dry-run", "all")
    rerun = set(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", result.stdout + result.stderr, re.M))
    assert "headmerge" in rerun and "evaluate_base" not in rerun


def test_a_new_headline_tolerance_rewrites_the_reports_alone(merged, tmp_path):
    """The headline threshold is chosen when the report is written, from the summary's columns."""
    import yaml

    work = tmp_path / "work"
    copy_tree(merged, work)
    config = yaml.safe_load((merged / "config.yaml").read_text())
    config.setdefault("report", {}).setdefault("findings", {})["ppl_tolerance"] = 0.5
    result = run_workflow(work, config, "--dry-run", "all")
    rerun = set(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", result.stdout + result.stderr, re.M))
    assert rerun - {"all"} == {"model_report", "summary_report"}, rerun


def test_an_encoder_without_a_tokenizer_is_skipped_with_a_reason(merged):
    skipped = json.loads((merged / "results/tiny-bert/headmerge/threshold_0.001.json").read_text())
    assert skipped["skipped"].startswith("no tokenizer in the checkpoint")
    assert "skipped" in (merged / "logs/tiny-bert/headmerge.log").read_text()
    assert all((merged / f"results/tiny-bert/headmerge/{name}.png").exists() for name in PLOTS)
    heads = pd.read_parquet(merged / "results/tiny-bert/heads.parquet")
    assert len(heads) == 2 * 4  # BERT's heads are still analysed


def test_editing_the_plots_reruns_only_the_plot_rule(merged, tmp_path):
    work, workflow = tmp_path / "work", tmp_path / "workflow"
    copy_tree(merged, work)
    workflow.mkdir()
    for part in ("Snakefile", "rules", "workflow_scripts", "schemas", "blockscope", "report", "profiles"):
        (shutil.copytree if (ROOT / part).is_dir() else shutil.copy)(ROOT / part, workflow / part)
    script = workflow / "workflow_scripts/headmerge_plots.py"
    script.write_text(script.read_text() + "\n# an edit\n")
    config = (merged / "config.yaml").read_text()
    import yaml

    result = run_workflow(work, yaml.safe_load(config), "--dry-run", *plot_targets("tiny-lm"),
                          snakefile=workflow / "Snakefile")
    rerun = set(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", result.stdout + result.stderr, re.M))
    assert rerun == {"headmerge_plots"}


@pytest.mark.parametrize("edited, planned", [
    # rewording the report's sentences on the experiments, or its findings, reruns the reports alone
    ("blockscope/reporting/compression_section.py", {"model_report", "summary_report", "all"}),
    ("blockscope/reporting/findings.py", {"model_report", "summary_report", "all"}),
    ("blockscope/reporting/markdown.py", {"model_report", "summary_report", "all"}),
    # config validation runs at every DAG build; no rule's results depend on its code
    ("blockscope/config/cross_keys.py", {"all"}),
])
def test_a_report_or_config_edit_reruns_no_computation(merged, tmp_path, edited, planned):
    import yaml

    work, workflow = tmp_path / "work", tmp_path / "workflow"
    copy_tree(merged, work)
    workflow.mkdir()
    for part in ("Snakefile", "rules", "workflow_scripts", "schemas", "blockscope", "report", "profiles"):
        (shutil.copytree if (ROOT / part).is_dir() else shutil.copy)(ROOT / part, workflow / part)
    (workflow / edited).write_text((workflow / edited).read_text() + "\n# an edit\n")
    result = run_workflow(work, yaml.safe_load((merged / "config.yaml").read_text()), "--dry-run", "all",
                          snakefile=workflow / "Snakefile")
    rerun = set(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", result.stdout + result.stderr, re.M))
    assert rerun - {"all"} == planned - {"all"}, rerun


def planned_jobs(result) -> set:
    return set(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", result.stdout + result.stderr, re.M))


def test_models_without_a_tokenizer_get_their_reports_offline_without_a_corpus(finished_run, tmp_path, monkeypatch):
    """Synthetic models from a bare config have no tokenizer, so nothing of them can be evaluated:
    offline, with no corpus file, head merging and compression on, each writes why it was skipped
    and gets its report; the corpus is never fetched. The same config with the evaluation keys
    under headmerge (their place before 0.3.0) is read the same, with a warning per key."""
    from blockscope import layout

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # HF_HUB_OFFLINE is set by run_workflow
    work = tmp_path / "work"
    copy_tree(finished_run, work)
    config = copy.deepcopy(WORKFLOW_BASE)
    evaluation = {"corpus": {"path": str(tmp_path / "absent/wiki.test.raw")}, "seq_len": 16, "max_tokens": 64,
                  "bootstrap": 100}
    config.update(eval=evaluation, headmerge={"thresholds": [0.5, 0.9], "random_seeds": 1},
                  compress={"random_seeds": 1, "quant": {"formats": ["int8"]}})
    result = run_workflow(work, config, "all")  # exits 0
    assert {"evaluate_base", "headmerge", "compress_quant", "model_report"} <= planned_jobs(result)
    assert "fetch_corpus" not in planned_jobs(result) and not (work / layout.CORPUS).exists()
    assert "blockscope: 2 of 2 models finished" in result.stdout + result.stderr
    models = list(WORKFLOW_BASE["models"])
    for model in models:
        results = work / "results" / model
        assert json.loads((results / "eval/base.json").read_text())["skipped"].startswith(
            "no tokenizer in the checkpoint")
        for t in (0.5, 0.9):
            skipped = json.loads((results / f"headmerge/threshold_{t}.json").read_text())
            assert skipped["threshold"] == t and skipped["skipped"].startswith("no tokenizer in the checkpoint")
        assert "skipped: no tokenizer" in (work / f"logs/{model}/headmerge.log").read_text()
        assert all((results / f"headmerge/{name}.png").exists() for name in PLOTS)
        for experiment in ("quant", "prune"):
            plans = json.loads((results / f"compress/{experiment}/plans.json").read_text())
            assert plans["skipped"].startswith("no tokenizer in the checkpoint")
        report = results / "report.md"
        assert report.stat().st_mtime > (finished_run / "results" / model / "report.md").stat().st_mtime
        assert "no tokenizer in the checkpoint" in report.read_text()

    # the evaluation keys where they were before 0.3.0: the same params, so nothing reruns
    old = copy.deepcopy(config)
    old["headmerge"].update(old.pop("eval"))
    result = run_workflow(work, old, "--dry-run", "all")
    assert planned_jobs(result) <= {"all"}, planned_jobs(result)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING config.yaml")]
    assert warnings == [f"WARNING config.yaml: config key headmerge.{key} is deprecated and read as eval.{key} "
                        f"until 0.5.0, which refuses it. Fix: rename it to eval.{key}." for key in evaluation]


def test_a_missing_corpus_costs_only_the_models_that_need_it(merged, tmp_path, monkeypatch):
    """Offline with no corpus, the causal LM with a tokenizer cannot be evaluated: fetch_corpus
    fails in one line naming eval.corpus, and the encoder beside it, which needs no corpus,
    is evaluated (skipped), merged, compressed and reported all the same."""
    import yaml

    from blockscope import layout

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    work = tmp_path / "work"
    copy_tree(merged, work)
    # no corpus, and tiny-lm as if new (no report yet): its outcome is then the run's to tell
    for path in (work / layout.CORPUS, work / "results/tiny-lm/report.md"):
        path.unlink()
    before = {name: (work / f"results/tiny-bert/{name}").stat().st_mtime for name in ("eval/base.json", "report.md")}
    config = yaml.safe_load((merged / "config.yaml").read_text())
    absent = tmp_path / "absent/wiki.test.raw"
    config["eval"].update(corpus={"path": str(absent)}, seq_len=16)  # new windows: every base evaluation reruns
    result = run_workflow(work, config, "all", check=False)
    assert result.returncode == 1
    log = (work / "logs/corpus.log").read_text().strip().splitlines()
    assert log[-1] == (
        "ERROR eval.corpus: cannot load Salesforce/wikitext/wikitext-2-raw-v1 through datasets "
        f"(ConnectionError) and eval.corpus.path {absent} does not exist. Fix: check the network, or place "
        "wiki.test.raw somewhere and set eval.corpus.path to it.")
    assert json.loads((work / "results/tiny-bert/eval/base.json").read_text())["skipped"].startswith(
        "no tokenizer in the checkpoint")
    assert all((work / f"results/tiny-bert/{name}").stat().st_mtime > mtime for name, mtime in before.items())
    assert json.loads((work / "results/tiny-lm/eval/base.json").read_text())["seq_len"] == 32  # not rerun
    assert not (work / "results/tiny-lm/report.md").exists()
    out = result.stdout + result.stderr
    assert "blockscope: 1 of 2 models finished (tiny-bert)" in out and "NOT FINISHED tiny-lm: not reached" in out


# --- the compression experiments on the same run ---------------------------------------------------------

def test_quantisation_plans_are_evaluated_against_the_base(merged):
    quant = pd.read_parquet(merged / "results/tiny-lm/compress/quant/summary.parquet")
    # base, 2 uniform, and per preset its hint plan, the mirror, up to 2 distinct random assignments and up
    # to 5 budget-matched ones; original_script's hint is fp16 everywhere on this random init: no other
    # plan has its budget. No oracle: the sensitivity estimates of formats [bf16, int4] lack fp8-e4m3.
    assert list(quant["kind"].value_counts().sort_index().items()) == [
        ("base", 1), ("budget_random", 5), ("hint", 2), ("mirror", 2), ("random", 2), ("uniform", 2)]
    assert set(quant.loc[quant["kind"].isin(["random", "budget_random"]), "of"]) == {"alpha_pruning"}
    by_plan = quant.set_index("plan")
    # hidden 32 and ffn 64: one int4 group per 32 inputs, scale and zero point 20 bits -> 4.625
    assert by_plan.loc["uniform_int4", "bits_per_weight"] == 4.625
    assert by_plan.loc["uniform_bf16", "bits_per_weight"] == 16
    assert 0 < by_plan.loc["uniform_bf16", "kl_divergence"] < by_plan.loc["uniform_int4", "kl_divergence"]
    assert by_plan.loc["base", "kl_divergence"] == 0 and (quant["ci_low"] <= quant["ci_high"]).all()
    # compress.max_tokens 256: the first 8 of the base evaluation's 16 windows of 32, base row included
    assert (quant["tokens_evaluated"] == 8 * 31).all()
    base = json.loads((merged / "results/tiny-lm/eval/base.json").read_text())
    assert base["tokens_evaluated"] == 16 * 31 and by_plan.loc["base", "perplexity"] != base["perplexity"]
    for preset in ("alpha_pruning", "original_script"):  # mirror and random controls keep the hint plan's budget
        same = (quant["of"] == preset) & quant["kind"].isin(["hint", "mirror", "random"])
        budget = quant.loc[same, "bits_per_weight"]
        assert budget.max() - budget.min() < 1e-9
        matched = quant.loc[(quant["of"] == preset) & (quant["kind"] == "budget_random"), "bits_per_weight"]
        assert (matched <= budget.max() + 1e-9).all()  # budget-matched: at most the hint's bits
        hint = json.loads((merged / f"results/tiny-lm/compress/quant/hint_{preset}.json").read_text())
        assert hint["preset"] == preset and len(hint["parameters"]) == 2 * 7
    report = (merged / "results/tiny-lm/report.md").read_text()
    assert "## Compression experiments" in report and "Quantisation, preset alpha_pruning" in report
    assert "compress/quant/pareto.png" in report
    # the findings are read from the comparisons table: against the mirror, with the sample they rest on
    finding = next(line for line in report.splitlines() if line.startswith("- Quantisation, preset alpha_pruning"))
    assert "against its mirror mirror_alpha_pruning" in finding and "on 8 windows, 248 tokens" in finding
    assert "(compress/quant/comparisons.csv)" in finding and "Random controls (distinct plans" in report
    # the cross-model report carries the same answers, linked from results/summary/
    summary = (merged / "results/summary/report.md").read_text()
    assert "Quantisation, preset alpha_pruning" in summary and "(../tiny-lm/compress/quant/comparisons.csv)" in summary
    assert "Pruning at 0.5 sparsity" in summary.split("### tiny-lm")[1]


def test_pruning_achieves_each_allocation(merged):
    prune = pd.read_parquet(merged / "results/tiny-lm/compress/prune/summary.parquet")
    allocations = pd.read_parquet(merged / "results/tiny-lm/compress/prune/allocations.parquet")
    # two layers: their two orders are the alpha allocation and its mirror, so no distinct random one
    assert list(prune["kind"]) == ["base", "uniform", "alpha", "mirror"]
    sizes = {32 * 32: 2, 16 * 32: 2, 32 * 64: 3}  # q, o | k, v | gate, up, down of the tiny llama
    assert len(allocations) == 3 * 2 * sum(sizes.values())  # 3 allocations x 2 layers x 7 matrices
    comparisons = pd.read_parquet(merged / "results/tiny-lm/compress/prune/comparisons.parquet")
    assert list(comparisons["against"]) == ["mirror", "uniform", "random"]
    assert comparisons["against_plan"].iloc[2] == "no distinct random plan" and pd.isna(comparisons["verdict"].iloc[2])
    assert ((allocations["achieved"] - allocations["allocated"]).abs() <= 1 / 512).all()
    assert prune.loc[prune["kind"] != "base", "sparsity"].sub(0.5).abs().max() < 1e-3


def test_the_saved_variant_reloads_and_runs(merged):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = merged / "results/tiny-lm/compress/prune/variant"
    info = json.loads((folder / "variant.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = AutoTokenizer.from_pretrained(folder)("the cat sat on the mat", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
    name, sparsity = next(iter(info["sparsity"].items()))
    weight = dict(model.named_parameters())[name]
    assert (weight == 0).float().mean().item() == pytest.approx(sparsity, abs=1 / weight.numel())
    assert (merged / "results/tiny-lm/compress/quant/variant/model.safetensors").exists()
    assert (merged / "results/tiny-bert/compress/quant/variant/skipped.txt").exists()


def test_editing_compress_settings_reruns_only_the_experiment(merged, tmp_path):
    import yaml

    work = tmp_path / "work"
    copy_tree(merged, work)
    config = yaml.safe_load((merged / "config.yaml").read_text())
    config["compress"]["prune"] = {"eps": 0.2}
    result = run_workflow(work, config, "--dry-run", "all")
    rerun = set(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", result.stdout + result.stderr, re.M))
    assert rerun == {"compress_prune", "compress_plots", "model_report", "summary_report", "all"}


def test_a_model_at_chance_is_not_compressed(merged, tmp_path):
    """With the default compress.min_bits_over_chance the tiny random LM (perplexity above its
    vocabulary) is skipped, the reason written, and only the experiments rerun."""
    import yaml

    work = tmp_path / "work"
    copy_tree(merged, work)
    config = yaml.safe_load((merged / "config.yaml").read_text())
    del config["compress"]["min_bits_over_chance"]
    run_workflow(work, config, "results/tiny-lm/compress/quant/summary.parquet")
    base = json.loads((work / "results/tiny-lm/eval/base.json").read_text())
    plans = json.loads((work / "results/tiny-lm/compress/quant/plans.json").read_text())
    assert plans["skipped"].startswith(f"tiny-lm predicts at chance: base perplexity {base['perplexity']:.0f}")
    assert pd.read_parquet(work / "results/tiny-lm/compress/quant/summary.parquet").empty
    assert (work / "results/tiny-lm/compress/quant/variant/skipped.txt").exists()
