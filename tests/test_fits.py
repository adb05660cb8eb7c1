"""The fits WeightWatcher offers beside the power law: clip_xmax (fingers) and the truncated power law,
against independent computations (a literal transcription of WeightWatcher's loop, mpmath, the
`powerlaw` package) and samples with known answers."""

import contextlib
import io
import math
import warnings

import mpmath
import numpy as np
import pytest

from blockscope.analysis import fingers as fg
from blockscope.analysis import truncated_power_law as tpl
from blockscope.analysis.heavytail import mle_alpha, powerlaw_fit, tail_eigenvalues
from blockscope.diagnostic_layout import FINGER_COLUMNS, TPL_COLUMNS


def pareto(n, alpha, rng, xmin=1.0):
    """n draws with density ~ x^-alpha above xmin (inverse transform)."""
    return xmin * (1 - rng.random(n)) ** (-1 / (alpha - 1))


def tpl_sample(n, alpha, lam, xmin, rng):
    """n draws with density ~ x^-alpha exp(-lam x) above xmin: Pareto proposals (alpha > 1) kept with
    probability exp(-lam (x - xmin)), an exact rejection sampler."""
    kept, have = [], 0
    while have < n:
        x = pareto(4 * n, alpha, rng, xmin)
        x = x[rng.random(x.size) < np.exp(-lam * (x - xmin))]
        kept.append(x)
        have += x.size
    return np.concatenate(kept)[:n]


def bulk_and_tail(seed):
    """A trained layer's ESD shape: a bulk plus a heavy tail (as in test_metrics)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.gamma(2.0, 0.5, 700), 3 * pareto(300, 2.6, rng)])


def finger_cluster(seed):
    """A clean Pareto sample (alpha 2.5, 100 draws) whose 12 largest values are replaced by a tight
    cluster (quantiles of a steep power law) above twice the 13th largest: the KS fit latches onto the
    cluster with a huge alpha, the shape WeightWatcher's fix_fingers targets (the demo's
    layers.0.mlp.up_proj: alpha 22 on its top 9 eigenvalues, 3.1 without its largest two)."""
    x = np.sort(pareto(100, 2.5, np.random.default_rng(seed)))
    q = (np.arange(12) + 0.5) / 12
    x[-12:] = 2 * x[-13] * (1 - q) ** (-1 / 19)
    return x


def cluster_on_bulk(seed, size, tail):
    """bulk_and_tail's shape (tail exponent `tail`) whose `size` largest values are replaced by a cluster
    (quantiles of a power law of exponent 8) starting at the next largest: fingers on a real-looking ESD."""
    rng = np.random.default_rng(seed)
    x = np.sort(np.concatenate([rng.gamma(2.0, 0.5, 300), 3 * pareto(100, tail, rng)]))
    q = (np.arange(size) + 0.5) / size
    x[-size:] = x[-size - 1] * (1 - q) ** (-1 / 7)
    return x


def far_outliers(seed):
    """The same kind of clean Pareto sample (alpha 3, 1000 draws) plus 3 outliers 100 times its largest."""
    x = pareto(1000, 3.0, np.random.default_rng(seed))
    return np.concatenate([x, 100 * x.max() * np.array([1.0, 1.2, 1.5])])


def weightwatcher_clip_xmax(evals, max_fingers=10, finger_thresh=1.0, min_alpha=2.0):
    """RMT_Util.fit_clipped_powerlaw of WeightWatcher 0.7.7 (xmin=None, xmax=None), line by line, with
    its WWFit as heavytail.powerlaw_fit (equal to it, test_metrics): (alpha, D, its num_fingers)."""
    evals = np.sort(evals)
    evals = evals[evals > 1e-5]
    first_fit = powerlaw_fit(evals)
    best_fit, num_fingers = first_fit, 0
    for idx in range(2, max_fingers):
        fit = powerlaw_fit(evals[:-idx])
        if (fit.alpha + finger_thresh) < first_fit.alpha:
            best_fit, num_fingers = fit, idx - 1
            break
        if min_alpha is not None and fit.alpha <= min_alpha:
            break
    return best_fit.alpha, best_fit.D, num_fingers


SPECTRA = {"pareto": lambda s: pareto(1000, 3.0, np.random.default_rng(s)), "bulk_and_tail": bulk_and_tail,
           "finger_cluster": finger_cluster, "far_outliers": far_outliers,
           "cluster_of_9": lambda s: cluster_on_bulk(s, 9, 2.2), "cluster_of_15": lambda s: cluster_on_bulk(s, 15, 2.6)}


# --- fingers: WeightWatcher's clip_xmax -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SPECTRA))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ks_optimal_fit_is_powerlaw_fit_exactly(name, seed):
    """The pruned scan drops only candidates that cannot win: alpha and D equal the full scan's, bit for
    bit, on the spectra and on every clipped version clip_xmax refits."""
    x = tail_eigenvalues(SPECTRA[name](seed))
    for k in range(0, 10):
        full = powerlaw_fit(x[:x.size - k])
        assert fg.ks_optimal_fit(x[:x.size - k]) == (full.alpha, full.D)


def test_ks_optimal_fit_with_tied_eigenvalues():
    """Repeated eigenvalues (a rank-deficient block, a quantised one) tie candidates' D: the first wins."""
    x = np.sort(np.round(pareto(400, 2.5, np.random.default_rng(3)), 1))
    full = powerlaw_fit(x)
    assert fg.ks_optimal_fit(tail_eigenvalues(x)) == (full.alpha, full.D)


