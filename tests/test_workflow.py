"""The real workflow on tiny synthetic models: outputs, no-op reruns, per-model incrementality."""

import re
import shutil

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

from blockscope import layout, read_unit
from blockscope.planning.job_start import PER_UNIT_RULES
from blockscope.planning.model_plan import predicted_jobs
from blockscope.planning.slurm import slurm_request

from conftest import TINY_LLAMA, WORKFLOW_BASE, mtimes, run_workflow

pytestmark = pytest.mark.slow

BASE = WORKFLOW_BASE


def jobs_run(result):
    """(rule, model) of every job a snakemake run executed, from its log."""
    text = result.stdout + result.stderr
    rules = re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):\n(?:.*\n)*?\s+wildcards: ([^\n]*)", text, re.M)
    return {(rule, dict(kv.split("=") for kv in wc.split(", "))["model"]) for rule, wc in rules}


@pytest.fixture
def finished(finished_run):
    return finished_run


def clone(finished, tmp_path):
    target = tmp_path / "work"
    shutil.copytree(finished, target, symlinks=True)
    return target


def test_every_unit_is_extracted_bit_for_bit(finished):
    for model in BASE["models"]:
        inventory = pd.read_parquet(finished / f"results/{model}/inventory.parquet")
        weights = load_file(finished / f"resources/models/{model}/model.safetensors")
        assert set(inventory["param_name"]) == set(weights)
        for unit, rows in inventory.groupby("unit"):
            back = read_unit(finished / f"results/{model}/tensors/{unit}.parquet")
            assert set(back) == set(rows["param_name"])
            for name, array in back.items():
                assert array.tobytes() == weights[name].tobytes()
    # every unit has a file, even one with nothing in it (a tied model's head)
    assert (finished / "results/tiny-gpt2/tensors/lm_head.parquet").exists()
    assert read_unit(finished / "results/tiny-gpt2/tensors/lm_head.parquet") == {}


def test_log_shows_dims_and_unit_table(finished):
    log = (finished / "logs/tiny-llama/inventory.log").read_text()
    assert "layers=2" in log and "hidden=64" in log and "kv_heads=2" in log
    assert re.search(r"layer_001\s+9\s+7\s+F32", log)


def test_second_run_does_nothing(finished, tmp_path):
    work = clone(finished, tmp_path)
    before = mtimes(work / "results")
    result = run_workflow(work, BASE)
    assert jobs_run(result) == set()
    assert "Nothing to be done" in result.stdout + result.stderr
    assert mtimes(work / "results") == before


def test_adding_a_model_computes_that_model_alone(finished, tmp_path):
    work = clone(finished, tmp_path)
    before = mtimes(work / "results")
    new = {"source": "synthetic", "config": {**TINY_LLAMA, "num_hidden_layers": 3}, "seed": 1}
    config = {**BASE, "models": {**BASE["models"], "tiny-llama-3l": new}}
    result = run_workflow(work, config)
    assert {model for _, model in jobs_run(result)} == {"tiny-llama-3l"}
    summary = work / "results/summary"
    after = mtimes(work / "results")
    assert {k: v for k, v in after.items() if k in before and summary not in k.parents} == \
        {k: v for k, v in before.items() if summary not in k.parents}
    assert after[summary / "metrics.parquet"] != before[summary / "metrics.parquet"]  # cross-model tables rerun
    assert set(pd.read_parquet(summary / "metrics.parquet")["model"]) == {"tiny-llama", "tiny-gpt2", "tiny-llama-3l"}
    assert (work / "results/tiny-llama-3l/tensors/layer_002.parquet").exists()


def test_changing_one_source_reruns_that_model_alone(finished, tmp_path):
    work = clone(finished, tmp_path)
    before = mtimes(work / "results/tiny-llama")
    assert before
    config = {**BASE, "models": {**BASE["models"], "tiny-gpt2": {**BASE["models"]["tiny-gpt2"], "seed": 7}}}
    result = run_workflow(work, config)
    ran = jobs_run(result)
    assert {model for _, model in ran} == {"tiny-gpt2"} and ("fetch", "tiny-gpt2") in ran
    assert mtimes(work / "results/tiny-llama") == before
    old = read_unit(finished / "results/tiny-gpt2/tensors/layer_000.parquet")
    new = read_unit(work / "results/tiny-gpt2/tensors/layer_000.parquet")
    assert not np.array_equal(old["transformer.h.0.attn.c_attn.weight"], new["transformer.h.0.attn.c_attn.weight"])


