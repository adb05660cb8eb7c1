"""The cost model: flop counts, predictions from a real inventory, the cached throughput, the
SLURM requests, the inventory of a transformers config built without weights, the modules a
job's start imports, the anatomy's diagnostics part, and blockscope-plan's table and JSON."""

import ast
import json
import math
import re
import time
from dataclasses import asdict, replace

import numpy as np
import pandas as pd
import pytest
import yaml
from safetensors.numpy import save_file

from blockscope.checkpoint.inventory import build_inventory, model_dims, read_config
from blockscope.layout import PLAN_JOB_COLUMNS
from blockscope.planning.calibration import _on_gpu
from blockscope.planning.cli import main
from blockscope.planning.config_inventory import inventory_from_config
from blockscope.planning.devices import DEVICES
from blockscope.planning.flops import eigh_flops, gesdd_flops, gram_flops
from blockscope.planning.job_start import (
    DELTA_RULES,
    GPU_RULES,
    JOB_MODULES,
    PER_UNIT_RULES,
    PRICED_RULES,
)
from blockscope.planning.model_plan import one_gpu_wall_s, plan_document, plan_model, predicted_jobs
from blockscope.planning.pricing import (
    DEFAULT_METHOD,
    DIAGNOSTICS,
    MAX_FINGERS,
    METHODS,
    PARTS,
    VECTOR_K,
    VECTORS,
    Job,
    computed_precisions,
    predict_unit,
    svd_seconds,
)
from blockscope.planning.slurm import MIN_MEM_MB, MIN_RUNTIME_MIN, slurm_request
from blockscope.planning.throughput_cache import cache_path, throughput

from conftest import ROOT, TINY_LLAMA, save_tiny

SCHEMA = yaml.safe_load((ROOT / "schemas/config.schema.yaml").read_text())


@pytest.fixture(scope="module")
def speed(tmp_path_factory):
    """One real calibration of this machine, into a cache of the test's own."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(cache))
        first = throughput("cpu")
        yield first, cache


@pytest.fixture(scope="module")
def h100(speed):
    """This machine's throughput with an H100 SXM's published GPU rates (its job starts measured once)."""
    return _on_gpu(speed[0], "h100-sxm", time.perf_counter())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A real tiny checkpoint's inventory and dims (blockscope.checkpoint.inventory on save_pretrained)."""
    folder = tmp_path_factory.mktemp("tiny")
    save_tiny("LlamaForCausalLM", TINY_LLAMA, folder)
    inventory = build_inventory(folder, model="tiny")
    return inventory, model_dims(read_config(folder), inventory), folder


def test_the_throughput_is_measured_once_and_then_read_from_its_cache(speed, monkeypatch):
    first, cache = speed
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    path = cache_path("cpu")
    assert path.is_relative_to(cache) and path.exists()
    stamp = path.stat().st_mtime_ns
    again = throughput("cpu")
    assert again == first and path.stat().st_mtime_ns == stamp  # read back, not measured again
    assert all(rate > 0 for rate in first.rates.values())
    assert set(first.start_s) >= set(PRICED_RULES) and all(s > 0 for s in first.start_s.values())


def test_a_cache_of_another_machine_is_measured_again(speed, monkeypatch, tmp_path):
    first, _ = speed
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = cache_path("cpu")
    path.parent.mkdir(parents=True)
    stale = {**asdict(first), "key": {**first.key, "cpu": "another CPU"}, "measured_at": "then"}
    path.write_text(json.dumps(stale))
    # the measuring itself: tested above
    monkeypatch.setattr("blockscope.planning.throughput_cache.calibrate", lambda backend, device=None, host=None: first)
    assert throughput("cpu").measured_at == first.measured_at
    assert json.loads(path.read_text())["key"] == first.key


def test_flop_counts_follow_lapack_and_grow_with_the_shape():
    assert gesdd_flops(100, 100) == (0.0, 4 * 100**3 - 4 * 100**3 / 3)
    qr, bidiag = gesdd_flops(4096, 256)  # tall: QR first (LAPACK's MNTHR = 11n/6)
    assert qr == 2 * 4096 * 256**2 - 2 * 256**3 / 3 and bidiag == 8 * 256**3 / 3
    assert gesdd_flops(256, 4096) == gesdd_flops(4096, 256)  # the transpose costs the same
    assert gram_flops(896, 4864) == 2 * 4864 * 896**2
    assert eigh_flops(1024) == 4 * 1024**3 / 3
    sizes = [(64, 64), (128, 64), (256, 64), (256, 256), (1024, 256)]
    for method in METHODS:
        seconds = [svd_seconds(r, c, 32, method, {"qr32": 1e9, "bidiag32": 1e9, "gemm64": 1e9, "eigh64": 1e9})
                   for r, c in sizes]
        assert all(b > a > 0 for a, b in zip(seconds, seconds[1:])), (method, seconds)


def unit_rows(shapes, dtype="F32"):
    return pd.DataFrame([{"param_name": f"model.layers.0.mlp.w{i}.weight", "unit": "layer_000", "layer_index": 0,
                          "block_type": "up_proj", "shape": list(s), "dtype": dtype, "source_dtype": dtype,
                          "nbytes": math.prod(s) * 4, "file": "m.safetensors", "layout": "out_in"}
                         for i, s in enumerate(shapes)])


