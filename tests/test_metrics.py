"""Metrics with known answers, agreement with the `powerlaw` package, backends, bad matrices."""

import numpy as np
import pytest

from blockscope.analysis import heavytail as ht
from blockscope.analysis import matrix_formulas as mx
from blockscope.analysis.metrics_row import matrix_metrics
from blockscope.analysis.round_trip import cast_round_trip
from blockscope.analysis.spectra import compute_spectra, singular_values
from blockscope.layout import MATRIX_COLUMNS


def orthogonal(n, rng):
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def matrix_with_eigenvalues(eigs, rng):
    """W = U diag(sqrt(lambda)) V^T: a square matrix whose ESD is exactly eigs."""
    n = eigs.size
    return (orthogonal(n, rng) * np.sqrt(eigs)) @ orthogonal(n, rng).T


def pareto(n, alpha, rng):
    """n eigenvalues with density ~ lambda^-alpha above 1."""
    return (1 - rng.random(n)) ** (-1 / (alpha - 1))


@pytest.mark.parametrize("alpha", [2.0, 2.5, 3.0, 4.0, 5.0])
def test_power_law_tail_exponent_is_recovered(alpha):
    # the MLE's standard error is (alpha - 1) / sqrt(n_tail): n = 6000 keeps it near 0.05 at alpha 5
    eigs = pareto(6000, alpha, np.random.default_rng(int(alpha * 10)))
    assert abs(ht.powerlaw_fit(eigs).alpha - alpha) <= 0.15
    assert abs(ht.alpha_mid(eigs) - alpha) <= 0.15
    assert abs(ht.alpha_hill(eigs, ht.hill_k(eigs.size, 0.1)) - alpha) <= 0.3 * (alpha - 1)


@pytest.mark.parametrize("alpha", [2.0, 3.0])
def test_power_law_matrix_through_a_real_svd(alpha):
    rng = np.random.default_rng(int(alpha))
    eigs = pareto(1000, alpha, rng)
    sigma = singular_values(matrix_with_eigenvalues(eigs, rng))  # float64 LAPACK
    assert np.allclose(np.sort(sigma**2), np.sort(eigs), rtol=1e-8)
    assert abs(ht.powerlaw_fit(sigma**2).alpha - alpha) <= 0.15


@pytest.mark.parametrize("tail, ranges", [(1.6, None), (2.2, {"alpha": [1, 50]})])
def test_ks_fit_agrees_with_the_powerlaw_package(tail, ranges):
    """powerlaw 2.0 marks fits with alpha > 3 invalid by default; WeightWatcher does not, so
    for such tails the comparison widens powerlaw's alpha range."""
    powerlaw = pytest.importorskip("powerlaw")
    rng = np.random.default_rng(1)
    # a bulk plus a heavy tail, the shape of a trained layer's ESD
    eigs = np.concatenate([rng.gamma(2.0, 0.5, 700), 3 * (1 - rng.random(300)) ** (-1 / tail)])
    ours = ht.powerlaw_fit(eigs)
    theirs = powerlaw.Fit(eigs[eigs > ht.EIGENVALUE_FLOOR], verbose=False,
                          **({"parameter_ranges": ranges} if ranges else {}))
    assert ours.alpha == pytest.approx(theirs.alpha, rel=1e-9)
    assert ours.xmin == theirs.xmin
    assert ours.D == pytest.approx(theirs.D, rel=1e-9)


def test_ks_scan_equals_the_loop_it_vectorises():
    rng = np.random.default_rng(2)
    x = np.sort(rng.pareto(2.5, 400) + 1)
    alphas, ds = ht.ks_scan(x, np.arange(x.size - 1))
    for i in (0, 17, 200, 398):
        n = x.size - i
        alpha = 1 + n / (np.sum(np.log(x[i:])) - n * np.log(x[i]))
        d = np.max(np.abs(1 - (x[i:] / x[i]) ** (1 - alpha) - np.arange(n) / n))
        assert alphas[i] == pytest.approx(alpha) and ds[i] == pytest.approx(d)


