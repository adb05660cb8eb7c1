"""select in the real workflow: no jobs for unselected units, only the selected matrices analysed,
a changed selection reruns only what it changes, a widened one computes only what is new."""

import copy
import json
import re
import shutil

import pandas as pd
import pytest

from blockscope import layout
from blockscope.planning.model_plan import predicted_jobs
from blockscope.planning.pricing import predict_unit
from blockscope.planning.throughput_cache import throughput

from conftest import TINY_LLAMA, mtimes, run_workflow, save_tiny

pytestmark = pytest.mark.slow

TINY_GPT2 = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4, "vocab_size": 128}
QKV = "q_proj|k_proj|v_proj"
BASE = {"models": {"tiny-llama": {"source": "synthetic", "config": TINY_LLAMA, "seed": 0,
                                  "select": {"include": [QKV], "layers": "1"}},
                   "tiny-gpt2": {"source": "synthetic", "config": TINY_GPT2, "seed": 0}},
        "device": "cpu", "embedding": {"k_max": 6}, "headmerge": {"enabled": False}, "compress": {"enabled": False}}
PER_UNIT = ("extract", "anatomy")


def jobs(result):
    """(rule, model, unit or None) of every job in a snakemake log (a run or a dry run)."""
    found = set()
    for block in re.split(r"\n\s*\n", result.stdout + result.stderr):
        rule = re.search(r"^(?:local)?(?:rule|checkpoint) (\w+):", block, re.M)
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        if rule and wildcards:
            values = dict(kv.split("=", 1) for kv in wildcards.group(1).split(", "))
            found.add((rule.group(1), values.get("model"), values.get("unit")))
    return found


def with_select(model, select):
    config = copy.deepcopy(BASE)
    config["models"][model]["select"] = select
    return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("selected")
    result = run_workflow(workdir, BASE)
    return workdir, jobs(result)


def clone(finished, tmp_path):
    target = tmp_path / "work"
    shutil.copytree(finished[0], target, symlinks=True)
    return target


def test_unselected_units_get_no_jobs_and_only_selected_matrices_are_measured(finished):
    work, ran = finished
    llama = {(rule, unit) for rule, model, unit in ran if model == "tiny-llama" and rule in PER_UNIT}
    # embed and lm_head are extracted for the per-model embedding analysis only
    assert {unit for rule, unit in llama if rule != "extract"} == {"layer_001"}
    assert ("extract", "layer_000") not in llama and ("extract", "other") not in llama
    assert not (work / "results/tiny-llama/metrics/layer_000.parquet").exists()
    metrics = pd.read_parquet(work / layout.METRICS.format(model="tiny-llama"))
    assert sorted(metrics["param_name"]) == [f"model.layers.1.self_attn.{p}_proj.weight" for p in "kqv"]
    assert set(pd.read_parquet(work / layout.PRECISION.format(model="tiny-llama"))["param_name"]) == \
        set(metrics["param_name"])
    assert len(pd.read_parquet(work / layout.HEADS.format(model="tiny-llama"))) == 0  # no o_proj: no heads
    assert "the selection leaves out model.layers.1.self_attn.o_proj.weight" in \
        (work / "logs/tiny-llama/anatomy/layer_001.log").read_text()
    record = json.loads((work / layout.SELECTION.format(model="tiny-llama")).read_text())
    assert record["selection"] == {"include": [QKV], "exclude": [], "layers": [1]}
    assert record["selected_units"] == ["layer_001"] and record["selected_tensors"] == 3
    # model.json still describes the whole checkpoint
    assert json.loads((work / layout.MODEL_JSON.format(model="tiny-llama")).read_text())["layers"] == 2
    # no selection: every unit, as before
    assert {unit for rule, model, unit in ran if model == "tiny-gpt2" and rule == "anatomy"} == \
        {"embed", "layer_000", "layer_001", "lm_head", "other"}


def test_widening_a_selection_computes_only_the_new_units(finished, tmp_path):
    work = clone(finished, tmp_path)
    before = mtimes(work / "results")
    result = run_workflow(work, with_select("tiny-llama", {"include": [QKV], "layers": "0-1"}))
    ran = jobs(result)
    assert {unit for rule, model, unit in ran if rule in PER_UNIT} == {"layer_000"}
    assert {model for _, model, _ in ran if model} == {"tiny-llama"}
    after = mtimes(work / "results")
    for kind in ("tensors", "spectra", "metrics", "precision", "heads"):
        path = work / layout.per_unit(kind, "tiny-llama", "layer_001")
        assert after[path] == before[path], path
    assert all(after[p] == v for p, v in before.items() if "tiny-gpt2" in p.parts)
    metrics = pd.read_parquet(work / layout.METRICS.format(model="tiny-llama"))
    assert sorted(metrics["unit"].unique()) == ["layer_000", "layer_001"] and len(metrics) == 6