@pytest.mark.parametrize("rule", ["spectra", "precision"])
@pytest.mark.parametrize("method", METHODS)
def test_predictions_are_positive_and_grow_with_the_matrices(speed, rule, method):
    t = speed[0]
    jobs = [predict_unit(unit_rows([shape]), rule, t, method, precisions=["fp32", "fp16"])
            for shape in [(64, 64), (256, 128), (512, 512), (2048, 512)]]
    assert all(j.seconds > 0 and j.mem_mb > 0 for j in jobs)
    assert all(b.seconds > a.seconds and b.mem_mb > a.mem_mb and b.flops > a.flops for a, b in zip(jobs, jobs[1:]))


def test_each_precision_s_rounding_cast_is_priced_at_its_own_measured_rate(speed):
    """numpy's float16 conversion is a scalar loop, bf16 a bit operation: one rate for both
    under-priced the fp16 sweep of the demo's embedding 8x. The sweep is priced per precision."""
    t = speed[0]
    assert set(t.cast_s) == {"fp64", "fp32", "fp16", "bf16", "fp8-e4m3"} and all(s > 0 for s in t.cast_s.values())
    slow = replace(t, cast_s={**t.cast_s, "bf16": 1e-6})
    rows = unit_rows([(2048, 512)], "F32")
    base = predict_unit(rows, "precision", t, precisions=["bf16"]).seconds
    priced = predict_unit(rows, "precision", slow, precisions=["bf16"]).seconds
    assert priced - base == pytest.approx(2048 * 512 * (1e-6 - t.cast_s["bf16"]))
    exact = unit_rows([(2048, 512)], "BF16")  # stored in bf16: its bf16 round trip is not even cast
    assert predict_unit(exact, "precision", slow, precisions=["bf16"]).seconds == \
        pytest.approx(predict_unit(exact, "precision", t, precisions=["bf16"]).seconds)


def test_the_sweep_skips_precisions_that_change_no_stored_value(speed):
    t = speed[0]
    assert computed_precisions("BF16", ["fp32", "fp16", "bf16", "fp64"]) == ["fp16", "fp64"]
    assert computed_precisions("F32", ["fp32", "fp16", "bf16"]) == ["fp16", "bf16"]
    assert computed_precisions("F32", ["fp32", "fp64"]) == ["fp64"]  # fp64 runs in float64
    assert computed_precisions("F32", ["fp32", "fp64"], "float64") == []  # both reuse float64 spectra
    stored_bf16 = predict_unit(unit_rows([(512, 512)], "BF16"), "precision", t, precisions=["fp32", "bf16"])
    stored_f32 = predict_unit(unit_rows([(512, 512)], "F32"), "precision", t, precisions=["fp32", "bf16"])
    assert stored_bf16.flops == 0 < stored_f32.flops


@pytest.mark.slow  # builds a real model
def test_a_plan_from_a_real_inventory_prices_every_unit_and_rule(speed, tiny):
    inventory, dims, _ = tiny
    jobs = plan_model(inventory, dims, speed[0], "gesdd", precisions=["fp32", "fp16", "bf16"])
    assert list(jobs.columns) == PLAN_JOB_COLUMNS
    assert set(zip(jobs["unit"], jobs["rule"])) == {(u, r) for u in inventory["unit"].unique() for r in PER_UNIT_RULES}
    assert (jobs["seconds"] > 0).all() and (jobs["mem_mb"] > 0).all()
    rows = inventory[inventory["unit"] == "layer_000"]
    heads = predict_unit(rows, "heads", speed[0], dims=dims)
    assert heads.flops > 0  # attention heads are priced in the layers, as part of their anatomy job
    anatomy = predict_unit(rows, "anatomy", speed[0], "gesdd", precisions=["fp32", "fp16", "bf16"], dims=dims)
    parts = [predict_unit(rows, part, speed[0], "gesdd", precisions=["fp32", "fp16", "bf16"], dims=dims)
             for part in PARTS]
    assert anatomy.seconds == pytest.approx(speed[0].start_s["anatomy"] + sum(p.seconds for p in parts))  # one start
    assert anatomy.flops == pytest.approx(sum(p.flops for p in parts))
    document = plan_document("tiny", jobs, speed[0], "gesdd", cores=2)
    assert document["totals"]["seconds"] == pytest.approx(jobs["seconds"].sum())
    assert document["totals"]["wall_s"] >= jobs["seconds"].max()
    json.dumps(document)  # plan.json is plain JSON
    only = plan_model(inventory, dims, speed[0], selected={"layer_001": ["model.layers.1.mlp.up_proj.weight"]})
    assert set(only["unit"]) == {"layer_001"} and only["seconds"].sum() < jobs["seconds"].sum()


@pytest.mark.slow  # builds a real model
def test_every_unit_the_workflow_may_ask_for_has_a_price(speed, tiny, tmp_path):
    """The resource requests and priorities: every unit of the model priced, inside the selection or
    not; extract on its whole unit (it writes every tensor of it), anatomy on the selected tensors."""
    inventory, dims, _ = tiny
    path = tmp_path / "inventory.parquet"
    inventory[inventory["unit"] != "lm_head"].to_parquet(path)  # as an encoder: no lm_head tensor
    up = "model.layers.1.mlp.up_proj.weight"
    jobs = predicted_jobs(path, dims, {"layer_001": [up]}, method="gesdd")
    units = ["embed", "layer_000", "layer_001", "lm_head", "other"]
    assert set(jobs) == {(unit, rule) for unit in units for rule in PER_UNIT_RULES}

    def priced(rows, rule):
        return asdict(predict_unit(rows, rule, speed[0], "gesdd", precisions=["fp32"], dims=dims))

    layer = inventory[inventory["unit"] == "layer_001"]
    assert asdict(jobs["layer_001", "extract"]) == pytest.approx(priced(layer, "extract"))
    assert asdict(jobs["layer_001", "anatomy"]) == pytest.approx(priced(layer[layer["param_name"] == up], "anatomy"))
    assert priced(layer, "extract")["seconds"] > priced(layer[layer["param_name"] == up], "extract")["seconds"]
    embed = inventory[inventory["unit"] == "embed"]  # outside the selection: the whole unit
    assert asdict(jobs["embed", "anatomy"]) == pytest.approx(priced(embed, "anatomy"))
    assert jobs["lm_head", "extract"].seconds == pytest.approx(speed[0].start_s["extract"])  # a job start, no bytes


