"""WeightWatcher's fit='TPL': the truncated power law p(x) = x^-alpha exp(-lambda x) / Z on the plain
fit's tail x >= xmin, by maximum likelihood, and the log-likelihood ratio test against the plain
power law on the same tail (the `powerlaw` package's Fit.truncated_power_law and
distribution_compare('truncated_power_law', 'power_law', nested=True), which WeightWatcher calls).

Ours is an exact MLE, not the package's numerical one (docs/metrics.md says why): in u = x / xmin,
mu = lambda * xmin, the law is the exponential family with statistics (ln u, u) on u >= 1, so the
log-likelihood is concave and its maximum is unique. Z(alpha, mu) = int_1^inf u^-alpha e^(-mu u) du
and its moments come from Gauss-Legendre quadrature in t = ln u on panels fitted to the integrands;
Newton's method with the exact Hessian (minus the covariance of (ln u, u)) finds the maximum. Where
lambda = 0 maximises it (a KKT test, exact), the truncated law is the power law itself: alpha the
plain MLE, R = 0, p = 1. alpha is kept >= 1, the range of powerlaw 1.x that WeightWatcher ran on.
"""

import math

import numpy as np

from blockscope.analysis.heavytail import tail_eigenvalues

TAIL_DEPTH = 50.0       # each integrand is integrated until it falls e^-50 below its peak
GAUSS_NODES, GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(12)   # per panel
PANEL_VARIATION = 2.0   # an integrand's log changes by at most about this much across a panel
PANEL_GRID = 1025       # points on which the panels are laid out
NEWTON_STEPS = 100      # at most
NEWTON_TOLERANCE = 1e-12  # stop when the Newton decrement (the log-likelihood per point left to gain) is below
MAX_STEP = 2.0          # a Newton step moves alpha and ln(lambda) by at most this much
# powerlaw 1.x's Truncated_Power_Law range (alpha > 1, Lambda > 0), which WeightWatcher's fit='TPL' ran on;
# its closed edge alpha = 1, so that a maximum exists (docs/metrics.md)
MIN_TPL_ALPHA = 1.0
TPL_LAW, PL_LAW, NEITHER = "truncated power law", "power law", "neither"


def _peak(c: float, mu: float):
    """The maximum over t >= 0 of c t - mu e^t (concave): its place and value."""
    mode = math.log(c / mu) if c > mu else 0.0
    return mode, c * mode - mu * math.exp(mode)


def _right_end(c: float, mu: float) -> float:
    """t > mode where c t - mu e^t has fallen TAIL_DEPTH below its peak: Newton's method from the right,
    which converges monotonically on a concave decreasing function."""
    mode, peak = _peak(c, mu)
    slope_scale = mu * math.exp(mode)                  # >= max(c, 0)
    s = max(2.0, math.log(2 * TAIL_DEPTH / slope_scale))  # c s - m (e^s - 1) <= -m (e^s - 1 - s) <= -DEPTH
    if c < 0:
        s = min(s, TAIL_DEPTH / -c)                    # c s <= -DEPTH alone
    t = mode + s
    for _ in range(60):
        gap = c * t - mu * math.exp(t) - (peak - TAIL_DEPTH)
        if gap > -1e-9:
            break
        t -= gap / (c - mu * math.exp(t))
    return t


def quadrature_rule(slopes: np.ndarray, mu: float):
    """Nodes and weights of a composite Gauss-Legendre rule on [0, end] for e^(c t - mu e^t), c in slopes:
    panels at equal steps of t + (total variation of every c t - mu e^t from 0) / PANEL_VARIATION, so that
    none is wider than 1 and no integrand's log changes by more than about PANEL_VARIATION across one."""
    peaks = [_peak(c, mu) for c in slopes]
    modes, tops = np.array([p[0] for p in peaks]), np.array([p[1] for p in peaks])
    end = max(_right_end(c, mu) for c in slopes)
    t = np.linspace(0.0, end, PANEL_GRID)
    logs = slopes[:, None] * t - mu * np.exp(t)
    variation = np.where(t <= modes[:, None], logs + mu, 2 * tops[:, None] + mu - logs)  # concave: up, then down
    warp = t + variation.sum(axis=0) / PANEL_VARIATION
    edges = np.append(np.interp(np.arange(0.0, warp[-1], 1.0), warp, t), end)
    half = 0.5 * np.diff(edges)[:, None]
    nodes = (half * (GAUSS_NODES + 1) + edges[:-1, None]).ravel()
    return nodes, (half * GAUSS_WEIGHTS).ravel(), tops


