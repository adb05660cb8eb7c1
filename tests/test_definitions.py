"""Definitions that match their sources: alpha_peak against AlphaPruning's routine, rewritten here
as an independent loop; the GGUF source blocks and what int4's group does to them."""

import math

import numpy as np
import pytest

from blockscope.analysis import heavytail as ht
from blockscope.compression import source_blocks as sb
from blockscope.compression.formats import int4_round_trip

torch = pytest.importorskip("torch")

# --- alpha_peak ------------------------------------------------------------------------------------


def alphapruning_alpha_peak(matrix):
    """Reference: AlphaPruning's net_esd_estimator(fix_fingers='xmin_peak') for one nn.Linear weight,
    step for step in float32 torch as github.com/haiquanlu/AlphaPruning lib/esd_utils.py runs it
    (commit a585914bdb9805b603777bd694b324b8ea625026; main.py's default --ww_metric is alpha_peak),
    rewritten here as a plain loop. Its defaults: bins 100, filter_zeros False (every eigenvalue
    kept), EVALS_THRESH unused."""
    eigs = torch.sort(torch.square(torch.linalg.svdvals(matrix.to(torch.float32)).flatten())).values
    n_eigs = len(eigs)
    log_eigs = torch.log(eigs)
    log10_eigs = torch.log10(eigs)
    counts = torch.histc(log10_eigs, 100, min=log10_eigs.min(), max=log10_eigs.max())
    edges = torch.linspace(log10_eigs.min(), log10_eigs.max(), 101)
    peak = 10 ** edges[torch.argmax(counts)]
    low, high = torch.log10(0.95 * peak), 1.5 * peak     # the source's bounds: log10 and linear
    alphas, ds = torch.zeros(n_eigs - 1), torch.ones(n_eigs - 1)
    for i in range(n_eigs - 1):
        xmin = eigs[i]
        if xmin < low:
            continue
        if xmin > high:
            break
        n = float(n_eigs - i)
        alphas[i] = 1 + n / (torch.sum(log_eigs[i:]) - n * log_eigs[i])
        if alphas[i] > 1:
            ds[i] = torch.max(torch.abs(1 - (eigs[i:] / xmin) ** (1 - alphas[i]) - torch.arange(n) / n))
    return alphas[torch.argmin(ds)].item(), eigs


def heavy_tailed(rows, cols, seed, scale=0.02, spikes=4):
    """Student-t entries (3 degrees of freedom) plus a few rank-one spikes: a trained layer's ESD shape."""
    rng = np.random.default_rng(seed)
    w = scale * rng.standard_t(3, size=(rows, cols))
    for k in range(spikes):
        w += scale * (k + 2) * np.outer(rng.standard_normal(rows), rng.standard_normal(cols)) / math.sqrt(cols)
    return torch.tensor(w, dtype=torch.float32)


# scale 0.02: a peak below 1 / 0.95, the window opens at the smallest eigenvalue; scale 2: a peak
# far above it, the log10 bound then cuts the small eigenvalues off
@pytest.mark.parametrize("rows, cols, seed, scale", [(192, 576, 0, 0.02), (576, 576, 1, 0.02), (300, 200, 2, 0.02),
                                                     (256, 768, 3, 2.0), (400, 400, 4, 5.0), (128, 512, 5, 0.3)])
def test_alpha_peak_equals_alphapruning(rows, cols, seed, scale):
    matrix = heavy_tailed(rows, cols, seed, scale)
    theirs, eigs = alphapruning_alpha_peak(matrix)
    assert theirs > 1
    assert ht.alpha_peak(eigs.double().numpy()) == pytest.approx(theirs, rel=1e-5)


def orthogonal(n, rng):
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def linear_window_alpha(eigs):
    """The KS-optimal alpha over xmin in a linear [0.95, 1.5] x peak: the window blockscope used before."""
    x = np.sort(eigs)
    peak = ht.esd_peak(x)
    candidates = np.flatnonzero((x[:-1] >= 0.95 * peak) & (x[:-1] <= 1.5 * peak))
    alphas, ds = ht.ks_scan(x, candidates)
    return alphas[np.argmin(ds)]


