"""The cost model: flop counts, predictions from a real inventory, the cached throughput, the
SLURM requests and the inventory of a transformers config built without weights."""

import json
import math

import pandas as pd
import pytest
import yaml

from blockscope.planning import cost_model as cost
from blockscope.checkpoint.inventory import build_inventory, model_dims, read_config
from conftest import ROOT, TINY_LLAMA, save_tiny


@pytest.fixture(scope="module")
def speed(tmp_path_factory):
    """One real calibration of this machine, into a cache of the test's own."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(cache))
        first = cost.throughput("cpu")
        yield first, cache


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
    path = cost.cache_path("cpu")
    assert path.is_relative_to(cache) and path.exists()
    stamp = path.stat().st_mtime_ns
    again = cost.throughput("cpu")
    assert again == first and path.stat().st_mtime_ns == stamp  # read back, not measured again
    assert all(rate > 0 for rate in first.rates.values())
    assert set(first.start_s) >= set(cost.PER_UNIT_RULES) and all(s > 0 for s in first.start_s.values())


def test_a_cache_of_another_machine_is_measured_again(speed, monkeypatch, tmp_path):
    first, _ = speed
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = cost.cache_path("cpu")
    path.parent.mkdir(parents=True)
    stale = {**cost.asdict(first), "key": {**first.key, "cpu": "another CPU"}, "measured_at": "then"}
    path.write_text(json.dumps(stale))
    monkeypatch.setattr(cost, "calibrate", lambda backend, device=None: first)  # the measuring itself: tested above
    assert cost.throughput("cpu").measured_at == first.measured_at
    assert json.loads(path.read_text())["key"] == first.key


def test_flop_counts_follow_lapack_and_grow_with_the_shape():
    assert cost.gesdd_flops(100, 100) == (0.0, 4 * 100**3 - 4 * 100**3 / 3)
    qr, bidiag = cost.gesdd_flops(4096, 256)  # tall: QR first (LAPACK's MNTHR = 11n/6)
    assert qr == 2 * 4096 * 256**2 - 2 * 256**3 / 3 and bidiag == 8 * 256**3 / 3
    assert cost.gesdd_flops(256, 4096) == cost.gesdd_flops(4096, 256)  # the transpose costs the same
    assert cost.gram_flops(896, 4864) == 2 * 4864 * 896**2
    assert cost.eigh_flops(1024) == 4 * 1024**3 / 3
    sizes = [(64, 64), (128, 64), (256, 64), (256, 256), (1024, 256)]
    for method in cost.METHODS:
        seconds = [cost.svd_seconds(r, c, 32, method, {"qr32": 1e9, "bidiag32": 1e9, "gemm64": 1e9, "eigh64": 1e9})
                   for r, c in sizes]
        assert all(b > a > 0 for a, b in zip(seconds, seconds[1:])), (method, seconds)


def unit_rows(shapes, dtype="F32"):
    return pd.DataFrame([{"param_name": f"model.layers.0.mlp.w{i}.weight", "unit": "layer_000", "layer_index": 0,
                          "block_type": "up_proj", "shape": list(s), "dtype": dtype, "source_dtype": dtype,
                          "nbytes": math.prod(s) * 4, "file": "m.safetensors", "layout": "out_in"}
                         for i, s in enumerate(shapes)])


@pytest.mark.parametrize("rule", ["spectra", "precision"])
@pytest.mark.parametrize("method", cost.METHODS)
def test_predictions_are_positive_and_grow_with_the_matrices(speed, rule, method):
    t = speed[0]
    jobs = [cost.predict_unit(unit_rows([shape]), rule, t, method, precisions=["fp32", "fp16"])
            for shape in [(64, 64), (256, 128), (512, 512), (2048, 512)]]
    assert all(j.seconds > 0 and j.mem_mb > 0 for j in jobs)
    assert all(b.seconds > a.seconds and b.mem_mb > a.mem_mb and b.flops > a.flops for a, b in zip(jobs, jobs[1:]))


def test_each_precision_s_rounding_cast_is_priced_at_its_own_measured_rate(speed):
    """numpy's float16 conversion is a scalar loop, bf16 a bit operation: one rate for both
    under-priced the fp16 sweep of the demo's embedding 8x. The sweep is priced per precision."""
    t = speed[0]
    assert set(t.cast_s) == {"fp64", "fp32", "fp16", "bf16", "fp8-e4m3"} and all(s > 0 for s in t.cast_s.values())
    slow = cost.replace(t, cast_s={**t.cast_s, "bf16": 1e-6})
    rows = unit_rows([(2048, 512)], "F32")
    base = cost.predict_unit(rows, "precision", t, precisions=["bf16"]).seconds
    priced = cost.predict_unit(rows, "precision", slow, precisions=["bf16"]).seconds
    assert priced - base == pytest.approx(2048 * 512 * (1e-6 - t.cast_s["bf16"]))
    exact = unit_rows([(2048, 512)], "BF16")  # stored in bf16: its bf16 round trip is not even cast
    assert cost.predict_unit(exact, "precision", slow, precisions=["bf16"]).seconds == \
        pytest.approx(cost.predict_unit(exact, "precision", t, precisions=["bf16"]).seconds)