@pytest.mark.slow  # builds a real model
def test_an_inventory_from_a_config_alone_matches_the_saved_checkpoints(tiny):
    inventory, dims, folder = tiny
    planned, planned_dims = inventory_from_config({**TINY_LLAMA, "torch_dtype": "float32"})
    columns = ["param_name", "unit", "layer_index", "block_type", "shape", "dtype", "nbytes", "layout"]
    assert planned[columns].to_dict("records") == inventory[columns].to_dict("records")
    assert {k: planned_dims[k] for k in dims} == dims


def test_slurm_requests_are_the_prediction_times_the_safety_and_the_attempt():
    job = Job(seconds=1000.0, mem_mb=1200.0)
    assert slurm_request(job, 1, 2.0) == {"runtime": math.ceil(2000 / 60), "mem_mb": 2400}
    assert slurm_request(job, 2, 2.0) == {"runtime": math.ceil(4000 / 60), "mem_mb": 4800}
    assert slurm_request(job, 1, 1.5) == {"runtime": math.ceil(1500 / 60), "mem_mb": 1800}
    assert slurm_request(Job(0.5, 10.0)) == {"runtime": MIN_RUNTIME_MIN, "mem_mb": MIN_MEM_MB}


def test_the_schema_offers_exactly_the_devices_with_published_throughput():
    assert SCHEMA["properties"]["plan"]["properties"]["gpu"]["enum"] == list(DEVICES)


def test_a_gpu_prices_every_eigensolve_at_its_own_rate(speed, h100):
    """The CPU's two-stage eigh rate (Grams from gram.TWO_STAGE_MIN_N up) never reaches a GPU's
    prediction: an H100's 4096-sided Gram is priced at its published eigh rate, not the host's."""
    host, gpu = speed[0], h100
    assert host.rates["eigh64_two_stage"] > 0
    n = 4096
    expected = gram_flops(n, n) / gpu.rates["gemm64"] + eigh_flops(n) / gpu.rates["eigh64"]
    assert svd_seconds(n, n, 32, "gram", gpu.rates) == pytest.approx(expected)
    assert svd_seconds(n, n, 32, "gram", gpu.rates) < svd_seconds(n, n, 32, "gram", host.rates) / 10


# --- what a job's start imports: the library's list against the scripts ---------------------


def top_level_imports(script) -> set:
    """The modules a script imports at top level, as an interpreter starting it loads them."""
    tree = ast.parse(script.read_text())
    modules = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def rule_scripts() -> dict:
    """rule -> the script its `script:` directive runs, over rules/*.smk."""
    text = "".join(path.read_text() for path in sorted((ROOT / "rules").glob("*.smk")))
    blocks = re.split(r"^(?=(?:checkpoint|rule) \w+:)", text, flags=re.M)
    found = {}
    for block in blocks:
        name = re.match(r"(?:checkpoint|rule) (\w+):", block)
        script = re.search(r"^\s+script:\s*\n\s+\"\.\./(workflow_scripts/\w+\.py)\"", block, re.M)
        if name and script:
            found[name.group(1)] = ROOT / script.group(1)
    return found


def test_every_priced_rule_has_its_job_start_modules():
    assert set(JOB_MODULES) == set(PRICED_RULES) == set(PER_UNIT_RULES) | set(DELTA_RULES)
    assert len(PRICED_RULES) == len(PER_UNIT_RULES) + len(DELTA_RULES)  # disjoint
    assert "diagnostics" not in PRICED_RULES  # the anatomy's part, not a rule of its own
    assert set(GPU_RULES) <= set(PRICED_RULES)


@pytest.mark.parametrize("rule", PRICED_RULES)
def test_a_job_start_imports_what_its_rule_s_script_imports(rule):
    """calibration measures each per-unit rule's start by importing JOB_MODULES[rule]: the same
    modules the script its rule runs imports at top level, so that the two cannot drift apart.
    A rule without a script (rules/*.smk) fails here, never skips."""
    scripts = rule_scripts()
    assert rule in scripts, f"no rule {rule!r} with a script: in rules/*.smk"
    script = scripts[rule]
    assert script.exists(), f"rule {rule!r} runs {script.relative_to(ROOT)}, which is missing"
    assert set(JOB_MODULES[rule]) == top_level_imports(script), f"JOB_MODULES[{rule!r}]: {script.name}'s imports"


# --- blockscope-plan: the table and the JSON, run through main(argv) --------------------------