@pytest.mark.parametrize("seed", [1, 4, 6])
def test_alpha_peak_scans_below_the_peak_as_alphapruning_does(seed):
    """A power-law tail from 0.2 with a narrow bump at 1.5 (the histogram's fullest bin): the best
    xmin lies below 0.95 x peak, where the source's log10 bound still scans."""
    rng = np.random.default_rng(seed)
    eigs = np.concatenate([0.2 * (1 - rng.random(300)) ** (-1 / 1.5), rng.uniform(1.5, 1.65, 60)])
    matrix = torch.tensor((orthogonal(eigs.size, rng) * np.sqrt(eigs)) @ orthogonal(eigs.size, rng).T)
    theirs, eigs32 = alphapruning_alpha_peak(matrix)
    ours = eigs32.double().numpy()
    assert ht.alpha_peak(ours) == pytest.approx(theirs, rel=1e-5)
    assert abs(linear_window_alpha(ours) - theirs) > 0.2


def test_the_window_is_the_sources_log_bound():
    eigs = torch.sort(torch.linalg.svdvals(heavy_tailed(576, 576, 1)) ** 2).values.double().numpy()
    peak = ht.esd_peak(eigs)
    low, high = ht.xmin_peak_window(eigs)
    assert peak > 1 / 0.95 and low == pytest.approx(math.log10(0.95 * peak)) and high == pytest.approx(1.5 * peak)
    # the log10 bound cuts some small eigenvalues, far fewer than a linear 0.95 x peak would
    assert 0 < (eigs < low).sum() < (eigs < 0.95 * peak).sum()
    assert ht.xmin_peak_window(eigs / 10)[0] < 0  # a peak below 1 / 0.95: every eigenvalue is a candidate


def test_esd_peak_bins_as_torch_histc():
    rng = np.random.default_rng(7)
    for _ in range(50):
        x = np.sort(np.exp(rng.standard_normal(int(rng.integers(20, 3000))) * rng.uniform(0.5, 3)))
        x32 = torch.tensor(x, dtype=torch.float32)
        logs = torch.log10(x32)
        counts = torch.histc(logs, 100, min=logs.min(), max=logs.max())
        expected = (10 ** torch.linspace(logs.min(), logs.max(), 101)[torch.argmax(counts)]).item()
        assert ht.esd_peak(x32.double().numpy()) == pytest.approx(expected, rel=1e-5)


def test_eigenvalues_below_evals_thresh_are_kept_as_alphapruning_keeps_them():
    w = heavy_tailed(200, 200, 8, 0.02).double().numpy()
    u, s, vt = np.linalg.svd(w)
    s[-30:] = np.geomspace(1e-3, 1e-4, 30)       # eigenvalues 1e-6 .. 1e-8, below EVALS_THRESH 1e-5
    matrix = torch.tensor((u * s) @ vt, dtype=torch.float32)
    theirs, eigs = alphapruning_alpha_peak(matrix)
    assert (eigs < ht.EIGENVALUE_FLOOR).sum() >= 20
    assert ht.alpha_peak(eigs.double().numpy()) == pytest.approx(theirs, rel=1e-5)


def test_alpha_peak_fails_as_nan_not_as_the_sources_placeholder():
    assert math.isnan(ht.alpha_peak(np.ones(50)))            # constant spectrum
    assert math.isnan(ht.alpha_peak(np.geomspace(1, 2, 5)))  # too few eigenvalues


# --- GGUF source blocks ----------------------------------------------------------------------------