def test_a_clean_spectrum_clips_nothing():
    eigs = pareto(1000, 3.0, np.random.default_rng(0))
    result = fg.clipped_fit(eigs, 10, 1.0)
    plain = powerlaw_fit(eigs)
    assert list(result) == FINGER_COLUMNS
    assert result["num_fingers"] == 0
    assert result["alpha_clipped"] == plain.alpha and result["D_clipped"] == plain.D


@pytest.mark.parametrize("seed", range(4))
def test_a_finger_cluster_is_clipped_back_to_the_tail(seed):
    """The first fit is the cluster's (alpha > 10 on its 12 points); dropping the two largest breaks it and
    the refit finds the Pareto tail again: alpha within 0.3 of 2.5 (the remaining 10 cluster points bias
    it, and an MLE on ~100 points has a standard error near 0.15)."""
    eigs = finger_cluster(seed)
    first = powerlaw_fit(eigs)
    assert first.alpha > 10 and first.num_pl_spikes == 12
    result = fg.clipped_fit(eigs, 10, 1.0)
    assert result["num_fingers"] == 2
    assert result["alpha_clipped"] == powerlaw_fit(np.sort(eigs)[:-2]).alpha
    assert abs(result["alpha_clipped"] - 2.5) <= 0.3


def test_far_outliers_are_no_fingers_to_weightwatchers_rule():
    """Outliers far above a clean tail lower alpha (they lengthen the tail); dropping them raises it, and
    WeightWatcher keeps a clipped fit only when alpha falls by more than the threshold: nothing is clipped."""
    eigs = far_outliers(0)
    plain = powerlaw_fit(eigs)
    assert plain.alpha < powerlaw_fit(np.sort(eigs)[:-3]).alpha
    assert fg.clipped_fit(eigs, 10, 1.0) == {"alpha_clipped": plain.alpha, "D_clipped": plain.D, "num_fingers": 0}


@pytest.mark.parametrize("name", sorted(SPECTRA))
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [0.5, 1.0])
def test_clipping_follows_weightwatchers_loop(name, seed, threshold):
    """Against the transcription of WeightWatcher's loop: the same fit is kept; our num_fingers is the number
    dropped, WeightWatcher's one less (it reports idx - 1 after dropping idx)."""
    eigs = SPECTRA[name](seed)
    alpha, d, ww_fingers = weightwatcher_clip_xmax(eigs, finger_thresh=threshold)
    result = fg.clipped_fit(eigs, 10, threshold)
    assert (result["alpha_clipped"], result["D_clipped"]) == (alpha, d)
    assert result["num_fingers"] == (ww_fingers + 1 if ww_fingers else 0)


