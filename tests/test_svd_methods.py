"""The Gram path against float64 gesdd: the accuracy docs/metrics.md states ("SVD method"), the
small end near rank deficiency, auto's choice, the torch code and the rows that record it."""

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
from test_metrics import matrix_with_eigenvalues, orthogonal, pareto
from test_unit_analysis import _clustered_top, _f64_unit, _unit

from blockscope.analysis.anatomy import analyse_unit, precision_sweep
from blockscope.analysis.gram import gram_floor, gram_matrix, singular_values_gram, two_stage_eigenvalues
from blockscope.analysis.metrics_row import spectral_metrics
from blockscope.analysis.round_trip import RoundTrip, cast_round_trip, round_trip_scale
from blockscope.analysis.spectra import compute_spectra, svd_method_for

SIGMA_RTOL = 1e-6            # sigma >= 1e-3 sigma_max against float64 gesdd
METRIC_RTOL = 1e-4           # alpha, alpha-Hill, effective and stable rank
STATED_METRICS = ("alpha", "alpha_hill", "effective_rank", "stable_rank")


def reference(matrix) -> np.ndarray:
    """float64 LAPACK gesdd of the matrix as stored (upcast exactly)."""
    return scipy.linalg.svdvals(np.asarray(matrix, np.float64))


def assert_stated_accuracy(matrix, source_dtype="F32"):
    exact = reference(matrix)
    sigma = singular_values_gram(matrix).astype(np.float64)
    kept = exact >= 1e-3 * exact[0]
    assert np.max(np.abs(sigma[kept] - exact[kept]) / exact[kept]) <= SIGMA_RTOL
    rows, cols = matrix.shape
    ours = spectral_metrics(sigma, rows, cols, source_dtype)
    theirs = spectral_metrics(exact, rows, cols, source_dtype)
    for metric in STATED_METRICS:
        assert ours[metric] == pytest.approx(theirs[metric], rel=METRIC_RTOL), metric


def with_spectrum(sigma, rows, cols, rng, dtype=np.float64):
    """U diag(sigma) V^T, rows x cols, its singular values `sigma` (before rounding to dtype)."""
    n = sigma.size
    u = orthogonal(rows, rng)[:, :n]
    v = orthogonal(cols, rng)[:, :n]
    return ((u * sigma) @ v.T).astype(dtype)