def test_changing_one_models_selection_reruns_only_its_changed_units(finished, tmp_path):
    work = clone(finished, tmp_path)
    before = mtimes(work / "results")
    result = run_workflow(work, with_select("tiny-gpt2", {"exclude": ["mlp"]}))
    ran = jobs(result)
    assert {model for _, model, _ in ran if model} == {"tiny-gpt2"}
    assert {unit for rule, _, unit in ran if rule == "anatomy"} == {"layer_000", "layer_001"}  # embed unchanged
    assert not {rule for rule, _, _ in ran} & {"fetch", "inventory", "extract"}
    after = mtimes(work / "results")
    assert all(after[p] == v for p, v in before.items() if "tiny-llama" in p.parts)
    metrics = pd.read_parquet(work / layout.METRICS.format(model="tiny-gpt2"))
    assert not metrics["param_name"].str.contains("mlp").any() and metrics["param_name"].str.contains("attn").any()


def test_a_selection_of_nothing_fails_before_any_job_in_one_line(finished, tmp_path):
    work = clone(finished, tmp_path)
    result = run_workflow(work, with_select("tiny-llama", {"include": ["no_such_tensor"]}), "-n", check=False)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "ERROR [tiny-llama] config.yaml: select matches no tensor of the model (include=['no_such_tensor']). " \
           "Fix: widen select (include, exclude, layers) for this model." in text


def test_a_selection_of_only_1d_parameters_fails_before_any_job_in_one_line(finished, tmp_path):
    """Norms alone leave no matrix: refused when the DAG is built, as a selection of nothing is,
    rather than run to an aggregation with no spectrum to aggregate."""
    work = clone(finished, tmp_path)
    result = run_workflow(work, with_select("tiny-llama", {"include": ["norm"]}), "-n", check=False)
    assert result.returncode != 0 and not jobs(result)
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR ")]
    assert errors == [
        "ERROR [tiny-llama] config.yaml: select keeps only 1-D parameters (5, e.g. "
        "model.layers.0.input_layernorm.weight): norm weights and biases have no spectrum, so no weight matrix is "
        "left to analyse (include=['norm']). Fix: widen select to keep a weight matrix (a 2-D tensor such as "
        "model.layers.0.mlp.down_proj.weight), or remove select for this model."]


TINY_BERT = {"model_type": "bert", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "vocab_size": 128}
QK = r".*attention\.self\.(query|key)\.weight"


def test_a_selection_on_an_encoder_plans_and_prices_every_job_it_asks_for(tmp_path):
    """A BERT encoder has no lm_head: the embedding analysis asks for the embed unit only, and every
    job the DAG holds has a price (the dry run failed on the priority of an lm_head extract before)."""
    save_tiny("BertModel", TINY_BERT, tmp_path / "encoder")
    config = {"models": {"tiny-bert": {"source": "local", "path": str(tmp_path / "encoder"),
                                       "select": {"include": [QK], "layers": "0-1"}}},
              "device": "cpu", "embedding": {"k_max": 4}, "headmerge": {"enabled": False},
              "compress": {"enabled": False}}
    work = tmp_path / "work"
    run_workflow(work, config, layout.INVENTORY.format(model="tiny-bert"))
    result = run_workflow(work, config, "-n")
    planned = {(rule, unit) for rule, model, unit in jobs(result) if rule in PER_UNIT}
    assert planned == {("extract", "embed"), ("extract", "layer_000"), ("extract", "layer_001"),
                       ("anatomy", "layer_000"), ("anatomy", "layer_001")}
    priority = dict(re.findall(r"^rule extract:\n(?:.*\n)*?\s+wildcards: model=tiny-bert, unit=(\w+)\n"
                               r"\s+priority: ([\d.]+)", result.stdout, re.M))
    inventory = pd.read_parquet(work / layout.INVENTORY.format(model="tiny-bert"))
    dims = json.loads((work / layout.MODEL_JSON.format(model="tiny-bert")).read_text())
    qk = {f"layer_00{i}": [f"encoder.layer.{i}.attention.self.{p}.weight" for p in ("key", "query")] for i in (0, 1)}
    prices = predicted_jobs(work / layout.INVENTORY.format(model="tiny-bert"), dims, qk, method="auto",
                            precisions=["fp32", "fp16", "bf16"])  # the defaults of config.yaml
    assert {unit for unit, _ in prices} == {"embed", "layer_000", "layer_001", "lm_head", "other"}
    speed = throughput("cpu")
    for unit in ("embed", "layer_000", "layer_001"):  # extract writes the whole unit: priced on all of it
        whole = predict_unit(inventory[inventory["unit"] == unit], "extract", speed)
        assert prices[unit, "extract"].seconds == pytest.approx(whole.seconds)
        assert float(priority[unit]) == pytest.approx(whole.seconds, abs=1e-3)
    embedding = re.search(r"^rule embedding:\n\s+input: (.*)$", result.stdout, re.M).group(1).split(", ")
    assert [path for path in embedding if "/tensors/" in path] == [layout.per_unit("tensors", "tiny-bert", "embed")]