def test_max_fingers_is_honoured_and_half_the_spectrum_kept():
    assert fg.finger_counts(576, 10) == range(2, 10)   # WeightWatcher's range(2, max_fingers)
    assert fg.finger_counts(576, 4) == range(2, 4)     # WeightWatcher would reset 4 < 576 / 2 to 10
    assert fg.finger_counts(16, 10) == range(2, 7)     # at most 6 of 16 (n - k >= MIN_EIGENVALUES)
    assert fg.finger_counts(40, 100) == range(2, 20)   # fewer than half
    assert len(fg.finger_counts(11, 10)) == 0
    eigs = finger_cluster(0)
    assert fg.clipped_fit(eigs, 2, 1.0)["num_fingers"] == 0   # range(2, 2): nothing tried


def test_too_few_eigenvalues_give_no_fits():
    eigs = np.array([1.0, 2.0, 3.0, 5.0, 8.0, 1e-7])
    assert math.isnan(fg.clipped_fit(eigs, 10, 1.0)["alpha_clipped"])
    assert fg.clipped_fit(eigs, 10, 1.0)["num_fingers"] is None
    result = tpl.truncated_power_law_fit(eigs, float("nan"), 0.95)
    assert list(result) == TPL_COLUMNS and math.isnan(result["tpl_alpha"]) and result["tpl_preferred"] is None
    constant = tpl.truncated_power_law_fit(np.full(20, 3.0), 3.0, 0.95)
    assert math.isnan(constant["tpl_lambda"])


# --- the truncated power law ---------------------------------------------------------------------------


def mp_log_z(alpha, mu):
    """ln int_1^inf u^-alpha e^(-mu u) du = ln(mu^(alpha - 1) Gamma(1 - alpha, mu)), by mpmath."""
    return mpmath.log(mu ** (alpha - 1) * mpmath.gammainc(1 - alpha, mu))


@pytest.mark.parametrize("alpha", [-2.0, 0.5, 1.0, 1.5, 2.5, 4.0, 12.0, 40.0])
@pytest.mark.parametrize("mu", [1e-9, 1e-4, 0.03, 1.0, 20.0])
def test_normaliser_and_moments_against_mpmath(alpha, mu):
    """ln Z and the moments are its derivatives: E[ln u] = -d/dalpha, E[u] = -d/dmu, the covariance the
    second derivatives (mpmath's incomplete gamma function and its numerical derivatives, 30 digits)."""
    mpmath.mp.dps = 30
    log_z, mean_t, mean_u, cov = tpl.tpl_moments(alpha, mu)
    a, m = mpmath.mpf(alpha), mpmath.mpf(mu)
    assert log_z == pytest.approx(float(mp_log_z(a, m)), rel=1e-12, abs=1e-12)
    assert mean_t == pytest.approx(float(-mpmath.diff(lambda s: mp_log_z(s, m), a)), rel=1e-10)
    assert mean_u == pytest.approx(float(-mpmath.diff(lambda s: mp_log_z(a, s), m)), rel=1e-10)
    var_t = float(mpmath.diff(lambda s: mp_log_z(s, m), a, 2))
    cov_tu = float(mpmath.diff(lambda s, r: mp_log_z(s, r), (a, m), (1, 1)))
    var_u = float(mpmath.diff(lambda s: mp_log_z(a, s), m, 2))
    assert cov[0, 0] == pytest.approx(var_t, rel=1e-7)
    assert cov[0, 1] == pytest.approx(cov_tu, rel=1e-7)
    assert cov[1, 1] == pytest.approx(var_u, rel=1e-6)   # E[u^2] - E[u]^2: cancellation where mu is large