@pytest.fixture(scope="module")
def toy_results(tmp_path_factory):
    """A results/{model} folder (inventory.parquet, model.json) of a small real safetensors
    checkpoint of the tiny llama's shapes, written with numpy (no torch), read by the inventory's code."""
    checkpoint = tmp_path_factory.mktemp("checkpoint")
    c = TINY_LLAMA
    hidden, ffn = c["hidden_size"], c["intermediate_size"]
    kv_width = hidden // c["num_attention_heads"] * c["num_key_value_heads"]
    shapes = {"model.embed_tokens.weight": (c["vocab_size"], hidden), "model.norm.weight": (hidden,),
              "lm_head.weight": (c["vocab_size"], hidden)}
    for layer in range(c["num_hidden_layers"]):
        layer_shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (kv_width, hidden),
                        "self_attn.v_proj": (kv_width, hidden), "self_attn.o_proj": (hidden, hidden),
                        "mlp.gate_proj": (ffn, hidden), "mlp.up_proj": (ffn, hidden), "mlp.down_proj": (hidden, ffn),
                        "input_layernorm": (hidden,), "post_attention_layernorm": (hidden,)}
        shapes |= {f"model.layers.{layer}.{name}.weight": shape for name, shape in layer_shapes.items()}
    rng = np.random.default_rng(0)
    save_file({name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()},
              str(checkpoint / "model.safetensors"))
    (checkpoint / "config.json").write_text(json.dumps(c))
    inventory = build_inventory(checkpoint, model="toy")
    results = tmp_path_factory.mktemp("results") / "toy"
    results.mkdir()
    inventory.to_parquet(results / "inventory.parquet")
    dims = {"model": "toy", **model_dims(read_config(checkpoint), inventory, model="toy")}
    (results / "model.json").write_text(json.dumps(dims))
    return results, inventory