def tpl_moments(alpha: float, mu: float):
    """ln Z(alpha, mu), E[ln u], E[u] and the covariance of (ln u, u) under the truncated power law on u >= 1,
    from the integrals of t^j e^(k t) e^((1 - alpha) t - mu e^t), t = ln u, each k scaled by its own peak."""
    slopes = 1.0 - alpha + np.arange(3.0)
    t, weights, tops = quadrature_rule(slopes, mu)
    w = np.exp(slopes[:, None] * t - mu * np.exp(t) - tops[:, None]) * weights
    z = w[0].sum()
    ratio_u, ratio_uu = math.exp(tops[1] - tops[0]) / z, math.exp(tops[2] - tops[0]) / z
    mean_t, mean_u = (t * w[0]).sum() / z, w[1].sum() * ratio_u
    cov_tu = (t * w[1]).sum() * ratio_u - mean_t * mean_u
    cov = np.array([[(t * t * w[0]).sum() / z - mean_t ** 2, cov_tu], [cov_tu, w[2].sum() * ratio_uu - mean_u ** 2]])
    return math.log(z) + tops[0], mean_t, mean_u, cov


def power_law_mle(mean_log_u: float) -> float:
    """The power law's MLE on the tail: 1 + 1 / mean(ln(x / xmin)) (heavytail.mle_alpha)."""
    return 1.0 + 1.0 / mean_log_u


def cutoff_vanishes(alpha_pl: float, mean_u: float) -> bool:
    """KKT at lambda = 0: the power law maximises the truncated law's likelihood exactly when the
    likelihood does not rise with lambda there, E_pl[u] = (alpha - 1) / (alpha - 2) <= mean(u)
    (the mean is infinite for alpha <= 2, where a cut-off always helps)."""
    return alpha_pl > 2 and (alpha_pl - 1) / (alpha_pl - 2) <= mean_u


def tpl_mean_loglikelihood(alpha: float, mu: float, mean_log_u: float, mean_u: float, log_z: float) -> float:
    """Mean of ln p(u) = -alpha ln u - mu u - ln Z(alpha, mu) over the tail (ln p(x) less ln xmin)."""
    return -alpha * mean_log_u - mu * mean_u - log_z


def pl_mean_loglikelihood(alpha: float, mean_log_u: float) -> float:
    """Mean of ln p(u) = ln(alpha - 1) - alpha ln u over the tail (ln p(x) less ln xmin)."""
    return math.log(alpha - 1) - alpha * mean_log_u


def tpl_objective(alpha: float, eta: float, mean_log_u: float, mean_u: float):
    """Minus the mean log-likelihood at (alpha, mu = e^eta), its gradient and Hessian in (alpha, eta);
    (inf, None, None) where the moments cannot be computed (a trial step far out)."""
    try:
        mu = math.exp(eta)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            log_z, mean_t, model_u, cov = tpl_moments(alpha, mu)
    except (ValueError, OverflowError, ZeroDivisionError):
        return math.inf, None, None
    value = -tpl_mean_loglikelihood(alpha, mu, mean_log_u, mean_u, log_z)
    gradient = np.array([mean_log_u - mean_t, mu * (mean_u - model_u)])
    hessian = np.array([[cov[0, 0], mu * cov[0, 1]],
                        [mu * cov[0, 1], mu * (mean_u - model_u) + mu * mu * cov[1, 1]]])
    return value, gradient, hessian


def newton_minimum(objective, point: np.ndarray):
    """Newton's method for a smooth function with a unique minimum: where the Hessian is not positive
    definite (the eta coordinates bend a convex function) it is shifted until it is (Levenberg), steps
    are capped at MAX_STEP and halved until the value falls enough (Armijo). Returns (point, value)."""
    value, gradient, hessian = objective(point)
    for _ in range(NEWTON_STEPS):
        shift = max(0.0, 1e-9 - 1.5 * np.linalg.eigvalsh(hessian)[0])
        step = -np.linalg.solve(hessian + shift * np.eye(point.size), gradient)
        step *= min(1.0, MAX_STEP / np.max(np.abs(step)))
        decrement = float(-gradient @ step)
        if not decrement > NEWTON_TOLERANCE:
            break
        size = 1.0
        while size > 1e-12:
            trial = point + size * step
            trial_state = objective(trial)
            if trial_state[0] <= value - 1e-4 * size * decrement and np.all(np.isfinite(trial_state[2])):
                break
            size /= 2
        else:
            break
        point, (value, gradient, hessian) = trial, trial_state
    return point, value