@pytest.mark.parametrize("alpha, lam, alpha_tol, lam_tol", [(1.5, 0.01, 0.06, 0.3), (2.5, 0.1, 0.17, 0.55)])
def test_a_truncated_power_law_is_recovered(alpha, lam, alpha_tol, lam_tol):
    """10,000 draws above xmin = 1: alpha and lambda within 4 standard deviations of the estimator (measured
    over 20 seeds: 0.014 and 7 % at (1.5, 0.01), 0.042 and 13 % at (2.5, 0.1)); the test names the truncated law."""
    x = tpl_sample(10_000, alpha, lam, 1.0, np.random.default_rng(0))
    result = tpl.truncated_power_law_fit(x, 1.0, 0.95)
    assert list(result) == TPL_COLUMNS
    assert abs(result["tpl_alpha"] - alpha) <= alpha_tol
    assert abs(result["tpl_lambda"] / lam - 1) <= lam_tol
    assert result["tpl_loglikelihood_ratio"] > 0 and result["tpl_p_value"] < 1e-10
    assert result["tpl_preferred"] == tpl.TPL_LAW


@pytest.mark.parametrize("alpha", [1.8, 2.5, 3.5])
def test_a_pareto_sample_names_neither(alpha):
    """No cut-off: R >= 0 always (the power law is the truncated law at lambda = 0), small, not significant."""
    x = pareto(3000, alpha, np.random.default_rng(0))
    result = tpl.truncated_power_law_fit(x, 1.0, 0.95)
    assert 0 <= result["tpl_loglikelihood_ratio"] < 1.92   # chi2_1's 95 % point is 3.84 = 2R
    assert result["tpl_p_value"] >= 0.05 and result["tpl_preferred"] == tpl.NEITHER
    assert result["tpl_alpha"] == pytest.approx(alpha, abs=0.1)


def test_where_the_cutoff_vanishes_the_fit_is_the_power_law():
    """KKT at lambda = 0 (alpha_pl > 2 and mean(u) >= (alpha - 1) / (alpha - 2)): alpha is the power-law
    MLE of heavytail on the same tail, R = 0, p = 1; mpmath finds no (alpha, lambda > 0) that does better.
    (A Pareto sample meets the condition about half the time: seed 2 does, seeds 0 and 1 do not.)"""
    x = np.sort(pareto(3000, 2.5, np.random.default_rng(2)))
    u = x / x[0]
    alpha_pl = mle_alpha(x, 0)
    assert tpl.cutoff_vanishes(alpha_pl, u.mean())
    result = tpl.truncated_power_law_fit(x, x[0], 0.95)
    assert result["tpl_alpha"] == pytest.approx(alpha_pl, rel=1e-14) and result["tpl_lambda"] == 0
    assert result["tpl_loglikelihood_ratio"] == 0 and result["tpl_p_value"] == 1
    pl = math.log(alpha_pl - 1) - alpha_pl * np.log(u).mean()
    for a in alpha_pl + np.array([-0.05, -0.01, 0.0, 0.01]):
        for m in (1e-6, 1e-4, 1e-2):
            assert -a * np.log(u).mean() - m * u.mean() - float(mp_log_z(mpmath.mpf(a), mpmath.mpf(m))) < pl


def quiet_powerlaw(x, xmin):
    """powerlaw 2.0's Fit at xmin with WeightWatcher's ranges (powerlaw 1.x: alpha > 1, Lambda > 0; 2.0's
    default caps alpha at 3), its prints and warnings silenced."""
    powerlaw = pytest.importorskip("powerlaw")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = powerlaw.Fit(x, xmin=xmin, verbose=False,
                           parameter_ranges={"alpha": [1, None], "Lambda": [0, None]})
        theirs = fit.truncated_power_law
        r, p = fit.distribution_compare("truncated_power_law", "power_law", nested=True)
    return powerlaw, fit, theirs, r, p


