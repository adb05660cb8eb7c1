"""A unit's analysis on real files: 3-D experts split per expert, bad tensors, empty units."""

import numpy as np
import pandas as pd
import pytest

from blockscope.analysis.anatomy import analyse_unit, precision_sweep
from blockscope.io.tensors import write_unit
from blockscope.layout import METRICS_COLUMNS, STATISTICS_ONLY


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
    metrics, spectra = analyse_unit("m", "layer_000", path, inventory, device="cuda:3")
    assert list(metrics.columns) == METRICS_COLUMNS
    assert set(metrics["device"]) == {"cuda:3"}  # the job's GPU on every row, refused and 1-D ones too
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
    assert np.isfinite(q["fp32"])
    assert q["fp32"] == pytest.approx(metrics.set_index("param_name").loc["attn.q_proj.weight", "alpha_hill"])


def test_empty_unit_has_typed_empty_files(tmp_path):
    path, inventory = _unit(tmp_path, {"norm.weight": np.ones(8, np.float32)})
    metrics, spectra = analyse_unit("m", "other", path, inventory)
    assert list(metrics.columns) == METRICS_COLUMNS and len(spectra) == 0
    assert list(metrics["status"]) == [STATISTICS_ONLY]  # no matrix: only the 1-D statistics row


# --- precision sweep: the dtype each SVD runs in, the torch path and its fallback --------------

def _f64_unit(tmp_path, matrix):
    target = tmp_path / "unit64.parquet"
    write_unit([("attn.q_proj.weight", "F64", matrix)], target)
    inventory = pd.DataFrame({"param_name": ["attn.q_proj.weight"], "unit": "layer_000", "layer_index": 0,
                              "block_type": "q_proj", "shape": [list(matrix.shape)], "dtype": "F64",
                              "source_dtype": "F64", "layout": "out_in"})
    return target, inventory