def tpl_mle(mean_log_u: float, mean_u: float):
    """(alpha, mu, mean log-likelihood) maximising the truncated power law's likelihood over alpha >= 1,
    mu >= 0: the power law (mu = 0) where cutoff_vanishes; else Newton's method in (alpha, eta = ln mu)
    from the powerlaw package's starting point (the power-law alpha, lambda = 1 / mean(x)); where
    that maximum has alpha < 1, the maximum over the domain lies on its edge alpha = 1 (concavity)."""
    alpha_pl = power_law_mle(mean_log_u)
    best_pl = (alpha_pl, 0.0, pl_mean_loglikelihood(alpha_pl, mean_log_u))
    if cutoff_vanishes(alpha_pl, mean_u):
        return best_pl
    point, value = newton_minimum(lambda p: tpl_objective(p[0], p[1], mean_log_u, mean_u),
                                  np.array([alpha_pl, -math.log(mean_u)]))
    alpha, eta = float(point[0]), float(point[1])
    if alpha < MIN_TPL_ALPHA:
        def on_edge(p):
            edge_value, gradient, hessian = tpl_objective(MIN_TPL_ALPHA, p[0], mean_log_u, mean_u)
            return (edge_value, None, None) if gradient is None else (edge_value, gradient[1:], hessian[1:, 1:])
        point, value = newton_minimum(on_edge, np.array([eta]))
        alpha, eta = MIN_TPL_ALPHA, float(point[0])
    return (alpha, math.exp(eta), -value) if -value > best_pl[2] else best_pl


def nested_likelihood_ratio(n: int, mean_ll_tpl: float, mean_ll_pl: float):
    """powerlaw.loglikelihood_ratio(nested=True): R = sum of the log-likelihood differences,
    p = P(chi2_1 > |2R|) = erfc(sqrt(|R|)) (chi2 with one degree of freedom is a squared standard normal:
    the survival function, where the package's 1 - cdf rounds small p to 0; scipy.stats is not imported,
    it would cost every anatomy job half a second)."""
    r = n * (mean_ll_tpl - mean_ll_pl)
    return r, math.erfc(math.sqrt(abs(r)))


def preferred_law(r: float, p: float, level: float) -> str:
    """The law the test names at the level (R > 0: the truncated law), or "neither" when p >= 1 - level
    (tested as p + level < 1: in floats 1 - 0.95 exceeds 0.05)."""
    if p + level < 1:
        return TPL_LAW if r > 0 else PL_LAW
    return NEITHER


def truncated_power_law_fit(eigs: np.ndarray, xmin: float, level: float) -> dict:
    """diagnostic_layout.TPL_COLUMNS for the eigenvalues >= xmin (the plain fit's xmin) above the floor:
    tpl_alpha, tpl_lambda (in the eigenvalues' units), tpl_loglikelihood_ratio (R), tpl_p_value,
    tpl_preferred. NaN and None without a tail of 2 distinct eigenvalues."""
    x = tail_eigenvalues(eigs)
    u = x[x >= xmin] / xmin if np.isfinite(xmin) and xmin > 0 else x[:0]
    mean_log_u = float(np.mean(np.log(u))) if u.size >= 2 else 0.0
    if not mean_log_u > 0:
        return {"tpl_alpha": float("nan"), "tpl_lambda": float("nan"), "tpl_loglikelihood_ratio": float("nan"),
                "tpl_p_value": float("nan"), "tpl_preferred": None}
    mean_u = float(np.mean(u))
    alpha, mu, mean_ll = tpl_mle(mean_log_u, mean_u)
    r, p = nested_likelihood_ratio(u.size, mean_ll, pl_mean_loglikelihood(power_law_mle(mean_log_u), mean_log_u))
    return {"tpl_alpha": float(alpha), "tpl_lambda": float(mu / xmin), "tpl_loglikelihood_ratio": float(r),
            "tpl_p_value": p, "tpl_preferred": preferred_law(r, p, level)}