def q4_1_like(rows, cols, seed):
    """A dequantised Q4_1 matrix built here: per block of 32 inputs, d = (max - min) / 15 and the
    minimum m stored as fp16, codes q = round((w - min) / d) in 0..15, values d * q + m (float32)."""
    rng = np.random.default_rng(seed)
    w = (0.02 * rng.standard_t(5, size=(rows, cols // 32, 32))).astype(np.float32)
    low, high = w.min(-1, keepdims=True), w.max(-1, keepdims=True)
    d = ((high - low) / 15).astype(np.float16).astype(np.float32)
    m = low.astype(np.float16).astype(np.float32)
    q = np.clip(np.round((w - low) / d), 0, 15)
    return (d * q + m).reshape(rows, cols), d[..., 0]


def constant_share(error, piece):
    """Share of consecutive pieces of `piece` inputs over which the error is one constant."""
    e = error.reshape(error.shape[0], -1, piece)
    return float(((e.max(-1) - e.min(-1)) <= 1e-9).mean())


def test_int4_at_the_block_size_moves_each_q4_1_block_by_one_offset():
    w, d = q4_1_like(256, 1536, 0)
    error = (int4_round_trip(torch.tensor(w), 32).double() - torch.tensor(w).double()).numpy()
    blocks = error.reshape(256, -1, 32)
    # every level kept, the block shifted by at most half a step: the rounding of int4's zero point
    constant = (blocks.max(-1) - blocks.min(-1)) <= 1e-9
    assert constant.mean() > 0.999 and np.all(np.abs(blocks[..., 0]) <= d / 2 * (1 + 1e-3))
    # the rest are exact ties of that rounding: -m / d is k + 1/2, which rounds half to even per value
    low = w.reshape(256, -1, 32).min(-1)
    assert np.allclose((-low / d)[~constant] % 1, 0.5, atol=1e-6)
    # the size of Q4_1's own rounding (uniform in +-d/2: rms d / sqrt(12))
    assert np.sqrt(np.mean(error ** 2)) == pytest.approx(np.sqrt(np.mean(d ** 2) / 12), rel=0.1)
    group, reason = sb.int4_group_for(["Q4_1", "F32"], 32)
    assert group == 128 and "Q4_1" in reason and "128" in reason
    chosen = (int4_round_trip(torch.tensor(w), group).double() - torch.tensor(w).double()).numpy()
    assert constant_share(chosen, 32) < 0.1


@pytest.mark.parametrize("group", [16, 40, 48, 64, 96, 128])
def test_the_kept_block_share_is_what_int4_keeps(group):
    """kept_block_share against a measurement: the share of the smaller pieces (blocks of 32, or
    groups below 32) whose error is one constant, on a synthetic Q4_1 matrix. Below the block it
    is a lower bound: a block's extreme codes often repeat, so a group holds both more often."""
    w, _ = q4_1_like(512, 1920, 1)
    error = (int4_round_trip(torch.tensor(w), group).double() - torch.tensor(w).double()).numpy()
    measured, predicted = constant_share(error, min(group, 32)), sb.kept_block_share(32, group)
    if group < 32:
        assert predicted <= measured <= predicted + 0.1
    else:
        assert measured == pytest.approx(predicted, abs=0.03)


def test_gguf_s_own_q4_1_blocks_behave_alike():
    gguf = pytest.importorskip("gguf")
    from gguf.quants import dequantize, quantize

    rng = np.random.default_rng(2)
    original = (0.02 * rng.standard_t(5, size=(128, 576))).astype(np.float32)
    kind = gguf.GGMLQuantizationType.Q4_1
    w = torch.tensor(dequantize(quantize(original, kind), kind))
    assert constant_share((int4_round_trip(w, 32).double() - w.double()).numpy(), 32) > 0.99
    assert constant_share((int4_round_trip(w, 128).double() - w.double()).numpy(), 32) < 0.15


def test_block_sizes_and_bits_match_the_gguf_package():
    constants = pytest.importorskip("gguf.constants")
    for name, block in sb.SOURCE_BLOCK_SIZES.items():
        size, nbytes = constants.GGML_QUANT_SIZES[constants.GGMLQuantizationType[name]]
        assert (block, sb.SOURCE_BITS[name]) == (size, nbytes * 8 / size), name
        assert block % sb.SUB_BLOCK_SIZES[name] == 0


@pytest.mark.parametrize("dtypes, size", [(["Q4_1", "F32"], 32), (["q4_1"], 32), ({"w": "Q6_K"}, 16),
                                          (["Q4_K", "Q6_K"], 32), (["BF16", "F32"], None), ([], None),
                                          (["Q8_0", None], 32)])
def test_source_block_size_by_name(dtypes, size):
    assert sb.source_block_size(dtypes) == size


@pytest.mark.parametrize("dtypes, configured, group", [(["BF16"], 32, 32), (["Q4_1"], 32, 128), (["Q4_1"], 16, 128),
                                                       (["Q4_1"], 128, 128), (["Q4_0"], 32, 128), (["Q8_0"], 32, 32),
                                                       (["Q6_K"], 16, 16), (["Q2_K"], 16, 64), (["Q4_K"], 64, 128)])
def test_int4_group_for(dtypes, configured, group):
    chosen, reason = sb.int4_group_for(dtypes, configured)
    assert chosen == group
    assert (reason == "") == (not any(sb.int4_keeps_levels(t) for t in dtypes))


def test_source_effects_name_each_answer():
    sentences = sb.source_effects({"model.layers.0.mlp.up_proj.weight": "Q4_1"})
    text = " ".join(sentences)
    assert "Q4_1" in text and "5 bits" in text and "int4" in text and "pruning" in text and "alpha-peak" in text
    assert sb.source_effects(["BF16", "F32"]) == []
    assert not any("int4 with groups" in s for s in sb.source_effects(["Q8_0"]))
