"""A unit's analysis on real files: 3-D experts split per expert, bad tensors, empty units."""

import numpy as np
import pandas as pd
import pytest

from blockscope.inventory import build_inventory
from blockscope.tensors import write_unit
from blockscope.layout import METRICS_COLUMNS, STATISTICS_ONLY
from blockscope.unit_analysis import analyse_unit, precision_sweep


def _unit(tmp_path, tensors: dict, layouts=None):
    target = tmp_path / "unit.parquet"
    write_unit(((n, "F32", a) for n, a in tensors.items()), target)
    inventory = pd.DataFrame({
        "param_name": list(tensors), "unit": "layer_000", "layer_index": 0,
        "block_type": ["moe_expert" if a.ndim == 3 else "q_proj" for a in tensors.values()],
        "shape": [list(a.shape) for a in tensors.values()], "dtype": "F32", "source_dtype": "F32",
        "layout": [(layouts or {}).get(n, "out_in") for n in tensors]})
    return target, inventory


def test_fused_experts_are_split_and_bad_tensors_reported(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"mlp.experts.gate_up_proj": rng.standard_normal((3, 40, 16)).astype(np.float32),
               "attn.q_proj.weight": rng.standard_normal((16, 16)).astype(np.float32),
               "attn.broken.weight": np.full((16, 16), np.nan, np.float32),
               "norm.weight": np.ones(16, np.float32)}
    path, inventory = _unit(tmp_path, tensors)
    metrics, spectra = analyse_unit("m", "layer_000", path, inventory)
    assert list(metrics.columns) == METRICS_COLUMNS
    experts = metrics[metrics["param_name"] == "mlp.experts.gate_up_proj"]
    assert list(experts["expert"]) == [0, 1, 2] and set(experts["rows"]) == {40}
    expected = np.linalg.svd(tensors["mlp.experts.gate_up_proj"][1].astype(np.float64), compute_uv=False)
    got = spectra.loc[spectra["matrix"] == "mlp.experts.gate_up_proj[1]", "sigma"].to_numpy()
    assert np.allclose(got, expected, rtol=1e-5)
    broken = metrics.set_index("param_name").loc["attn.broken.weight"]
    assert broken["status"].startswith("non-finite") and np.isnan(broken["alpha"]) and broken["backend"] == "none"
    assert metrics.set_index("param_name").loc["norm.weight", "status"] == STATISTICS_ONLY
    assert "norm.weight" not in set(spectra["param_name"])
    sweep = precision_sweep("m", "layer_000", path, inventory, spectra, ["fp32", "bf16"])
    assert len(sweep) == 2 * (len(metrics) - 1) and "norm.weight" not in set(sweep["param_name"])
    q = sweep[sweep["param_name"] == "attn.q_proj.weight"].set_index("precision")["alpha_hill"]
    assert np.isfinite(q["fp32"]) and q["fp32"] == pytest.approx(metrics.set_index("param_name").loc["attn.q_proj.weight", "alpha_hill"])


def test_empty_unit_has_typed_empty_files(tmp_path):
    path, inventory = _unit(tmp_path, {"norm.weight": np.ones(8, np.float32)})
    metrics, spectra = analyse_unit("m", "other", path, inventory)
    assert list(metrics.columns) == METRICS_COLUMNS and len(spectra) == 0
    assert list(metrics["status"]) == [STATISTICS_ONLY]  # no matrix: only the 1-D statistics row


def test_one_d_parameters_get_statistics_rows_only(tmp_path):
    rng = np.random.default_rng(1)
    bias = rng.standard_normal(24).astype(np.float32)
    bias[[3, 7]] = 0.0
    bias[5] = 5e-7                      # |w| <= 1e-6: sparse at the default threshold, not at 1e-7
    tensors = {"norm.weight": np.ones(16, np.float32), "attn.q_proj.bias": bias,
               "attn.q_proj.weight": rng.standard_normal((16, 16)).astype(np.float32),
               "bad.bias": np.array([1.0, np.nan, 2.0], np.float32)}
    path, inventory = _unit(tmp_path, tensors)
    inventory.loc[inventory["param_name"] == "norm.weight", "block_type"] = "norm"
    metrics, spectra = analyse_unit("m", "layer_000", path, inventory)
    vectors = metrics[metrics["status"] == STATISTICS_ONLY].set_index("param_name")
    assert sorted(vectors.index) == ["attn.q_proj.bias", "bad.bias", "norm.weight"]
    row = vectors.loc["attn.q_proj.bias"]
    x = bias.astype(np.float64)
    assert row["rows"] == 24 and pd.isna(row["cols"]) and pd.isna(row["design_rank"])
    assert row["mean"] == pytest.approx(x.mean()) and row["var"] == pytest.approx(x.var())
    assert row["std"] == pytest.approx(x.std()) and row["sparsity"] == pytest.approx(3 / 24)
    assert np.isnan(row["alpha"]) and np.isnan(row["effective_rank"]) and row["backend"] == "none"
    norm = vectors.loc["norm.weight"]
    assert (norm["mean"], norm["std"], norm["sparsity"], norm["block_type"]) == (1.0, 0.0, 0.0, "norm")
    bad = vectors.loc["bad.bias"]
    assert np.isnan(bad["mean"]) and "non-finite entries (1)" in bad["warning"]
    assert set(spectra["param_name"]) == {"attn.q_proj.weight"}  # never a spectrum for a 1-D parameter
    strict, _ = analyse_unit("m", "layer_000", path, inventory, sparsity_threshold=1e-7)
    assert strict.set_index("param_name").loc["attn.q_proj.bias", "sparsity"] == pytest.approx(2 / 24)
    sweep = precision_sweep("m", "layer_000", path, inventory, spectra, ["fp32"])
    assert set(sweep["param_name"]) == {"attn.q_proj.weight"}