@pytest.mark.parametrize("rank", [1, 7, 40])
def test_exact_low_rank_matrices_give_their_rank(rank):
    rng = np.random.default_rng(rank)
    w = (rng.standard_normal((300, rank)) @ rng.standard_normal((rank, 200))).astype(np.float32)
    sigma = singular_values(w.copy())
    assert mx.numerical_rank(sigma, 300, 200, np.finfo(np.float32).eps) == rank
    assert np.linalg.matrix_rank(w) == rank  # the convention we follow
    row = matrix_metrics(w, sigma, "F32")
    assert row["actual_rank"] == rank and row["rank_ratio"] == pytest.approx(rank / 200)


@pytest.mark.parametrize("k", [1, 5, 64])
def test_effective_rank_of_known_entropy(k):
    sigma = np.array([3.0] * k + [0.0] * 10)                   # uniform over k: entropy log k
    assert mx.effective_rank(sigma) == pytest.approx(k)
    p = np.array([0.5, 0.25, 0.25])
    assert mx.effective_rank(p * 7) == pytest.approx(np.exp(-(p * np.log(p)).sum()))


def test_norms_ranks_and_energy_on_a_diagonal():
    sigma = np.array([4.0, 2.0, 1.0, 1.0])
    assert mx.stable_rank(sigma) == pytest.approx(22 / 16)
    assert mx.spectral_norm(sigma) == 16.0                      # WeightWatcher: lambda_max
    assert mx.frobenius_norm(sigma) == pytest.approx(np.sqrt(22))
    assert mx.log_norm(sigma) == pytest.approx(np.log10(22))
    assert mx.condition_number(sigma) == 4.0
    assert mx.participation_ratio(sigma) == pytest.approx(22**2 / (256 + 16 + 1 + 1))
    assert [mx.energy_rank(sigma, f) for f in (0.5, 0.75, 0.9, 0.99)] == [1, 2, 2, 4]


def test_marchenko_pastur_fit_finds_planted_spikes():
    rng = np.random.default_rng(3)
    rows, cols = 800, 400
    noise = rng.standard_normal((rows, cols))
    assert ht.mp_bulk_fit(singular_values(noise.copy()) ** 2, rows, cols)[0] <= 1
    u, v = orthogonal(rows, rng)[:, :3], orthogonal(cols, rng)[:, :3]
    spiked = noise + u @ np.diag([400.0, 300.0, 200.0]) @ v.T
    spikes, softrank, variance = ht.mp_bulk_fit(singular_values(spiked) ** 2, rows, cols)
    assert spikes == 3 and variance == pytest.approx(1.0, rel=0.05) and softrank < 0.5


def test_float32_matches_float64_reference():
    rng = np.random.default_rng(4)
    w = (rng.standard_normal((512, 256)) * rng.random(256) ** 3).astype(np.float32)
    s32 = singular_values(w.copy())
    s64 = singular_values(w.astype(np.float64))
    assert np.max(np.abs(s32 - s64)) / s64[0] <= 1e-5