def table_rows(text: str) -> tuple:
    """The printed table: (header cells, rule -> {column: value})."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rule", "jobs"])
    header = re.split(r"\s{2,}", lines[start].strip())
    rows = {}
    for line in lines[start + 1:]:
        if not line.strip() or line.startswith("("):  # a blank line or the table's note ends it
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = dict(zip(header[1:], (float(cell.replace(",", "")) for cell in cells[1:])))
    return header, rows


def test_the_plan_prints_a_table_per_rule_whose_totals_are_the_jobs_sums(speed, toy_results, tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(speed[1]))
    results, inventory = toy_results
    out = tmp_path / "plan.json"
    assert main(["--results", str(results), "--device", "h100-sxm", "--cores", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert len(printed) < 2000 and "{" not in printed  # a table, not a dump of the jobs
    document = json.loads(out.read_text())
    header, rows = table_rows(printed)
    assert header == ["rule", "jobs", "here s", "here peak MB", "h100-sxm s", "h100-sxm peak MB"]
    assert list(rows) == [*PER_UNIT_RULES, "total"]  # every rule with jobs, then the total
    units = set(inventory["unit"])
    for label, plan in (("here", document), ("h100-sxm", document["gpu"])):
        jobs = pd.DataFrame(plan["jobs"])
        assert set(zip(jobs["unit"], jobs["rule"])) == {(u, r) for u in units for r in PER_UNIT_RULES}  # every job
        rounding = 0.05 + 0.0005 * len(jobs)  # the table shows 0.1 s, the JSON 3 decimals per job
        for rule in PER_UNIT_RULES:
            mine = jobs[jobs["rule"] == rule]
            assert rows[rule]["jobs"] == len(mine)
            assert rows[rule][f"{label} s"] == pytest.approx(mine["seconds"].sum(), abs=rounding)
            assert rows[rule][f"{label} peak MB"] == pytest.approx(mine["mem_mb"].max(), abs=0.6)
        assert rows["total"]["jobs"] == len(jobs) == len(PER_UNIT_RULES) * len(units)
        assert rows["total"][f"{label} s"] == pytest.approx(jobs["seconds"].sum(), abs=rounding)
        per_rule = sum(rows[rule][f"{label} s"] for rule in PER_UNIT_RULES)
        assert rows["total"][f"{label} s"] == pytest.approx(per_rule, abs=0.15)
        assert re.search(rf"^total {label}: +{rows['total'][f'{label} s']:,.1f} job-seconds", printed, re.M)
    assert document["backend"] == "cpu" and document["gpu"]["backend"] == "cuda"
    assert document["gpu"]["throughput"]["basis"] == "published:h100-sxm"


def test_the_plan_s_default_method_is_the_workflow_s_and_json_goes_to_stdout(speed, toy_results, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(speed[1]))
    assert DEFAULT_METHOD == SCHEMA["properties"]["svd_method"]["default"] == "auto"
    results, inventory = toy_results
    assert main(["--results", str(results), "--device", "none", "--json"]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)  # stdout holds the JSON alone, the table goes to stderr
    assert document["method"] == "auto" and "svd_method auto" in captured.err and "gpu" not in document
    assert len(document["jobs"]) == len(PER_UNIT_RULES) * inventory["unit"].nunique()
    header, rows = table_rows(captured.err)
    assert header == ["rule", "jobs", "here s", "here peak MB"]
    assert rows["total"]["here s"] == pytest.approx(sum(job["seconds"] for job in document["jobs"]),
                                                    abs=0.05 + 0.0005 * len(document["jobs"]))


# --- rule deltas: a model against its base --------------------------------------------------


def subspaces_formula(m, n, k, rates) -> float:
    """Seconds of the top-k singular vectors of an m x n float64 matrix (m >= n) from its Gram matrix:
    2mn^2 for the Gram product, 4n^3/3 for the tridiagonal reduction, 2n^2 per eigenvector
    back-transformed (the top k from n = 512 up, LAPACK syevr by index; all n below, numpy's eigh),
    2mnk for the other side's vectors."""
    vectors = k if n >= 512 else n
    return (2 * m * n**2 + 2 * n**2 * vectors + 2 * m * n * k) / rates["gemm64"] + 4 * n**3 / 3 / rates["eigh64"]


def deltas_formula(shapes, t, host, stored_bytes, adapter_rank=None, k=10) -> float:
    """A deltas job's seconds written out from the flop counts (docs/metrics.md, "Cost model"):
    per matrix (m >= n) in float64 either dW's gesdd (QR first when m >= 11n/6, at t's rates: the
    GPU's on cuda) or, for an adapter, QR + core of both rank-r factors and two m n r products on
    the CPU; then the top-k subspaces of W and W_base on the CPU (`host` rates), dW's tail fit and
    both matrices' element work."""
    rates, sides = t.rates, 1 if adapter_rank else 2
    seconds = t.start_s["deltas"] + sides * stored_bytes / t.read_bps
    for rows, cols in shapes:
        m, n = max(rows, cols), min(rows, cols)
        if adapter_rank:
            r = adapter_rank
            for side in (rows, cols):  # tall side x r: QR, then the r x r R bidiagonalised
                seconds += (2 * side * r**2 - 2 * r**3 / 3) / host["qr64"] + 8 * r**3 / 3 / host["bidiag64"]
            seconds += 4 * m * n * r / host["gemm64"]
        elif 6 * m >= 11 * n:
            seconds += (2 * m * n**2 - 2 * n**3 / 3) / rates["qr64"] + 8 * n**3 / 3 / rates["bidiag64"]
        else:
            seconds += (4 * m * n**2 - 4 * n**3 / 3) / rates["bidiag64"]
        seconds += 2 * subspaces_formula(m, n, min(k, n), host)
        seconds += n**2 * t.eig2_s + sides * m * n * t.elements_s
    return seconds


@pytest.mark.parametrize("adapter_rank", [None, 8])
def test_a_deltas_job_costs_its_flops_at_the_measured_float64_rates(speed, adapter_rank):
    t = speed[0]
    shapes = [(512, 512), (2048, 512), (256, 1536)]  # square, tall (QR first), wide (full eigh below 512)
    rows = unit_rows(shapes)
    options = {"adapter_only": True, "adapter_rank": adapter_rank} if adapter_rank else {}
    job = predict_unit(rows, "deltas", t, **options)
    assert job.seconds == pytest.approx(deltas_formula(shapes, t, t.rates, rows["nbytes"].sum(), adapter_rank),
                                        rel=1e-9)
    assert job.mem_mb > t.base_mb["deltas"] + (1 if adapter_rank else 2) * rows["nbytes"].max() / 1e6
    # the method and compute dtype of the anatomy do not change it: deltas run in float64 by gesdd
    assert predict_unit(rows, "deltas", t, "gram", compute_dtype="float32", **options) == job
    wider = predict_unit(rows, "deltas", t, subspace_k=64, **options)  # more subspace vectors cost more
    assert wider.seconds == pytest.approx(deltas_formula(shapes, t, t.rates, rows["nbytes"].sum(), adapter_rank, 64),
                                          rel=1e-9)
    assert wider.seconds > job.seconds


def test_a_deltas_job_grows_with_the_cube_of_its_matrices_and_an_adapter_costs_less(speed):
    """With no start, I/O or element work and k = n every term is cubic: doubling both sides
    costs 8x."""
    t = replace(speed[0], start_s={**speed[0].start_s, "deltas": 0.0}, read_bps=math.inf, elements_s=0.0,
                eig2_s=0.0)
    small, large = (predict_unit(unit_rows([(n, n)]), "deltas", t, subspace_k=10**9) for n in (512, 1024))
    assert large.seconds == pytest.approx(8 * small.seconds) and large.flops == pytest.approx(8 * small.flops)
    jobs = [predict_unit(unit_rows([shape]), "deltas", speed[0]) for shape in [(64, 64), (256, 64), (256, 256),
                                                                               (1024, 256), (1024, 1024)]]
    assert all(b.seconds > a.seconds and b.mem_mb > a.mem_mb and b.flops > a.flops for a, b in zip(jobs, jobs[1:]))
    rows, n = unit_rows([(2048, 2048)]), 2048
    dense = predict_unit(rows, "deltas", speed[0])
    adapter = predict_unit(rows, "deltas", speed[0], adapter_only=True, adapter_rank=16)
    assert adapter.seconds < dense.seconds and adapter.mem_mb < dense.mem_mb
    assert adapter.seconds > 2 * subspaces_formula(n, n, 10, speed[0].rates)  # W's and W_base's subspaces remain


def test_a_gpu_prices_a_deltas_job_s_svd_at_its_rates_and_its_subspaces_at_the_host_s(speed, h100):
    """On CUDA dW's SVD runs on the GPU and only dW travels there; the subspaces of W and W_base
    run on the CPU (analysis.delta_unit), at the host's rates; the jobs queue on the one GPU."""
    host, gpu = speed[0], h100
    assert "deltas" in GPU_RULES and gpu.start_s["deltas"] > host.start_s["deltas"]  # torch and a CUDA context
    assert gpu.rates["gemm64"] != host.rates["gemm64"]
    shapes, n = [(4096, 4096)], 4096
    rows = unit_rows(shapes)
    on_gpu = predict_unit(rows, "deltas", gpu)
    expected = deltas_formula(shapes, gpu, host.rates, rows["nbytes"].sum()) + n * n * 8 / 25e9
    assert on_gpu.seconds == pytest.approx(expected, rel=1e-9)
    adapter = predict_unit(rows, "deltas", gpu, adapter_only=True, adapter_rank=8)  # all on the CPU: no transfer
    assert adapter.seconds == pytest.approx(deltas_formula(shapes, gpu, host.rates, rows["nbytes"].sum(), 8),
                                            rel=1e-9)
    jobs = pd.DataFrame([{"unit": "layer_000", "rule": "deltas", "seconds": on_gpu.seconds, "mem_mb": 1.0,
                          "gflops": 0.0}] * 3)
    assert one_gpu_wall_s(jobs, cores=3) == pytest.approx(3 * on_gpu.seconds)  # one at a time on the GPU


def test_only_a_model_with_a_base_has_deltas_jobs_in_its_plan(speed, toy_results):
    results, inventory = toy_results
    dims = json.loads((results / "model.json").read_text())
    t, units = speed[0], set(inventory["unit"])
    alone = plan_document("toy", plan_model(inventory, dims, t), t, "gesdd")
    assert {job["rule"] for job in alone["jobs"]} == set(PER_UNIT_RULES)  # no base: no deltas
    based = plan_document("toy", plan_model(inventory, dims, t, deltas=True), t, "gesdd")
    assert {(job["unit"], job["rule"]) for job in based["jobs"]} == {(u, r) for u in units for r in PRICED_RULES}
    assert "deltas" in based["totals"]["per_rule_seconds"]
    assert based["totals"]["seconds"] > alone["totals"]["seconds"]
    json.dumps(based)
    adapter = plan_model(inventory, dims, t, adapter_only=True)  # no weights of its own: its deltas alone
    assert set(adapter["rule"]) == {"deltas"} and set(adapter["unit"]) == units
    layer = inventory[inventory["unit"] == "layer_000"]
    mine = adapter[adapter["unit"] == "layer_000"].iloc[0]
    assert mine["seconds"] == pytest.approx(predict_unit(layer, "deltas", t, adapter_only=True).seconds)


def test_the_deltas_of_a_selection_are_priced_on_its_tensors_and_an_adapter_s_on_whole_units(speed, toy_results,
                                                                                              monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(speed[1]))
    results, inventory = toy_results
    dims = json.loads((results / "model.json").read_text())
    up = "model.layers.1.mlp.up_proj.weight"
    t, layer = speed[0], inventory[inventory["unit"] == "layer_001"]
    plain = predicted_jobs(results / "inventory.parquet", dims, {"layer_001": [up]}, method="gesdd")
    assert not any(rule == "deltas" for _, rule in plain)
    jobs = predicted_jobs(results / "inventory.parquet", dims, {"layer_001": [up]}, method="gesdd", deltas=True)
    assert {rule for _, rule in jobs} == set(PRICED_RULES)
    assert asdict(jobs["layer_001", "deltas"]) == pytest.approx(
        asdict(predict_unit(layer[layer["param_name"] == up], "deltas", t)))
    adapter = predicted_jobs(results / "inventory.parquet", dims, {"layer_001": [up]}, adapter_only=True)
    assert {rule for _, rule in adapter} == {"deltas"}
    assert asdict(adapter["layer_001", "deltas"]) == pytest.approx(asdict(predict_unit(layer, "deltas", t,
                                                                                       adapter_only=True)))


def test_blockscope_plan_prices_the_deltas_on_request(speed, toy_results, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(speed[1]))
    results, inventory = toy_results
    assert main(["--results", str(results), "--device", "none", "--deltas", "--json"]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    header, rows = table_rows(captured.err)
    assert list(rows) == [*PRICED_RULES, "total"]
    deltas = [job for job in document["jobs"] if job["rule"] == "deltas"]
    assert rows["deltas"]["jobs"] == len(deltas) == inventory["unit"].nunique()
    assert rows["deltas"]["here s"] == pytest.approx(sum(job["seconds"] for job in deltas), abs=0.05)
    assert main(["--results", str(results), "--device", "none", "--adapter-only", "--json"]) == 0
    assert {job["rule"] for job in json.loads(capsys.readouterr().out)["jobs"]} == {"deltas"}


# --- the anatomy's diagnostics part (analysis.diagnostics) ------------------------------------


def svd_formula(m, n, method, rates) -> float:
    """Seconds of one float32 matrix's singular values (m >= n) written out: gesdd at the float32
    rates (QR first when m >= 11n/6), or the float64 Gram product and its eigenvalues (n < 3072)."""
    if method == "gram":
        return 2 * m * n**2 / rates["gemm64"] + 4 * n**3 / 3 / rates["eigh64"]
    if 6 * m >= 11 * n:
        return (2 * m * n**2 - 2 * n**3 / 3) / rates["qr32"] + 8 * n**3 / 3 / rates["bidiag32"]
    return (4 * m * n**2 - 4 * n**3 / 3) / rates["bidiag32"]


def permutation_formula(m, n, permute) -> float:
    """One permutation's seconds: its elements at the seconds per element measured on 512 x 512 and
    2048 x 2048 matrices, interpolated in log(elements) between them, the nearer one's outside."""
    share = np.clip(np.log(m * n / 512**2) / np.log(16), 0, 1)
    return m * n * (permute[0] + share * (permute[1] - permute[0]))


def diagnostics_formula(shapes, t, method) -> float:
    """The diagnostics part's seconds written out (docs/cost-model.md), for shapes whose short side is
    under 10 or at least 20: no start and no read of its own (the anatomy job's, shared); per matrix
    (m >= n) with 10 eigenvalues or more one seeded permutation and its singular values, five of them
    for a matrix under 100 eigenvalues (WeightWatcher's pooled replicas); the power-law fits (the
    plain fit again, a KS scan ~n^2; clip_xmax's own and its refits without the 2 to 9 largest at
    max_fingers 10, nine pruned scans ~n), one truncated power-law fit."""
    d, seconds = t.diagnostics_s, 0.0
    for rows, cols in shapes:
        m, n = max(rows, cols), min(rows, cols)
        if n < 10:
            continue
        replicas = 5 if n < 100 else 1
        seconds += replicas * (permutation_formula(m, n, d["permute"]) + svd_formula(m, n, method, t.rates))
        seconds += n**2 * d["powerlaw_fit"] + 9 * n * d["ks_optimal_fit"] + d["tpl"]
    return seconds


def vectors_formula(shapes, t) -> float:
    """The top-k singular vectors (diagnostics.vectors) on the CPU written out: every matrix's from its
    float64 Gram matrix, as the deltas' subspaces (subspaces_formula)."""
    return sum(subspaces_formula(max(r, c), min(r, c), min(VECTOR_K, r, c), t.rates) for r, c in shapes)


# square, tall (QR first), wide, small (five replicas), too small to fit (no permutation, no fits)
DIAGNOSED = [(512, 512), (2048, 512), (256, 1536), (64, 200), (8, 300)]


def test_calibration_measures_the_diagnostics_own_code_and_no_job_start_of_its_own(speed):
    t = speed[0]
    assert set(t.diagnostics_s) == {"permute", "powerlaw_fit", "ks_optimal_fit", "tpl"}
    assert len(t.diagnostics_s["permute"]) == 2 and all(s > 0 for s in t.diagnostics_s["permute"])
    assert all(t.diagnostics_s[key] > 0 for key in ("powerlaw_fit", "ks_optimal_fit", "tpl"))
    assert set(t.start_s) == set(t.base_mb) == set(PRICED_RULES)  # the anatomy's start imports the diagnostics
    assert "blockscope.analysis.diagnostics" in JOB_MODULES["anatomy"]


@pytest.mark.parametrize("method", METHODS)
def test_an_anatomy_job_adds_its_diagnostics_part_s_permuted_svds_and_fits(speed, method):
    """diagnostics (config diagnostics.enabled, on by default): the anatomy job's fourth part, priced
    inside its seconds (diagnostics_formula, one start and one read for all its parts) and its memory
    (the largest part's arrays: here the diagnostics', the spectra's plus a permuted matrix)."""
    t = speed[0]
    rows = unit_rows(DIAGNOSED)
    on, off = (predict_unit(rows, "anatomy", t, method, diagnostics=d) for d in (True, False))
    assert on == predict_unit(rows, "anatomy", t, method)  # the default: on, no vectors
    assert (DIAGNOSTICS, VECTORS) == (True, False)
    others = [predict_unit(rows, part, t, method) for part in ("spectra", "precision", "heads")]
    assert off.seconds == pytest.approx(t.start_s["anatomy"] + sum(p.seconds for p in others), rel=1e-12)
    assert on.seconds - off.seconds == pytest.approx(diagnostics_formula(DIAGNOSED, t, method), rel=1e-9)
    part = predict_unit(rows, "diagnostics", t, method)
    assert part.seconds == pytest.approx(diagnostics_formula(DIAGNOSED, t, method), rel=1e-9)
    assert on.flops == pytest.approx(off.flops + part.flops) and part.flops > 0
    assert on.mem_mb == pytest.approx(t.base_mb["anatomy"] + part.mem_mb) and on.mem_mb > off.mem_mb
    too_small = predict_unit(unit_rows([(8, 300)]), "diagnostics", t, method)  # nothing to fit: nothing
    assert too_small.seconds == 0 and too_small.flops == 0


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
@pytest.mark.parametrize("method", [*METHODS, "auto"])
def test_a_permuted_svd_costs_what_the_spectra_part_s_svd_of_the_matrix_costs(speed, h100, backend, method):
    """The permutations' singular values run as the spectra's (compute_spectra, the same method, dtype
    and backend): with every other term of both zeroed, the diagnostics part costs the spectra part,
    on the GPU the matrices' travel included. Memory: the spectra part's arrays plus the permutations
    held at once (one matrix's on the CPU, the unit's on a GPU)."""
    t = speed[0] if backend == "cpu" else h100
    bare = replace(t, read_bps=math.inf, elements_s=0.0, eig2_s=0.0,
                   diagnostics_s={**dict.fromkeys(t.diagnostics_s, 0.0), "permute": [0.0, 0.0]})
    shapes = [(512, 512), (2048, 512), (256, 1536), (3072, 4096)]  # one permutation each
    rows = unit_rows(shapes)
    diagnostics, spectra = (predict_unit(rows, part, bare, method) for part in ("diagnostics", "spectra"))
    assert diagnostics.seconds == pytest.approx(spectra.seconds, rel=1e-12) and diagnostics.flops == spectra.flops
    held = (sum if backend == "cuda" else max)(r * c * 4 for r, c in shapes)
    assert diagnostics.mem_mb == pytest.approx(spectra.mem_mb + held / 1e6, rel=1e-12)


def test_the_singular_vectors_are_priced_only_when_on(speed, h100):
    """diagnostics.vectors: every matrix's top-k singular vectors, on the CPU from its float64 Gram
    matrix (vectors_formula), on a GPU by torch's eigh of the Gram matrix, which computes all n
    eigenvectors, after the matrix's travel in float32; inside the anatomy job, and only while its
    diagnostics part runs."""
    t = speed[0]
    rows = unit_rows(DIAGNOSED)
    plain, vectors = (predict_unit(rows, "anatomy", t, vectors=v) for v in (False, True))
    assert vectors.seconds - plain.seconds == pytest.approx(vectors_formula(DIAGNOSED, t), rel=1e-9)
    assert vectors.mem_mb >= plain.mem_mb and vectors.flops > plain.flops
    assert predict_unit(rows, "anatomy", t, diagnostics=False, vectors=True) == \
        predict_unit(rows, "anatomy", t, diagnostics=False)  # no diagnostics part: no vectors
    on_gpu = [predict_unit(rows, "anatomy", h100, vectors=v).seconds for v in (False, True)]
    rates = h100.rates
    expected = sum((2 * m * n**2 + 2 * n**3 + 2 * m * n * min(VECTOR_K, n)) / rates["gemm64"]
                   + 4 * n**3 / 3 / rates["eigh64"] + m * n * 4 / 25e9
                   for m, n in ((max(r, c), min(r, c)) for r, c in DIAGNOSED))
    assert on_gpu[1] - on_gpu[0] == pytest.approx(expected, rel=1e-9)


def test_the_diagnostics_defaults_are_the_config_s():
    diagnostics = SCHEMA["properties"]["diagnostics"]["properties"]
    assert diagnostics["enabled"]["default"] == DIAGNOSTICS and diagnostics["vectors"]["default"] == VECTORS
    assert diagnostics["max_fingers"]["default"] == MAX_FINGERS and diagnostics["vector_k"]["default"] == VECTOR_K


def test_the_diagnostics_options_reach_the_plan_and_the_workflow_s_requests(speed, toy_results, monkeypatch):
    """diagnostics (config diagnostics.enabled) and vectors change the anatomy jobs' price alone, by
    the diagnostics terms of their selected tensors; no rule of their own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(speed[1]))
    results, inventory = toy_results
    dims = json.loads((results / "model.json").read_text())
    t, layer = speed[0], inventory[inventory["unit"] == "layer_000"]
    plans = {options: plan_model(inventory, dims, t, diagnostics=options[0], vectors=options[1])
             for options in ((True, False), (False, False), (True, True))}
    assert plans[True, False].equals(plan_model(inventory, dims, t))  # the defaults: on, no vectors
    assert all(set(plan["rule"]) == set(PER_UNIT_RULES) for plan in plans.values())
    extract = {options: plan[plan["rule"] == "extract"].reset_index(drop=True) for options, plan in plans.items()}
    assert extract[True, False].equals(extract[False, False]) and extract[True, True].equals(extract[False, False])
    shapes = [shape for info in layer.itertuples() for shape in [tuple(info.shape)] if len(shape) == 2]
    anatomy = {options: plan[(plan["unit"] == "layer_000") & (plan["rule"] == "anatomy")].iloc[0]
               for options, plan in plans.items()}
    assert anatomy[True, False]["seconds"] - anatomy[False, False]["seconds"] == pytest.approx(
        diagnostics_formula(shapes, t, "gesdd"), rel=1e-6)
    assert anatomy[True, True]["seconds"] - anatomy[True, False]["seconds"] == pytest.approx(
        vectors_formula(shapes, t), rel=1e-6)
    for options, row in anatomy.items():
        priced = predict_unit(layer, "anatomy", t, precisions=["fp32", "fp16", "bf16"], dims=dims,
                              diagnostics=options[0], vectors=options[1])
        assert row["seconds"] == pytest.approx(priced.seconds) and row["mem_mb"] == pytest.approx(priced.mem_mb)
    up = "model.layers.1.mlp.up_proj.weight"
    path, chosen = results / "inventory.parquet", inventory[inventory["param_name"] == up]
    requests = {}
    for options in ((True, False), (False, False), (True, True)):
        jobs = predicted_jobs(path, dims, {"layer_001": [up]}, method="gesdd", diagnostics=options[0],
                              vectors=options[1])
        assert {rule for _, rule in jobs} == set(PER_UNIT_RULES)
        assert asdict(jobs["layer_001", "anatomy"]) == pytest.approx(asdict(predict_unit(
            chosen, "anatomy", t, "gesdd", precisions=["fp32"], dims=dims, diagnostics=options[0],
            vectors=options[1])))
        requests[options] = jobs["layer_001", "anatomy"].seconds
    up_shape = [tuple(chosen.iloc[0]["shape"])]
    assert requests[True, False] - requests[False, False] == pytest.approx(
        diagnostics_formula(up_shape, t, "gesdd"), rel=1e-6)
    assert requests[False, False] < requests[True, False] < requests[True, True]


def test_blockscope_plan_prices_the_diagnostics_unless_told_not_to(speed, toy_results, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(speed[1]))
    results, _ = toy_results
    totals = {}
    for flags in ([], ["--no-diagnostics"], ["--vectors"]):
        assert main(["--results", str(results), "--device", "none", "--json", *flags]) == 0
        captured = capsys.readouterr()
        totals[tuple(flags)] = json.loads(captured.out)["totals"]["per_rule_seconds"]
        assert set(totals[tuple(flags)]) == set(PER_UNIT_RULES)  # no diagnostics rule: the anatomy's part
        assert ("no diagnostics" in captured.err) == (flags == ["--no-diagnostics"])
    anatomy = {flags: per_rule["anatomy"] for flags, per_rule in totals.items()}
    assert anatomy[("--no-diagnostics",)] < anatomy[()] < anatomy[("--vectors",)]
    assert totals[()]["extract"] == totals[("--no-diagnostics",)]["extract"] == totals[("--vectors",)]["extract"]