def test_the_sweep_skips_precisions_that_change_no_stored_value(speed):
    t = speed[0]
    assert cost.computed_precisions("BF16", ["fp32", "fp16", "bf16", "fp64"]) == ["fp16", "fp64"]
    assert cost.computed_precisions("F32", ["fp32", "fp16", "bf16"]) == ["fp16", "bf16"]
    assert cost.computed_precisions("F32", ["fp32", "fp64"]) == ["fp64"]  # fp64 runs in float64
    assert cost.computed_precisions("F32", ["fp32", "fp64"], "float64") == []  # both reuse float64 spectra
    stored_bf16 = cost.predict_unit(unit_rows([(512, 512)], "BF16"), "precision", t, precisions=["fp32", "bf16"])
    stored_f32 = cost.predict_unit(unit_rows([(512, 512)], "F32"), "precision", t, precisions=["fp32", "bf16"])
    assert stored_bf16.flops == 0 < stored_f32.flops


@pytest.mark.slow  # builds a real model
def test_a_plan_from_a_real_inventory_prices_every_unit_and_rule(speed, tiny):
    inventory, dims, _ = tiny
    jobs = cost.plan_model(inventory, dims, speed[0], "gesdd", precisions=["fp32", "fp16", "bf16"])
    assert list(jobs.columns) == cost.PLAN_JOB_COLUMNS
    assert set(zip(jobs["unit"], jobs["rule"])) == {(u, r) for u in inventory["unit"].unique() for r in cost.PER_UNIT_RULES}
    assert (jobs["seconds"] > 0).all() and (jobs["mem_mb"] > 0).all()
    rows = inventory[inventory["unit"] == "layer_000"]
    heads = cost.predict_unit(rows, "heads", speed[0], dims=dims)
    assert heads.flops > 0  # attention heads are priced in the layers, as part of their anatomy job
    anatomy = cost.predict_unit(rows, "anatomy", speed[0], "gesdd", precisions=["fp32", "fp16", "bf16"], dims=dims)
    parts = [cost.predict_unit(rows, part, speed[0], "gesdd", precisions=["fp32", "fp16", "bf16"], dims=dims)
             for part in cost.PARTS]
    assert anatomy.seconds == pytest.approx(speed[0].start_s["anatomy"] + sum(p.seconds for p in parts))  # one start
    assert anatomy.flops == pytest.approx(sum(p.flops for p in parts))
    document = cost.plan_document("tiny", jobs, speed[0], "gesdd", cores=2)
    assert document["totals"]["seconds"] == pytest.approx(jobs["seconds"].sum())
    assert document["totals"]["wall_s"] >= jobs["seconds"].max()
    json.dumps(document)  # plan.json is plain JSON
    only = cost.plan_model(inventory, dims, speed[0], selected={"layer_001": ["model.layers.1.mlp.up_proj.weight"]})
    assert set(only["unit"]) == {"layer_001"} and only["seconds"].sum() < jobs["seconds"].sum()


@pytest.mark.slow  # builds a real model
def test_an_inventory_from_a_config_alone_matches_the_saved_checkpoints(tiny):
    inventory, dims, folder = tiny
    planned, planned_dims = cost.inventory_from_config({**TINY_LLAMA, "torch_dtype": "float32"})
    columns = ["param_name", "unit", "layer_index", "block_type", "shape", "dtype", "nbytes", "layout"]
    assert planned[columns].to_dict("records") == inventory[columns].to_dict("records")
    assert {k: planned_dims[k] for k in dims} == dims


def test_slurm_requests_are_the_prediction_times_the_safety_and_the_attempt():
    job = cost.Job(seconds=1000.0, mem_mb=1200.0)
    assert cost.slurm_request(job, 1, 2.0) == {"runtime": math.ceil(2000 / 60), "mem_mb": 2400}
    assert cost.slurm_request(job, 2, 2.0) == {"runtime": math.ceil(4000 / 60), "mem_mb": 4800}
    assert cost.slurm_request(job, 1, 1.5) == {"runtime": math.ceil(1500 / 60), "mem_mb": 1800}
    assert cost.slurm_request(cost.Job(0.5, 10.0)) == {"runtime": cost.MIN_RUNTIME_MIN, "mem_mb": cost.MIN_MEM_MB}


def test_the_schema_offers_exactly_the_devices_with_published_throughput():
    schema = yaml.safe_load((ROOT / "schemas/config.schema.yaml").read_text())
    assert schema["properties"]["plan"]["properties"]["gpu"]["enum"] == list(cost.DEVICES)


def test_a_gpu_prices_every_eigensolve_at_its_own_rate(speed):
    """The CPU's two-stage eigh rate (Grams from spectra.TWO_STAGE_MIN_N up) never reaches a GPU's
    prediction: an H100's 4096-sided Gram is priced at its published eigh rate, not the host's."""
    import time

    host = speed[0]
    assert host.rates["eigh64_two_stage"] > 0
    gpu = cost._on_gpu(host, "h100-sxm", time.perf_counter())
    n = 4096
    expected = cost.gram_flops(n, n) / gpu.rates["gemm64"] + cost.eigh_flops(n) / gpu.rates["eigh64"]
    assert cost.svd_seconds(n, n, 32, "gram", gpu.rates) == pytest.approx(expected)
    assert cost.svd_seconds(n, n, 32, "gram", gpu.rates) < cost.svd_seconds(n, n, 32, "gram", host.rates) / 10