def test_torch_code_path_agrees_with_lapack():
    """The CUDA path's code (batched torch.linalg.svdvals), run on the CPU here."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    mats = [rng.standard_normal(shape).astype(np.float32) for shape in [(64, 32), (64, 32), (16, 48)]]
    lapack, _, used = compute_spectra(mats, "cpu")
    torch_sigma, _, used_torch = compute_spectra(mats, "torch-cpu")
    assert used == "cpu" and used_torch == "torch-cpu"
    for a, b in zip(lapack, torch_sigma):
        assert np.max(np.abs(a - b)) / a[0] <= 1e-5


def test_cuda_out_of_memory_falls_back_to_cpu(monkeypatch, caplog):
    torch = pytest.importorskip("torch")

    def out_of_memory(batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(torch.linalg, "svdvals", out_of_memory)
    mats = [np.eye(8, dtype=np.float32) * 2]
    sigmas, _, used = compute_spectra(mats, "torch-cpu")
    assert used == "cpu" and np.allclose(sigmas[0], 2.0)
    assert "falling back to CPU" in caplog.text


@pytest.mark.parametrize("make, status", [
    (lambda: np.full((20, 30), np.nan, np.float32), "non-finite weights (600 NaN, 0 Inf)"),
    (lambda: np.where(np.eye(20, 30) > 0, np.inf, 1.0).astype(np.float32), "non-finite weights (0 NaN, 20 Inf)"),
    (lambda: np.zeros((20, 30), np.float32), "zero matrix"),
    (lambda: np.full((20, 30), 0.5, np.float32), "fewer than 10 eigenvalues"),
    (lambda: np.arange(30, dtype=np.float32)[None, :], "fewer than 10 eigenvalues"),
])
def test_bad_matrices_give_nan_rows_with_a_status(make, status):
    w = make()
    sigma = singular_values(w.astype(np.float32)) if np.isfinite(w).all() else np.zeros(0)
    row = matrix_metrics(w, sigma, "F32")
    assert row["status"].startswith(status)
    assert np.isnan(row["alpha"]) and np.isnan(row["alpha_hill"])
    if "zero" in status:
        assert row["actual_rank"] == 0 and np.isnan(row["effective_rank"])
    if "0.5" in repr(make) or w.shape[0] == 1:
        assert row["actual_rank"] == 1


@pytest.mark.parametrize("matrix", [np.eye(20, 30, dtype=np.float32) * np.arange(1, 21)[:, None],
                                    np.full((4, 4), np.nan, np.float32)])
def test_a_metrics_row_has_exactly_the_declared_columns(matrix):
    sigma = singular_values(matrix.copy()) if np.isfinite(matrix).all() else np.zeros(0)
    assert list(matrix_metrics(matrix, sigma, "BF16")) == MATRIX_COLUMNS


def test_precision_round_trip_changes_only_what_the_format_loses():
    w = np.array([[1.0, 1 + 2**-9, 2.0e-8, 1000.0]], np.float32)
    assert np.array_equal(cast_round_trip(w, "fp32", np.float32), w)
    assert cast_round_trip(w, "bf16", np.float32)[0, 1] == 1.0          # 8 significant bits
    assert cast_round_trip(w, "fp16", np.float32)[0, 1] == 1 + 2**-9     # 11 significant bits
    assert cast_round_trip(w, "fp16", np.float32)[0, 2] == 0.0           # below fp16 subnormals
    fp8 = cast_round_trip(w, "fp8-e4m3", np.float32)                    # per-tensor scale: amax -> 448
    assert fp8[0, 3] == pytest.approx(1000.0, rel=1e-6) and fp8[0, 0] == pytest.approx(1.0, rel=2**-3)


def test_element_statistics_over_blocks_match_numpy_on_any_memory_order():
    """element_stats, sparsity and check_matrix go through the entries block by block; with
    several blocks, a transposed (F-ordered) and a strided view, they equal numpy's one-pass answers,
    and a NaN in the last block is still found."""
    from blockscope.analysis.metrics_row import check_matrix

    rng = np.random.default_rng(3)
    w = (rng.standard_normal((700, 900)) * 0.02 + 0.5).astype(np.float32)  # 630000 entries: 3 blocks
    w[rng.random(w.shape) < 0.01] = 0.0
    for view in (w, w.T, w[::3, 1::2]):
        stats = mx.element_stats(view)
        assert stats["mean"] == pytest.approx(float(view.mean(dtype=np.float64)), rel=1e-12)
        assert stats["var"] == pytest.approx(float(view.var(dtype=np.float64)), rel=1e-12)
        assert stats["std"] == pytest.approx(float(view.std(dtype=np.float64)), rel=1e-12)
        assert mx.sparsity(view, 1e-6) == float(np.mean(np.abs(view) <= 1e-6))
        assert check_matrix(view) is None
    bad = w.copy()
    bad[-1, -1], bad[-1, -2] = np.nan, np.inf
    assert check_matrix(bad) == "non-finite weights (1 NaN, 1 Inf)"
    assert np.isnan(mx.element_stats(np.zeros((0, 3)))["var"]) and np.isnan(mx.sparsity(np.zeros((0, 3))))