@pytest.mark.parametrize("case", ["tpl_sample", "bulk_and_tail"])
def test_agrees_with_the_powerlaw_package(case):
    """The package's Nelder-Mead (tolerance 1e-4) lands next to our exact maximum; its own likelihood code
    (mpmath's incomplete gamma) rates our parameters at least as high, and its likelihood ratio at our
    parameters is our R."""
    if case == "tpl_sample":
        x, xmin = tpl_sample(3000, 1.7, 0.02, 1.0, np.random.default_rng(2)), 1.0
    else:
        x = tail_eigenvalues(bulk_and_tail(0))
        xmin = powerlaw_fit(x).xmin
    ours = tpl.truncated_power_law_fit(x, xmin, 0.95)
    powerlaw, fit, theirs, r, p = quiet_powerlaw(x, xmin)
    assert ours["tpl_alpha"] == pytest.approx(theirs.alpha, abs=2e-3)
    assert ours["tpl_lambda"] == pytest.approx(theirs.Lambda, rel=2e-2)
    assert ours["tpl_loglikelihood_ratio"] == pytest.approx(r, abs=1e-3)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        at_ours = powerlaw.Truncated_Power_Law(xmin=xmin, parameters=[ours["tpl_alpha"], ours["tpl_lambda"]],
                                               parameter_ranges={"alpha": [0, None], "Lambda": [0, None]})
        pl = powerlaw.Power_Law(xmin=xmin, parameters=[fit.power_law.alpha], parameter_ranges={"alpha": [1, None]})
        ll_ours, ll_pl = at_ours.loglikelihoods(fit.data), pl.loglikelihoods(fit.data)
    assert ll_ours.sum() >= theirs.loglikelihood - 1e-9
    r_at_ours, p_at_ours = powerlaw.loglikelihood_ratio(ll_ours, ll_pl, nested=True)
    assert ours["tpl_loglikelihood_ratio"] == pytest.approx(r_at_ours, rel=1e-8, abs=1e-9)
    assert ours["tpl_p_value"] == pytest.approx(p_at_ours, rel=1e-6, abs=1e-12)


def test_alpha_stays_at_or_above_one():
    """A tail closer to an exponential than to any power law: the unconstrained maximum has alpha < 1, ours
    lies on the edge alpha = 1 of powerlaw 1.x's range, and is the best lambda there (mpmath)."""
    rng = np.random.default_rng(4)
    x = 1 + rng.exponential(0.5, 400)
    result = tpl.truncated_power_law_fit(x, 1.0, 0.95)
    assert result["tpl_alpha"] == 1.0 and result["tpl_preferred"] == tpl.TPL_LAW
    u = np.sort(x)
    best = result["tpl_lambda"]
    loglik = [-np.log(u).mean() - m * u.mean() - float(mp_log_z(mpmath.mpf(1), mpmath.mpf(m)))
              for m in best * np.array([0.98, 1.0, 1.02])]
    assert loglik[1] >= max(loglik[0], loglik[2])


def test_the_fits_warn_and_print_nothing(capsys):
    """A far trial step of the Newton iteration overflows inside; nothing reaches the caller."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for case in range(3):
            tpl.truncated_power_law_fit(tail_eigenvalues(bulk_and_tail(case)), powerlaw_fit(bulk_and_tail(case)).xmin,
                                        0.95)
        tpl.truncated_power_law_fit(1 + np.random.default_rng(4).exponential(0.5, 400), 1.0, 0.95)
        fg.clipped_fit(finger_cluster(0), 10, 1.0)
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("r, p, expected", [(5.0, 0.001, tpl.TPL_LAW), (-5.0, 0.001, tpl.PL_LAW),
                                            (0.5, 0.3, tpl.NEITHER), (0.0, 1.0, tpl.NEITHER),
                                            (2.0, 0.05, tpl.NEITHER)])
def test_preferred_law_at_the_level(r, p, expected):
    assert tpl.preferred_law(r, p, 0.95) == expected