@pytest.mark.parametrize("condition", [1e2, 1e4, 1e6])
@pytest.mark.parametrize("shape", [(400, 160), (160, 400), (256, 256)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_random_matrices_up_to_condition_1e6(condition, shape, dtype):
    rng = np.random.default_rng(int(np.log10(condition)) + shape[0])
    n = min(shape)
    # half the spectrum log-spaced over the condition number, half a heavy tail above it
    sigma = np.sort(np.concatenate([np.logspace(0, -np.log10(condition), n // 2),
                                    np.sqrt(pareto(n - n // 2, 2.5, rng)) / 3]))[::-1]
    assert_stated_accuracy(with_spectrum(sigma, *shape, rng, dtype))


@pytest.mark.parametrize("alpha", [2.0, 3.0])
def test_prescribed_power_law_spectrum(alpha):
    """The checkpoint matrix of tests/test_metrics.py whose ESD is exactly a Pareto sample."""
    rng = np.random.default_rng(int(alpha))
    eigs = pareto(400, alpha, rng)
    matrix = matrix_with_eigenvalues(eigs, rng)
    assert_stated_accuracy(matrix, "F64")
    sigma = singular_values_gram(matrix)
    assert np.allclose(np.sort(sigma**2), np.sort(eigs), rtol=1e-8)


@pytest.fixture(scope="module")
def demo_layer(smollm2_gguf):
    """One layer of the demo model (SmolLM2-135M Q4_1, dequantised to float32): q, k, up, down."""
    gguf = pytest.importorskip("gguf")
    wanted = ("blk.3.attn_q.weight", "blk.3.attn_k.weight", "blk.3.ffn_up.weight", "blk.3.ffn_down.weight")
    tensors = {t.name: t for t in gguf.GGUFReader(smollm2_gguf).tensors if t.name in wanted}
    return {name: gguf.quants.dequantize(tensors[name].data, tensors[name].tensor_type) for name in wanted}


def test_demo_model_matrices(demo_layer):
    for name, matrix in demo_layer.items():
        assert matrix.dtype == np.float32 and min(matrix.shape) >= 192, name
        assert_stated_accuracy(matrix, "Q4_1")


# --- the small end: below the Gram's floor sigma is reported as 0 -------------------------------

@pytest.mark.parametrize("rank", [1, 37, 120])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rank_deficient_matrices_keep_their_ranks(rank, dtype):
    """Ranks agree with gesdd in the same dtype (what the gesdd method computes). Of a float32
    matrix, numerical_rank_source (F32) is left out: its threshold lies at float32 gesdd's own
    noise, which the float64 Gram does not have (there it counts the rank, gesdd adds noise)."""
    rng = np.random.default_rng(rank)
    matrix = (rng.standard_normal((300, rank)) @ rng.standard_normal((rank, 160))).astype(dtype)
    sigma = singular_values_gram(matrix)
    assert sigma.dtype == dtype and np.count_nonzero(sigma) == rank  # the null space: below the floor, 0
    exact = reference(matrix)
    assert np.sqrt(gram_floor(exact[0] ** 2, 160)) < exact[rank - 1]
    columns = ["actual_rank", "numerical_rank_fp16", "numerical_rank_bf16"]
    columns += ["numerical_rank_source"] if dtype == np.float64 else []
    gesdd = spectral_metrics(scipy.linalg.svdvals(matrix), 300, 160, "F32")
    gram = spectral_metrics(sigma, 300, 160, "F32")
    assert {c: gram[c] for c in columns} == {c: gesdd[c] for c in columns}
    assert gram["actual_rank"] == rank == np.linalg.matrix_rank(matrix)
    assert gram["condition_number"] == np.inf  # sigma_min reported 0


def test_singular_values_under_the_floor_are_zero_not_noise():
    """sigma_min / sigma_max = 1e-10: float64 gesdd resolves it, the Gram path reports 0."""
    rng = np.random.default_rng(3)
    matrix = with_spectrum(np.array([1.0, 0.5, 1e-3, 1e-10]), 50, 4, rng)
    sigma = singular_values_gram(matrix)
    assert sigma[-1] == 0 and reference(matrix)[-1] == pytest.approx(1e-10, rel=1e-4)
    assert np.allclose(sigma[:3], [1.0, 0.5, 1e-3], rtol=1e-9)


# --- auto, the rows that record the method, the torch path -------------------------------------

def test_auto_picks_gram_for_float32_long_or_large_matrices_only():
    assert svd_method_for("auto", (1536, 576), np.float32) == "gram"        # long
    assert svd_method_for("auto", (576, 49152), np.float32) == "gram"       # wide
    assert svd_method_for("auto", (4096, 4096), np.float32) == "gram"       # large square
    assert svd_method_for("auto", (576, 576), np.float32) == "gram"         # small square: numpy's gesdd is slower
    assert svd_method_for("auto", (640, 640), np.float32) == "gesdd"        # mid square: scipy's gesdd
    assert svd_method_for("auto", (1536, 576), np.float64) == "gesdd"       # float64 keeps gesdd
    assert svd_method_for("gram", (8, 8), np.float64) == "gram"
    assert svd_method_for("gesdd", (9000, 8), np.float32) == "gesdd"


def test_torch_gram_equals_the_lapack_gram():
    """The CUDA path's Gram code (float64 Gram, torch.linalg.eigvalsh), run on the CPU here."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    mats = [with_spectrum(np.logspace(0, -5, 40), *shape, rng, np.float32) for shape in [(90, 40), (40, 90), (90, 40)]]
    lapack, _, _ = compute_spectra(mats, "cpu", "gram")
    torch_sigma, _, used = compute_spectra(mats, "torch-cpu", "gram")
    assert used == "torch-cpu"
    for a, b, matrix in zip(lapack, torch_sigma, mats):
        exact = reference(matrix)
        assert b.dtype == np.float32 and np.allclose(a, b, rtol=1e-6, atol=0)
        assert np.max(np.abs(b - exact) / exact) <= SIGMA_RTOL


def test_rows_record_the_method_and_fp64_stays_float64_accurate(tmp_path):
    rng = np.random.default_rng(6)
    tensors = {"attn.long.weight": rng.standard_normal((120, 40)).astype(np.float32),
               "attn.square.weight": rng.standard_normal((640, 640)).astype(np.float32),  # auto: scipy's gesdd
               "norm.weight": np.ones(40, np.float32)}
    path, inventory = _unit(tmp_path, tensors)
    metrics, spectra = analyse_unit("m", "layer_000", path, inventory)  # svd_method auto
    method = metrics.set_index("param_name")["svd_method"]
    assert method.to_dict() == {"attn.long.weight": "gram", "attn.square.weight": "gesdd", "norm.weight": "none"}
    sweep = precision_sweep("m", "layer_000", path, inventory, spectra, ["fp64", "fp32", "bf16"],
                            spectra_backend=dict(zip(metrics["matrix"], metrics["backend"])),
                            spectra_method=dict(zip(metrics["matrix"], metrics["svd_method"])))
    long = sweep[sweep["param_name"] == "attn.long.weight"].set_index("precision")["svd_method"]
    assert long.to_dict() == {"fp64": "gesdd", "fp32": "gram", "bf16": "gram"}  # fp32: the spectra part's
    # explicitly gram, fp64 too: the clustered top of tests/test_unit_analysis.py keeps its alpha-Hill
    from blockscope.analysis.heavytail import alpha_hill, hill_k

    w = _clustered_top(np.random.default_rng(7))
    path64, inventory64 = _f64_unit(tmp_path, w)
    fp64 = precision_sweep("m", "layer_000", path64, inventory64, pd.DataFrame(), ["fp64"],
                           svd_method="gram").iloc[0]
    eigs = reference(w) ** 2
    assert fp64["svd_method"] == "gram" and fp64["svd_dtype"] == "float64"
    assert fp64["alpha_hill"] == pytest.approx(alpha_hill(eigs, hill_k(eigs.size, 0.1)), rel=1e-6)


def test_config_key_svd_method():
    from test_config import SCHEMA, with_llama

    from blockscope.config.validation import validate_config
    from blockscope.errors import BlockscopeError

    assert validate_config(with_llama(), SCHEMA)["svd_method"] == "auto"  # the default, filled in
    assert validate_config(with_llama(svd_method="gram"), SCHEMA)["svd_method"] == "gram"
    with pytest.raises(BlockscopeError) as info:
        validate_config(with_llama(svd_method="eig"), SCHEMA)
    assert "config key svd_method: 'eig' is not allowed; allowed: auto, gesdd, gram" in str(info.value)


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp8-e4m3"])
def test_a_round_trip_read_in_blocks_equals_the_whole_cast(precision, monkeypatch):
    """RoundTrip rounds what it is asked for, with the whole matrix's fp8 scale; the Gram of its
    blocks is bit-identical to the Gram of the matrix cast whole, tall and wide."""
    monkeypatch.setattr("blockscope.analysis.gram.GRAM_BLOCK_ENTRIES", 256 * 24)  # 256-row blocks: several per matrix
    rng = np.random.default_rng(11)
    matrix = rng.standard_normal((700, 24)).astype(np.float32)
    matrix[650, 3] = 40.0  # the amax lies in the last block: every block is scaled by it
    whole = cast_round_trip(matrix, precision, np.float32)
    rounded = RoundTrip(matrix, precision, np.float32)
    assert np.array_equal(np.asarray(rounded), whole)
    assert np.array_equal(rounded[100:300], whole[100:300]) and np.array_equal(rounded.T[5], whole.T[5])
    for source, cast in ((matrix, whole), (matrix.T, whole.T)):
        assert np.array_equal(gram_matrix(RoundTrip(source, precision, np.float32)), gram_matrix(cast))
    assert np.array_equal(singular_values_gram(rounded), singular_values_gram(whole))
    assert rounded.shape == matrix.shape and rounded.dtype == np.float32
    with pytest.raises(ValueError):
        np.asarray(rounded, copy=False)  # nothing to share: it is rounded on demand
    nan = matrix.copy()
    nan[0, 0] = np.nan  # a NaN amax leaves the tensor unscaled, as a whole-matrix |max| would
    assert round_trip_scale(nan, precision) == 1.0


def test_the_two_stage_eigensolver_equals_syevd_and_leaves_its_input(monkeypatch):
    """numpy's Linux wheels ship OpenBLAS with LAPACK's two-stage syevd: found here, equal to
    numpy's syevd on a Gram held whole (C order) and on one held in its upper triangle only
    (F order, as dsyrk leaves it), the input untouched; above TWO_STAGE_MIN_N the Gram path
    takes it, and its singular values keep the float64 accuracy of the one-stage path."""
    solver = two_stage_eigenvalues()
    assert solver is not None
    rng = np.random.default_rng(12)
    matrix = rng.standard_normal((700, 300)) * np.logspace(0, -3, 300)  # eigenvalues over 6 decades
    whole = matrix.T @ matrix
    upper = np.asfortranarray(np.triu(whole))
    expected = np.linalg.eigvalsh(whole)
    for gram in (whole, upper):
        kept = gram.copy()
        assert np.allclose(solver(gram), expected, rtol=0, atol=1e-12 * expected[-1])
        assert np.array_equal(gram, kept)
    monkeypatch.setattr("blockscope.analysis.gram.TWO_STAGE_MIN_N", 64)
    stored = matrix.astype(np.float32)
    reference = scipy.linalg.svdvals(stored.astype(np.float64))
    sigma = singular_values_gram(stored)
    resolved = reference >= 1e-3 * reference[0]
    assert np.allclose(sigma[resolved], reference[resolved], rtol=1e-6)