def _clustered_top(rng, n=100):
    """An F64 matrix whose top 10 singular values lie within 1e-9 of each other: float32 rounding
    (relative 6e-8) scrambles them, so alpha-Hill (k = 10) moves a lot; float64 keeps them."""
    sigma = np.concatenate([1 + 1e-9 * np.arange(10, 0, -1), np.linspace(0.5, 0.1, n - 10)])
    u, _ = np.linalg.qr(rng.standard_normal((n, n)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (u * sigma) @ v.T


def test_fp64_row_is_computed_in_float64_and_differs_from_fp32(tmp_path):
    import scipy.linalg

    from blockscope.analysis.heavytail import alpha_hill, hill_k

    w = _clustered_top(np.random.default_rng(7))
    path, inventory = _f64_unit(tmp_path, w)
    sweep = precision_sweep("m", "layer_000", path, inventory, pd.DataFrame(), ["fp64", "fp32"],
                            compute_dtype="float32").set_index("precision")
    assert sweep.loc["fp64", "svd_dtype"] == "float64" and sweep.loc["fp32", "svd_dtype"] == "float32"
    assert set(sweep["backend"]) == {"cpu"} and sweep.loc["fp64", "status"] == "ok"
    assert set(sweep["device"]) == {"cpu"}  # held no GPU
    reference = scipy.linalg.svdvals(w) ** 2  # float64 LAPACK of the stored weights
    expected = alpha_hill(reference, hill_k(reference.size, 0.1))
    assert sweep.loc["fp64", "alpha_hill"] == pytest.approx(expected, rel=1e-6)
    # float32 loses the tail's order: it scrambles the top 10, or (numpy's LAPACK build) rounds
    # them to one value, which leaves alpha-Hill no spread to fit
    fp32 = sweep.loc["fp32"]
    assert fp32["status"] == "too few eigenvalues" or abs(fp32["alpha_hill"] - expected) > 0.1 * expected


def test_fp64_sigma_equals_float64_lapack():
    """The fp64 round trip of a stored matrix keeps every bit and its SVD runs in float64."""
    from blockscope.analysis.round_trip import cast_round_trip, svd_dtype
    from blockscope.analysis.spectra import compute_spectra

    w = np.random.default_rng(8).standard_normal((60, 40))
    assert svd_dtype("fp64", "float32") == np.float64 and svd_dtype("bf16", "float32") == np.float32
    assert svd_dtype("fp16", "float64") == np.float64
    rounded = cast_round_trip(w, "fp64", svd_dtype("fp64", "float32"))
    assert rounded.dtype == np.float64 and np.array_equal(rounded, w)
    (sigma,), _, used = compute_spectra([rounded], "cpu")
    reference = np.linalg.svd(w, compute_uv=False)
    assert used == "cpu" and np.max(np.abs(sigma - reference) / reference) <= 1e-12


def _bf16_unit(tmp_path, n=3):
    rng = np.random.default_rng(9)
    tensors = {f"attn.m{i}.weight": (rng.standard_normal((48, 32)) * rng.random(32) ** 2).astype(np.float32)
               for i in range(n)}
    return _unit(tmp_path, tensors)


def test_sweep_runs_on_the_batched_torch_path(tmp_path):
    pytest.importorskip("torch")
    path, inventory = _bf16_unit(tmp_path)
    args = ("m", "layer_000", path, inventory, pd.DataFrame(), ["fp32", "fp16", "bf16", "fp64"])
    lapack = precision_sweep(*args, backend="cpu")
    torch_cpu = precision_sweep(*args, backend="torch-cpu")
    assert set(lapack["backend"]) == {"cpu"} and set(torch_cpu["backend"]) == {"torch-cpu"}
    assert torch_cpu["svd_dtype"].tolist() == lapack["svd_dtype"].tolist()
    assert np.allclose(torch_cpu["alpha_hill"], lapack["alpha_hill"], rtol=1e-4)


def test_sweep_falls_back_to_lapack_on_cuda_out_of_memory(tmp_path, monkeypatch, caplog):
    torch = pytest.importorskip("torch")

    def out_of_memory(batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    path, inventory = _bf16_unit(tmp_path)
    expected = precision_sweep("m", "layer_000", path, inventory, pd.DataFrame(), ["fp16", "bf16"])
    monkeypatch.setattr(torch.linalg, "svdvals", out_of_memory)
    monkeypatch.setattr(torch.linalg, "eigvalsh", out_of_memory)  # the gram method's eigensolver
    got = precision_sweep("m", "layer_000", path, inventory, pd.DataFrame(), ["fp16", "bf16"], backend="torch-cpu")
    assert set(got["backend"]) == {"cpu"} and "falling back to CPU" in caplog.text
    assert np.array_equal(got["alpha_hill"], expected["alpha_hill"])


def test_reused_spectra_name_the_spectra_jobs_backend(tmp_path):
    path, inventory = _bf16_unit(tmp_path, n=1)
    metrics, spectra = analyse_unit("m", "layer_000", path, inventory)
    sweep = precision_sweep("m", "layer_000", path, inventory, spectra, ["fp32", "fp16"],
                            spectra_backend={"attn.m0.weight": "cuda"}).set_index("precision")
    assert sweep.loc["fp32", "backend"] == "cuda" and sweep.loc["fp16", "backend"] == "cpu"


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


def test_one_read_serves_the_spectra_and_the_sweep_and_exact_round_trips_are_not_cast(tmp_path, monkeypatch):
    """rule anatomy reads a unit once (UnitReader); a precision that holds the stored dtype
    exactly (fp32 of F32) reuses the spectra's values without a cast, as the cast-and-compare did."""
    from blockscope.analysis import anatomy as unit_analysis
    from blockscope.analysis.anatomy import UnitReader, unit_tables

    rng = np.random.default_rng(3)
    tensors = {"attn.q_proj.weight": rng.standard_normal((24, 16)).astype(np.float32),
               "attn.broken.weight": np.full((16, 16), np.inf, np.float32)}
    path, inventory = _unit(tmp_path, tensors)
    rows = inventory.to_dict("records")
    reads, casts = [], []
    real_read, real_round_trip = unit_analysis.unit_matrices, unit_analysis.RoundTrip
    monkeypatch.setattr(unit_analysis, "unit_matrices", lambda *a: reads.append(a[2]) or real_read(*a))
    monkeypatch.setattr(unit_analysis, "RoundTrip", lambda m, p, d: casts.append(p) or real_round_trip(m, p, d))
    reader = UnitReader(path, rows)
    metrics, spectra = unit_tables("m", "layer_000", path, rows, reader=reader)
    shared = unit_analysis.precision_table("m", "layer_000", path, rows, spectra, ["fp32", "bf16"],
                                           reader=reader).to_pandas()
    assert reads == [np.float32]  # one read for both tables
    assert casts == ["fp32", "bf16", "bf16"]  # fp32 cast only for the non-finite matrix, to say why
    alone = precision_sweep("m", "layer_000", path, rows, spectra.to_pandas(), ["fp32", "bf16"])
    pd.testing.assert_frame_equal(shared, alone)
    row = shared.set_index(["param_name", "precision"]).loc[("attn.q_proj.weight", "fp32")]
    assert row["backend"] == "spectra" and row["alpha_hill"] == pytest.approx(  # reused, not recomputed
        metrics.to_pandas().set_index("param_name").loc["attn.q_proj.weight", "alpha_hill"])
    broken_status = shared.set_index(["param_name", "precision"]).loc[("attn.broken.weight", "fp32"), "status"]
    assert broken_status.startswith("fp32")


def test_round_trip_verdict_finds_overflow_and_unchanged_matrices():
    from blockscope.analysis.anatomy import round_trip_verdict
    from blockscope.analysis.round_trip import RoundTrip

    rng = np.random.default_rng(5)
    matrix = rng.standard_normal((300, 20)).astype(np.float32)
    assert round_trip_verdict(RoundTrip(matrix, "fp16", np.float32)) == (None, False)
    representable = matrix.astype(np.float16).astype(np.float32)  # every value an fp16 value
    assert round_trip_verdict(RoundTrip(representable, "fp16", np.float32)) == (None, True)
    assert round_trip_verdict(RoundTrip(representable, "fp16", np.float32), compare=False) == (None, False)
    matrix[299, 0] = 1e5  # above fp16's 65504: Inf after the round trip
    problem, unchanged = round_trip_verdict(RoundTrip(matrix, "fp16", np.float32))
    assert "1 Inf" in problem and not unchanged
    assert round_trip_verdict(RoundTrip(matrix, "bf16", np.float32))[0] is None  # bf16 has float32's range



def test_an_unchecked_verdict_rounds_a_few_rows_of_a_changed_matrix():
    """The sweep leaves the overflow check to the Gram product: its verdict then rounds only the
    first rows of a changed matrix (VERDICT_PROBE_ROWS), where a checked one rounds it all; an
    unchanged matrix is read whole either way."""
    from blockscope.analysis.anatomy import VERDICT_PROBE_ROWS, round_trip_verdict
    from blockscope.analysis.round_trip import RoundTrip

    matrix = np.random.default_rng(8).standard_normal((1000, 1000)).astype(np.float32)  # one Gram block

    class Counted(RoundTrip):
        rounded = 0

        def __getitem__(self, key):
            block = super().__getitem__(key)
            Counted.rounded += block.size
            return block

    def rounded_by(source, **kwargs):
        Counted.rounded = 0
        verdict = round_trip_verdict(Counted(source, "fp16", np.float32), **kwargs)
        return verdict, Counted.rounded

    assert rounded_by(matrix, compare=True, check=False) == ((None, False), VERDICT_PROBE_ROWS * 1000)
    assert rounded_by(matrix, compare=True, check=True) == ((None, False), matrix.size)
    representable = matrix.astype(np.float16).astype(np.float32)
    assert rounded_by(representable, compare=True, check=False)[0] == (None, True)


@pytest.mark.parametrize("svd_method", ["gram", "gesdd"])
def test_an_fp16_overflow_is_reported_on_the_gram_path_and_on_gesdd(tmp_path, svd_method):
    """The Gram path finds an overflow in its own product (NaN singular values, no pass of its
    own); gesdd is checked before it runs. Both rows say the same, and bf16 is unaffected."""
    from blockscope.analysis.anatomy import UnitReader, precision_table, unit_tables
    from blockscope.analysis.gram import singular_values_gram

    matrix = np.random.default_rng(9).standard_normal((600, 40)).astype(np.float32)
    matrix[599, 3] = 7e4  # above fp16's 65504: Inf after the round trip, in the last block
    assert np.isnan(singular_values_gram(np.where(matrix > 6e4, np.inf, matrix))).all()
    path, inventory = _unit(tmp_path, {"mlp.up_proj.weight": matrix})
    rows = inventory.to_dict("records")
    reader = UnitReader(path, rows)
    _, spectra_table = unit_tables("m", "layer_000", path, rows, reader=reader, svd_method=svd_method)
    sweep = precision_table("m", "layer_000", path, rows, spectra_table, ["fp16", "bf16"], reader=reader,
                            svd_method=svd_method).to_pandas().set_index("precision")
    assert sweep.loc["fp16", "status"] == "fp16: non-finite weights (0 NaN, 1 Inf)"
    assert np.isnan(sweep.loc["fp16", "alpha_hill"]) and sweep.loc["fp16", "backend"] == "none"
    assert sweep.loc["bf16", "status"] == "ok" and sweep.loc["bf16", "svd_method"] == svd_method

def test_the_sweep_never_holds_a_rounded_copy_of_a_matrix(tmp_path, monkeypatch):
    """On the CPU each precision is rounded block by block into the Gram: the sweep's peak
    allocation stays under half the matrix, where a whole fp16 cast and back takes 1.5x."""
    import tracemalloc

    import blockscope.analysis.gram as gram
    from blockscope.analysis.anatomy import UnitReader, _hill, precision_table, unit_tables
    from blockscope.analysis.round_trip import cast_round_trip

    monkeypatch.setattr(gram, "GRAM_BLOCK_ENTRIES", 1 << 15)
    matrix = np.random.default_rng(6).standard_normal((40000, 48)).astype(np.float32)  # 7.7 MB
    path, inventory = _unit(tmp_path, {"mlp.up_proj.weight": matrix})
    rows = inventory.to_dict("records")
    reader = UnitReader(path, rows)
    _, spectra_table = unit_tables("m", "layer_000", path, rows, reader=reader)
    reader(np.float32)  # held: the sweep reuses it
    tracemalloc.start()
    try:
        table = precision_table("m", "layer_000", path, rows, spectra_table, ["fp16", "bf16"], reader=reader)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert 200_000 < peak < 0.5 * matrix.nbytes  # numpy's buffers are traced: the Gram's block is seen
    sweep = table.to_pandas().set_index("precision")
    assert (sweep["status"] == "ok").all() and sweep["svd_method"].eq("gram").all()
    for precision in ("fp16", "bf16"):  # the values of the matrix cast whole
        whole = gram.singular_values_gram(cast_round_trip(matrix, precision, np.float32))
        assert sweep.loc[precision, "alpha_hill"] == _hill(whole, 0.1)[0]


def test_a_gram_that_overflows_gives_no_spectrum_and_says_so(tmp_path):
    """Weights near 1e154 (a float64 matrix) overflow the float64 Gram: with svd_method gram the
    matrix gets no spectrum (never NaN singular values), its spectral metrics are NaN with the
    reason, and the sweep's fp64 row computes anew instead of reusing anything."""
    from blockscope.analysis.gram import GRAM_OVERFLOW

    matrix = np.random.default_rng(13).standard_normal((60, 30)) * 1e160
    path, inventory = _f64_unit(tmp_path, matrix)
    metrics, spectra = analyse_unit("m", "layer_000", path, inventory, compute_dtype="float64", svd_method="gram")
    row = metrics.set_index("param_name").loc["attn.q_proj.weight"]
    assert row["status"] == GRAM_OVERFLOW and np.isnan(row["alpha"]) and np.isnan(row["sigma_max"])
    assert row["std"] == np.inf and row["mean"] == pytest.approx(matrix.mean(), rel=1e-9)  # sigma^2 ~ 1e320 overflows
    assert len(spectra) == 0
    sweep = precision_sweep("m", "layer_000", path, inventory, spectra, ["fp64"], compute_dtype="float64",
                            svd_method="gram").set_index("precision")
    assert sweep.loc["fp64", "status"] == f"fp64: {GRAM_OVERFLOW}" and sweep.loc["fp64", "backend"] == "none"