def test_a_broken_model_fails_alone_with_one_clear_line(finished, tmp_path):
    work = clone(finished, tmp_path)
    (work / "results/tiny-llama/report.md").unlink()  # the good model has work left to do
    config = {**BASE, "models": {**BASE["models"], "broken": {"source": "local", "path": str(tmp_path / "nowhere")}}}
    result = run_workflow(work, config, check=False)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert f"ERROR [broken] {tmp_path / 'nowhere'}: the local checkpoint folder does not exist" in text
    assert not (work / "resources/models/broken").exists()
    assert (work / "results/tiny-llama/report.md").exists()
    assert "blockscope: 2 of 3 models finished (tiny-llama, tiny-gpt2)" in text
    assert "NOT FINISHED broken: fetch: [broken]" in text


def test_broken_models_never_stop_the_good_one(finished, tmp_path):
    """A truncated local checkpoint (inventory fails) and an offline hub model (fetch fails)
    beside a good model that still has every per-unit job to run."""
    work = clone(finished, tmp_path)
    shutil.rmtree(work / "results/tiny-gpt2")
    truncated = tmp_path / "truncated"
    shutil.copytree(finished / "resources/models/tiny-llama", truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    config = {**BASE, "models": {"tiny-gpt2": BASE["models"]["tiny-gpt2"],
                                 "truncated": {"source": "local", "path": str(truncated)},
                                 "offline": {"source": "hf", "repo_id": "Qwen/Qwen2.5-0.5B"}}}
    result = run_workflow(work, config, check=False)
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert (work / "results/tiny-gpt2/report.md").exists()
    assert len(list((work / "results/tiny-gpt2/metrics").glob("*.parquet"))) == 5
    assert "blockscope: 1 of 3 models finished (tiny-gpt2)" in text
    assert re.search(r"NOT FINISHED truncated: inventory: \[truncated\] .*truncated", text)
    assert "NOT FINISHED offline: fetch: [offline] cannot reach the Hugging Face hub" in text


def test_schema_error_stops_before_any_job(tmp_path):
    result = run_workflow(tmp_path / "w", {"models": {"a": {"source": "ftp"}}}, check=False)
    assert result.returncode != 0
    assert "models.a.source: 'ftp' is not allowed" in result.stdout + result.stderr


CONTRACT = layout.CONTRACT_METRICS_COLUMNS


def test_metrics_spectra_and_precision_per_unit(finished):
    for model in BASE["models"]:
        inventory = pd.read_parquet(finished / f"results/{model}/inventory.parquet")
        for unit, rows in inventory.groupby("unit"):
            metrics = pd.read_parquet(finished / f"results/{model}/metrics/{unit}.parquet")
            spectra = pd.read_parquet(finished / f"results/{model}/spectra/{unit}.parquet")
            precision = pd.read_parquet(finished / f"results/{model}/precision/{unit}.parquet")
            assert set(CONTRACT) <= set(metrics.columns)
            vectors = metrics[metrics["status"] == layout.STATISTICS_ONLY]
            metrics = metrics[metrics["status"] != layout.STATISTICS_ONLY]
            assert sorted(metrics["param_name"]) == sorted(rows.loc[rows["shape"].map(len) == 2, "param_name"])
            assert sorted(vectors["param_name"]) == sorted(rows.loc[rows["shape"].map(len) == 1, "param_name"])
            tensors = read_unit(finished / f"results/{model}/tensors/{unit}.parquet", names=list(vectors["param_name"]))
            for row in vectors.itertuples():  # 1-D: statistics of the stored values, no spectrum, no precision
                x = np.asarray(tensors[row.param_name], np.float64)
                assert row.rows == x.size and pd.isna(row.cols) and np.isnan(row.alpha)
                assert row.mean == pytest.approx(x.mean()) and row.std == pytest.approx(x.std())
                assert row.sparsity == pytest.approx(np.mean(np.abs(x) <= 1e-6))
            assert not set(vectors["param_name"]) & (set(spectra["param_name"]) | set(precision["param_name"]))
            assert (metrics["backend"] == "cpu").all() and (metrics["compute_dtype"] == "float32").all()
            counts = spectra.groupby("matrix").size()
            for row in metrics.itertuples():
                assert counts[row.matrix] == row.design_rank  # all singular values kept
            assert len(precision) == 3 * len(metrics)
    gpt2 = pd.read_parquet(finished / "results/tiny-gpt2/metrics/layer_000.parquet").set_index("param_name")
    assert tuple(gpt2.loc["transformer.h.0.mlp.c_fc.weight", ["rows", "cols"]]) == (128, 32)  # Conv1D transposed
    log = (finished / "logs/tiny-llama/anatomy/layer_000.log").read_text()
    assert "alpha" in log and all(f"{part}: computed" in log for part in ("spectra", "precision", "heads"))


def test_heads_deep_dive_and_embedding(finished):
    llama = pd.read_parquet(finished / "results/tiny-llama/heads/layer_001.parquet")
    assert list(llama["head"]) == [0, 1, 2, 3] and list(llama["kv_head"]) == [0, 0, 1, 1]
    gpt2 = pd.read_parquet(finished / "results/tiny-gpt2/heads/layer_000.parquet")
    assert len(gpt2) == 4 and gpt2["qk_effective_rank"].between(1, 8).all()  # fused c_attn, d_head 8
    assert len(pd.read_parquet(finished / "results/tiny-llama/heads/embed.parquet")) == 0
    assert "empty heads table" in (finished / "logs/tiny-llama/anatomy/embed.log").read_text()
    deep = pd.read_parquet(finished / "results/tiny-llama/heads/deep_dive/layer_1_head_0.parquet")
    assert len(deep) == 16 and deep["cumulative_energy"].iloc[-1] == pytest.approx(1.0)
    import json

    summary = json.loads((finished / "results/tiny-llama/embedding/summary.json").read_text())
    assert set(summary["matrices"]) == {"model.embed_tokens.weight", "lm_head.weight"}  # untied head too
    tokens = pd.read_parquet(finished / "results/tiny-llama/embedding/token_clusters.parquet")
    assert set(tokens["matrix"]) == set(summary["matrices"]) and (tokens["cluster"] >= 0).all()
    embed = read_unit(finished / "results/tiny-llama/tensors/embed.parquet")["model.embed_tokens.weight"]
    assert tokens[tokens["matrix"] == "model.embed_tokens.weight"]["token_id"].tolist() == list(range(len(embed)))
    assert pd.read_csv(finished / "results/tiny-llama/embedding/token_clusters.csv").shape == tokens.shape
    tied = json.loads((finished / "results/tiny-gpt2/embedding/summary.json").read_text())
    assert set(tied["matrices"]) == {"transformer.wte.weight"}
    assert (finished / "results/tiny-llama/embedding/pca.png").stat().st_size > 10_000


def test_tables_plots_and_reports(finished, tmp_path):
    import json

    model = finished / "results/tiny-llama"
    metrics = pd.read_parquet(model / "metrics.parquet")
    exported = layout.EXPORT_FIRST_COLUMNS
    assert list(metrics.columns[: len(exported)]) == exported and set(CONTRACT) <= set(metrics.columns)
    assert pd.read_csv(model / "metrics.csv").shape == metrics.shape
    assert len(json.loads((model / "metrics.json").read_text())) == len(metrics)
    wide = pd.read_csv(model / "precision_alpha_hill.csv")
    assert list(wide.columns) == (layout.PRECISION_WIDE_COLUMNS + ["alpha_fp32", "alpha_fp16", "alpha_bf16"]
                                  + layout.PRECISION_SENSITIVITY_COLUMNS)
    matrices = metrics[metrics["status"] != layout.STATISTICS_ONLY]
    assert len(wide) == len(matrices)  # one row per matrix, even where alpha-Hill is NaN at every precision
    summary = pd.read_csv(model / "precision_summary_statistics.csv")
    assert list(summary.columns) == layout.PRECISION_SUMMARY_COLUMNS
    heads = pd.read_parquet(model / "heads.parquet")
    assert len(heads) == 2 * 4 and {"tag", "layer_tag"} <= set(heads.columns)
    hints = json.loads((model / "quantization_config.json").read_text())
    assert hints["heuristic"] is True and set(hints["formats"]) == set(metrics["matrix"])
    assert hints["preset"] == "alpha_pruning" and hints["group_size"] == 32
    assert set(hints["parameters"]) == set(metrics["param_name"])
    for row in metrics.itertuples():
        entry = hints["parameters"][row.param_name]
        if row.status == "ok" and np.isfinite(row.alpha):
            assert entry["decision"] == "quantize" and entry["bits"] in (16, 8, 4) and entry["group_size"] == 32
            assert entry["value"] == pytest.approx(row.alpha)
        else:
            assert entry["decision"] == "keep" and entry["format"] is None and entry["reason"]
    report = (model / "report.md").read_text()
    for heading in ("## Model", "## Statistics by weight type", "## Phase analysis", "## Attention heads",
                    "### Deep dive: layer_1_head_0", "Components reaching 50/75/90/95/99"):
        assert heading in report
    assert "](plots/alpha_by_layer.png)" in report
    # content, not only headings: the numbers of the tables it summarises, links that resolve
    assert f"{len(matrices)} matrices analysed" in report
    assert "Rule: preset alpha_pruning: alpha thresholds [3.0, 5.0], lower alpha keeps more bits" in report
    statistics = pd.read_csv(model / "statistics_by_type.csv")
    for row in statistics[statistics["metric"] == "alpha"].itertuples():
        assert re.search(rf"\| {row.block_type}\s+\| alpha\s+\|\s+{row.count} \|.*\|\s+{row.mean:.3f} \|", report), row
    for link in re.findall(r"\]\(([^)]+)\)", report):
        assert (model / link).exists(), link
    costs = report[report.index("## Where the time went"):]
    for rule in ("extract", "anatomy"):
        assert re.search(rf"\| {rule}\s+\|\s+5 \|", costs), rule  # one job per unit, five units
    for png in ["plots/alpha_by_layer.png", "plots/esd_layer_0.png", "plots/esd_layer_1.png",
                "plots/heads_heatmap.png", "plots/precision_distributions.png", "plots/precision_sensitivity.png",
                "plots/precision/layers_000-001.png"]:
        assert (model / png).stat().st_size > 10_000, png
    assert (finished / "results/summary/plots/alpha_by_depth.png").exists()
    check_detail_tables(model, metrics, report)
    # the browsable report, built by snakemake itself
    run_workflow(finished, BASE, "--report", str(tmp_path / "report.html"))
    html = (tmp_path / "report.html").read_text()
    assert "tiny-llama" in html and "across models" in html and "heads_heatmap.png" in html


def check_detail_tables(model, metrics, report):
    """The detail tables: tables with their declared columns whose numbers
    agree with the tables they come from, figures, and their report sections."""
    details = {name: pd.read_csv(model / path.removeprefix("results/{model}/"))
             for name, path in layout.DETAIL_TABLES.items()}
    for name, frame in details.items():
        assert list(frame.columns) == layout.TABLES[name], name
    assert len(details["heads_by_head"]) == 4 and set(details["heads_by_head"]["rank_class"]) <= {"LOW", "MID", "HIGH"}
    assert details["heads_by_layer"]["heads"].tolist() == [4, 4]
    head_dim = pd.read_json(model / "model.json", typ="series")["head_dim"]  # d_head eigenvalues
    assert details["deep_dive_summary"][["layer", "head", "eigenvalues"]].values.tolist() == [[1, 0, head_dim]]
    down = details["down_projections"].set_index("matrix")
    stored = metrics[metrics["block_type"] == "down_proj"].set_index("matrix")
    assert sorted(down.index) == sorted(stored.index) and down["layer_index"].tolist() == [0, 1]
    for column in ("sigma_max", "condition_number", *layout.ENERGY_COLUMNS):  # the spectra agree with metrics
        assert np.allclose(down[column], stored.loc[down.index, column], rtol=1e-6), column
    phases = details["phase_statistics"]
    assert set(phases["phase"]) == {"early", "middle", "late"} and layout.ALL_TYPES in set(phases["block_type"])
    for png in ["plots/down_proj_variance.png", "plots/precision_categories/category_q_proj.png",
                "plots/precision_categories/category_down_proj.png"]:
        assert (model / png).stat().st_size > 10_000, png
    assert not (model / "plots/individual_layers").exists()  # report.per_matrix_charts is off by default
    for heading in ("## Attention heads: detail tables", "### Deep dives: eigenvalue summary",
                    "## Down projections (W_down)", "## effective_rank by layer and weight type",
                    "## alpha by layer and weight type", "## Phase statistics"):
        assert heading in report, heading


def test_reports_open_with_findings_from_their_tables(finished):
    from blockscope.reporting.findings import outside_range

    model = finished / "results/tiny-llama"
    report = (model / "report.md").read_text()
    assert report.index("## Findings") < report.index("## Model")
    findings = report[report.index("## Findings"):report.index("## Model")]
    metrics = pd.read_csv(model / "metrics.csv")
    measured = metrics[metrics["alpha"].notna() & (metrics["status"] != layout.STATISTICS_ONLY)]
    outside = (measured["alpha"] < 2) | (measured["alpha"] > 6)
    assert f"- {outside.sum()} of {len(measured)} matrices have α outside WeightWatcher's" in findings
    assert outside.sum() == len(outside_range(metrics, [2, 6]))
    wide = pd.read_csv(model / "precision_alpha_hill.csv")
    ranked = wide.dropna(subset=["alpha_hill_relative_range"])
    assert f"- {int(ranked['precision_sensitive'].sum())} of {len(ranked)} matrices are precision-sensitive" in findings
    for link in re.findall(r"\]\(([^)]+)\)", findings):
        assert (model / link).exists(), link
    summary = (finished / layout.SUMMARY_REPORT).read_text()
    for name in BASE["models"]:
        assert f"### {name} ([report](../{name}/report.md))" in summary
    assert findings.split("\n")[2] in summary.replace("../tiny-llama/", "")  # the same sentences, other links
    for link in re.findall(r"\]\(([^)]+)\)", summary):
        assert (finished / "results/summary" / link).exists(), link


def test_every_figure_in_every_format_and_in_the_html_report(finished, tmp_path):
    work = clone(finished, tmp_path)
    pngs = sorted((work / "results").rglob("*.png"))
    assert len(pngs) > 30  # every figure kind of both models and the summary
    config = {**BASE, "report": {"formats": ["png", "pdf", "svg"]}}
    result = run_workflow(work, config)
    ran = set(re.findall(r"^(?:local)?rule (\w+):", result.stdout + result.stderr, re.M))
    assert ran <= PLOT_RULES | {"model_report", "summary_report", "all"}  # nothing is measured again
    for png in pngs:
        assert png.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-", png
        assert b"<svg" in png.with_suffix(".svg").read_bytes()[:2000], png
    run_workflow(work, config, "--report", str(tmp_path / "report.html"))
    html = (tmp_path / "report.html").read_text()
    missing = [str(png.relative_to(work)) for png in pngs if png.name not in html]
    assert not missing


def _dry_run_rules(work, snakefile):
    result = run_workflow(work, BASE, "--dry-run", snakefile=snakefile)
    return set(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", result.stdout + result.stderr, re.M))


def workflow_copy(tmp_path):
    """A copy of the workflow's code, to edit without touching the checkout."""
    from conftest import ROOT

    workflow = tmp_path / "workflow"
    workflow.mkdir(parents=True)
    for part in ("Snakefile", "rules", "workflow_scripts", "schemas", "blockscope", "report", "profiles", "envs"):
        (shutil.copytree if (ROOT / part).is_dir() else shutil.copy)(ROOT / part, workflow / part)
    return workflow


def append_a_line(path):
    path.write_text(path.read_text() + "\n# an edit\n")


PLOT_RULES = {"metric_plots", "esd_plot", "head_and_precision_plots", "embedding_plots", "summary_plots",
              "head_deep_dive_plot", "headmerge_plots", "down_proj_plot", "precision_category_plots", "compress_plots"}


def test_editing_one_stage_reruns_that_stage_and_what_follows(finished, tmp_path):
    work, workflow = clone(finished, tmp_path), workflow_copy(tmp_path)
    assert _dry_run_rules(work, workflow / "Snakefile") <= {"all"}  # same code, nothing to do
    append_a_line(workflow / "workflow_scripts/anatomy.py")
    rerun = _dry_run_rules(work, workflow / "Snakefile")
    assert "anatomy" in rerun and "aggregate" in rerun
    assert not rerun & {"fetch", "inventory", "extract", "embedding", "head_deep_dive"}


def test_editing_a_library_module_reruns_exactly_what_uses_it(finished, tmp_path):
    work, workflow = clone(finished, tmp_path), workflow_copy(tmp_path)
    append_a_line(workflow / "blockscope/analysis/heavytail.py")
    rerun = _dry_run_rules(work, workflow / "Snakefile")
    assert {"anatomy", "aggregate", "summary", "model_report"} <= rerun
    assert not rerun & {"fetch", "inventory", "extract", "embedding", "head_deep_dive"}

    workflow = workflow_copy(tmp_path / "second")
    append_a_line(workflow / "blockscope/reporting/figures/spectra.py")
    rerun = _dry_run_rules(work, workflow / "Snakefile")
    assert {"metric_plots", "esd_plot", "summary_plots"} <= rerun
    assert rerun <= PLOT_RULES | {"model_report", "summary_report", "all"}  # the reports link the redrawn figures


def test_each_part_of_a_units_anatomy_is_recomputed_only_when_what_it_depends_on_changed(finished, tmp_path):
    """Rule anatomy runs a unit's spectra, sweep and heads in one job; a changed precision list
    reruns the job but recomputes the sweep alone, an edit to heads.py the heads alone."""
    from blockscope.io.tables import read_stamp

    work = clone(finished, tmp_path)
    results = work / "results/tiny-llama"
    kinds = ("spectra", "metrics", "precision", "heads")
    targets = [f"results/tiny-llama/{kind}/layer_000.parquet" for kind in kinds]

    def stamps():
        return {kind: read_stamp(results / kind / "layer_000.parquet") for kind in kinds}

    def log():
        return (work / "logs/tiny-llama/anatomy/layer_000.log").read_text()

    before, spectra_bytes = stamps(), (results / "spectra/layer_000.parquet").read_bytes()
    assert all(before.values()) and before["spectra"] == before["metrics"]
    config = {**BASE, "precision": {"precisions": ["fp32", "bf16"]}}
    assert ("anatomy", "tiny-llama") in jobs_run(run_workflow(work, config, *targets))
    assert "precision: computed" in log() and "spectra: kept" in log() and "heads: kept" in log()
    after = stamps()
    assert after["spectra"] == before["spectra"] and after["heads"] == before["heads"]
    assert after["precision"] != before["precision"]
    assert (results / "spectra/layer_000.parquet").read_bytes() == spectra_bytes
    assert sorted(pd.read_parquet(results / "precision/layer_000.parquet")["precision"].unique()) == ["bf16", "fp32"]

    workflow = workflow_copy(tmp_path)
    append_a_line(workflow / "blockscope/analysis/heads.py")
    assert ("anatomy", "tiny-llama") in jobs_run(run_workflow(work, config, *targets, snakefile=workflow / "Snakefile"))
    assert "heads: computed" in log() and "spectra: kept" in log() and "precision: kept" in log()
    assert stamps()["heads"] != after["heads"] and stamps()["precision"] == after["precision"]


def test_a_killed_run_loses_nothing_finished_and_resumes(finished, tmp_path):
    import os
    import signal
    import subprocess
    import time

    import pyarrow.parquet as pq

    from conftest import ROOT, SNAKEMAKE

    work = clone(finished, tmp_path)
    for kind in ("spectra", "metrics", "precision"):
        shutil.rmtree(work / f"results/tiny-llama/{kind}")
    kept = mtimes(work / "results/tiny-gpt2")
    process = subprocess.Popen([str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
                                "--cores", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((work / "results/tiny-llama").glob("metrics/*.parquet")):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the whole run, mid-write of whatever job was running
    process.wait()
    for path in (work / "results").rglob("*.parquet"):
        pq.ParquetFile(path)  # every file under its final name is complete
    assert mtimes(work / "results/tiny-gpt2") == kept
    run_workflow(work, BASE, "--unlock")
    run_workflow(work, BASE)  # rerun-incomplete comes from profiles/default
    assert len(list((work / "results/tiny-llama/metrics").glob("*.parquet"))) == 5
    assert mtimes(work / "results/tiny-gpt2") == kept


def test_the_plan_prices_every_per_unit_job_before_they_run(finished):
    import json

    plan = json.loads((finished / layout.PLAN.format(model="tiny-llama")).read_text())
    units = json.loads((finished / layout.MODEL_JSON.format(model="tiny-llama")).read_text())["units"]
    priced = {(job["unit"], job["rule"]) for job in plan["jobs"]}
    assert priced == {(unit, rule) for unit in units for rule in PER_UNIT_RULES}
    rounding = 0.0005 * len(plan["jobs"])  # each job's seconds are written to 3 decimals
    assert plan["totals"]["seconds"] == pytest.approx(sum(job["seconds"] for job in plan["jobs"]), abs=rounding)
    assert plan["throughput"]["basis"] == "measured" and plan["backend"] == "cpu"


def test_the_longest_predicted_job_starts_first(finished, tmp_path):
    """On one core, jobs ready at once run in the order of their predicted seconds, longest first
    (the per-unit rules' priority: longest_first): a wide vocabulary's embedding and output head
    before the layers, so a long unit never runs alone at the end of a run."""
    import json

    work = clone(finished, tmp_path)
    wide = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 30000, "tie_word_embeddings": False}
    config = {**BASE, "models": {**BASE["models"], "wide": {"source": "synthetic", "config": wide, "seed": 0}}}
    run_workflow(work, config, layout.PLAN.format(model="wide"))
    units = json.loads((work / layout.MODEL_JSON.format(model="wide")).read_text())["units"]
    run_workflow(work, config, *[layout.TENSORS.format(model="wide", unit=unit) for unit in units])
    result = run_workflow(work, config, *[layout.SPECTRA.format(model="wide", unit=unit) for unit in units], cores=1)
    started = re.findall(r"^(?:local)?rule anatomy:\n(?:.*\n)*?\s+wildcards: model=wide, unit=(\w+)\n"
                         r"\s+priority: ([\d.]+)", result.stdout + result.stderr, re.M)
    plan = json.loads((work / layout.PLAN.format(model="wide")).read_text())
    predicted = {job["unit"]: job["seconds"] for job in plan["jobs"] if job["rule"] == "anatomy"}
    assert sorted(unit for unit, _ in started) == sorted(units)
    assert {unit for unit, _ in started[:2]} == {"embed", "lm_head"}  # 30000 x 64 each
    seconds = [float(priority) for _, priority in started]
    assert seconds == sorted(seconds, reverse=True) and seconds[0] > seconds[-1]
    assert all(float(priority) == pytest.approx(predicted[unit], abs=1e-3) for unit, priority in started)


def test_slurm_requests_are_the_cost_models_predictions_times_the_safety(finished):
    import json

    targets = ["results/tiny-llama/spectra/layer_000.parquet", "results/tiny-llama/heads/layer_001.parquet"]
    result = run_workflow(finished, BASE, "--dry-run", *targets, "--forcerun", "anatomy")
    asked = dict(re.findall(r"^rule anatomy:\n(?:.*\n)*?\s+wildcards: model=tiny-llama, unit=(layer_000|layer_001)\n"
                            r"(?:\s+priority: .*\n)?\s+resources: .*?(runtime=\d+, mem_mb=\d+)", result.stdout, re.M))
    dims = json.loads((finished / layout.MODEL_JSON.format(model="tiny-llama")).read_text())
    jobs = predicted_jobs(finished / layout.INVENTORY.format(model="tiny-llama"), dims, None,
                          method="auto", precisions=["fp32", "fp16", "bf16"])  # the defaults of config.yaml
    for unit in ("layer_000", "layer_001"):
        request = slurm_request(jobs[unit, "anatomy"], 1, 2.0)  # plan.safety's default
        assert asked[unit] == f"runtime={request['runtime']}, mem_mb={request['mem_mb']}"
