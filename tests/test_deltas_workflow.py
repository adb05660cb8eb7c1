"""A fine-tune, an adapter and a series through the real workflow: a tuned checkpoint built here with
known updates (a rank-2 and a rank-1 change, everything else bit-identical), a LoRA adapter built with
peft itself, and the series base -> tuned. Each number is checked against numpy on the stored weights
or against peft's own merge; changing a base reruns only the delta jobs; a shape mismatch is one line."""

import copy
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from blockscope import layout, pair_layout

from conftest import TINY_LLAMA, mtimes, run_workflow, save_tiny

pytestmark = pytest.mark.slow

Q0 = "model.layers.0.self_attn.q_proj.weight"
DOWN1 = "model.layers.1.mlp.down_proj.weight"


def jobs(result):
    """(rule, model, unit or None) of every job in a snakemake log (a run or a dry run)."""
    found = set()
    for block in re.split(r"\n\s*\n", result.stdout + result.stderr):
        rule = re.search(r"^(?:local)?(?:rule|checkpoint) (\w+):", block, re.M)
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        if rule:
            values = dict(kv.split("=", 1) for kv in wildcards.group(1).split(", ")) if wildcards else {}
            found.add((rule.group(1), values.get("model"), values.get("unit")))
    return found


def build_models(folder):
    """base (a tiny llama), tuned (base + a rank-2 change of Q0 and a rank-1 change of DOWN1, fp32) and
    a peft LoRA adapter of base (r 4 on q_proj and v_proj, B drawn non-zero). Returns the folders and
    peft's merged weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.numpy import load_file, save_file

    base = folder / "base"
    model = save_tiny("LlamaForCausalLM", TINY_LLAMA, base)
    tensors = load_file(base / "model.safetensors")
    rng = np.random.default_rng(1)
    q = tensors[Q0]
    tensors[Q0] = (q + 0.05 * rng.standard_normal((q.shape[0], 2)) @ rng.standard_normal((2, q.shape[1]))).astype(
        np.float32)
    down = tensors[DOWN1]
    tensors[DOWN1] = (down + 0.02 * np.outer(rng.standard_normal(down.shape[0]),
                                             rng.standard_normal(down.shape[1]))).astype(np.float32)
    tuned = folder / "tuned"
    tuned.mkdir()
    shutil.copy(base / "config.json", tuned / "config.json")
    save_file(tensors, tuned / "model.safetensors", metadata={"format": "pt"})

    adapter = folder / "adapter"
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    lora.save_pretrained(adapter)
    merged = {name: weight.detach().double().numpy() for name, weight in lora.merge_and_unload().state_dict().items()}
    return base, tuned, adapter, merged


def config_of(base, tuned, adapter):
    return {
        "models": {
            "base": {"source": "local", "path": str(base)},
            "base2": {"source": "synthetic", "like": "base", "seed": 1},
            "tuned": {"source": "local", "path": str(tuned), "base": "base"},
            "adapter": {"source": "peft", "path": str(adapter), "base": "base"},
        },
        "series": {"run": ["base", "tuned"]},
        "device": "cpu", "embedding": {"k_max": 6}, "headmerge": {"enabled": False}, "compress": {"enabled": False},
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deltas")
    base, tuned, adapter, merged = build_models(folder)
    config = config_of(base, tuned, adapter)
    work = folder / "work"
    run_workflow(work, config)
    return work, config, base, tuned, merged


def stored(folder):
    from safetensors.numpy import load_file

    return {name: array.astype(np.float64) for name, array in load_file(folder / "model.safetensors").items()}


def test_a_tuned_checkpoint_shows_its_planted_ranks_and_norms(finished):
    work, _, base, tuned, _ = finished
    deltas = pd.read_parquet(work / pair_layout.DELTAS.format(model="tuned")).set_index("param_name")
    assert set(deltas.columns) >= set(pair_layout.DELTA_COLUMNS) - {"param_name"}
    w, w_base = stored(tuned), stored(base)
    assert deltas.loc[Q0, "delta_numerical_rank"] == 2 and deltas.loc[DOWN1, "delta_numerical_rank"] == 1
    for name in (Q0, DOWN1):
        dw = w[name] - w_base[name]
        assert deltas.loc[name, "status"] in (pair_layout.DELTA_CHANGED, pair_layout.DELTA_NO_TAIL)
        assert deltas.loc[name, "delta_frobenius"] == pytest.approx(np.linalg.norm(dw), rel=1e-9)
        assert deltas.loc[name, "delta_spectral_norm"] == pytest.approx(np.linalg.norm(dw, 2), rel=1e-9)
        assert deltas.loc[name, "relative_change"] == pytest.approx(np.linalg.norm(dw) / np.linalg.norm(w_base[name]),
                                                                    rel=1e-9)
    matrices = [name for name, array in w_base.items() if array.ndim == 2]
    unchanged = deltas.loc[[name for name in matrices if name not in (Q0, DOWN1)], "status"]
    assert (unchanged == pair_layout.DELTA_UNCHANGED).all(), unchanged.value_counts()
    assert set(deltas.index) == set(matrices)
    by_layer = pd.read_csv(work / pair_layout.DELTAS_BY_LAYER.format(model="tuned"))
    assert list(by_layer.columns) == pair_layout.DELTAS_BY_LAYER_COLUMNS
    report = (work / layout.REPORT.format(model="tuned")).read_text()
    assert "base" in report and "rank" in report
    for name in pair_layout.DELTA_FIGURES:
        assert (work / f"{pair_layout.DELTA_PLOTS.format(model='tuned')}/{name}.png").stat().st_size > 0


def test_an_adapter_is_analysed_from_its_factors_and_matches_peft_merge(finished):
    work, _, base, _, merged = finished
    deltas = pd.read_parquet(work / pair_layout.DELTAS.format(model="adapter")).set_index("param_name")
    w_base = stored(base)
    targeted = [name for name in w_base if name.endswith(("q_proj.weight", "v_proj.weight"))]
    assert sorted(deltas.index) == sorted(targeted)
    for name in targeted:
        dw = merged[name] - w_base[name]
        assert deltas.loc[name, "delta_numerical_rank"] == 4 and deltas.loc[name, "adapter_rank"] == 4
        assert deltas.loc[name, "dtype"] == "F32"  # the factors as peft stored them
        assert deltas.loc[name, "adapter_scale"] == pytest.approx(8 / 4)
        assert deltas.loc[name, "delta_frobenius"] == pytest.approx(np.linalg.norm(dw), rel=1e-5)
        assert deltas.loc[name, "delta_spectral_norm"] == pytest.approx(np.linalg.norm(dw, 2), rel=1e-5)
    report = (work / layout.REPORT.format(model="adapter")).read_text()
    assert "adapter" in report.lower() and "base" in report
    assert not (work / layout.METRICS.format(model="adapter")).exists()  # no weights of its own, no anatomy


def test_the_series_table_counts_the_change_from_the_previous_member(finished):
    work, _, base, tuned, _ = finished
    series = pd.read_parquet(work / pair_layout.SERIES_TABLE.format(series="run"))
    assert list(series.columns) == pair_layout.SERIES_COLUMNS
    rows = series[series["block_type"] == layout.ALL_TYPES].set_index("model")
    assert list(rows.index) == ["base", "tuned"] and np.isnan(rows.loc["base", "relative_change_from_previous"])
    w, w_base = stored(tuned), stored(base)
    matrices = [name for name, array in w_base.items() if array.ndim == 2]
    pooled = np.sqrt(sum(np.linalg.norm(w[n] - w_base[n]) ** 2 for n in matrices)
                     / sum(np.linalg.norm(w_base[n]) ** 2 for n in matrices))
    assert rows.loc["tuned", "relative_change_from_previous"] == pytest.approx(pooled, rel=1e-9)
    # the pair's per-layer table pools the same way, bit-identical matrices included
    by_layer = pd.read_csv(work / pair_layout.COMPARE_BY_LAYER.format(model="tuned", other="base"))
    layer0 = [n for n in matrices if n.startswith("model.layers.0.")]
    expected0 = np.sqrt(sum(np.linalg.norm(w[n] - w_base[n]) ** 2 for n in layer0)
                        / sum(np.linalg.norm(w_base[n]) ** 2 for n in layer0))
    row = by_layer[(by_layer["layer_index"] == 0) & (by_layer["block_type"] == layout.ALL_TYPES)]
    assert row["relative_distance"].item() == pytest.approx(expected0, rel=1e-9)
    metrics = pd.read_parquet(work / layout.METRICS.format(model="tuned"))
    expected = metrics.loc[metrics["cols"].notna(), "alpha"].median()
    assert rows.loc["tuned", "alpha"] == pytest.approx(expected)
    summary = (work / layout.SUMMARY_REPORT).read_text()
    assert "run" in summary and "tuned" in summary


def test_changing_a_base_reruns_only_the_delta_jobs(finished, tmp_path):
    work, config, *_ = finished
    clone = tmp_path / "work"
    shutil.copytree(work, clone, symlinks=True)
    changed = copy.deepcopy(config)
    changed["models"]["tuned"]["base"] = "base2"
    planned = {rule for rule, model, _ in jobs(run_workflow(clone, changed, "-n"))}
    assert "deltas" in planned and "delta_pairing" in planned
    assert planned <= {"delta_pairing", "deltas", "delta_tables", "delta_plots", "model_report", "summary_report",
                       "all"}, planned


def test_a_base_of_other_shapes_is_refused_in_one_line_before_any_delta_job(finished, tmp_path):
    work, config, *_ = finished
    clone = tmp_path / "work"
    shutil.copytree(work, clone, symlinks=True)
    changed = copy.deepcopy(config)
    changed["models"]["small"] = {"source": "synthetic", "config": {**TINY_LLAMA, "hidden_size": 32}, "seed": 0}
    changed["models"]["tuned"]["base"] = "small"
    before = mtimes(clone / "results/tuned/deltas")
    result = run_workflow(clone, changed, pair_layout.DELTAS.format(model="tuned"), check=False)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert lines and "[tuned]" in lines[0] and "small" in lines[0], result.stderr[-3000:]
    # no delta job ran: the earlier results are all still there, untouched
    after = mtimes(clone / "results/tuned/deltas")
    assert {p: s for p, s in after.items() if p.suffix == ".parquet"} == \
        {p: s for p, s in before.items() if p.suffix == ".parquet"}
    pairing = json.loads((work / pair_layout.DELTA_PAIRING.format(model="tuned")).read_text())
    assert pairing["base"] == "base" and pairing["tensors"] > 0
