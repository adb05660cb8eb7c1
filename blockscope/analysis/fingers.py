"""WeightWatcher's fix_fingers='clip_xmax': the power-law fit refitted without a few of the largest
eigenvalues ("fingers", outliers above the tail), as WeightWatcher 0.7.7 decides it
(RMT_Util.fit_clipped_powerlaw, called from weightwatcher.py fit_powerlaw):

- the first fit is the plain KS-optimal fit on all eigenvalues (heavytail.powerlaw_fit: our `alpha`;
  ks_optimal_fit computes it exactly, with fewer candidates scanned);
- the k largest are dropped for k = 2, 3, ..., max_fingers - 1 in turn (never k = 1), each time
  refitted from scratch (a new KS-optimal xmin) on the rest;
- the first k whose alpha lies more than `threshold` below the first fit's alpha wins and the loop
  stops; an alpha at or below FINGER_MIN_ALPHA (its min_alpha) stops it with nothing clipped, and so
  does reaching the end. Its criterion is this drop of alpha, not of the KS distance D: D is only
  reported (the kept fit's own D).

Where ours differs (docs/metrics.md): `num_fingers` is the number dropped, k; WeightWatcher reports
k - 1. Its guard `max_fingers < len(evals) / 2` resets any max_fingers *below* half the spectrum to
its default 10 (so a user's value only counts when it is at least half the spectrum); we honour
max_fingers and never drop half of the eigenvalues above the floor or more (its docstring's "stops
half-way into the ESD") nor leave fewer than MIN_EIGENVALUES. Both agree at the default 10 on
spectra of 20 eigenvalues or more.
"""

import numpy as np

from blockscope.analysis.heavytail import MIN_EIGENVALUES, ks_scan, tail_eigenvalues

FINGER_MIN_ALPHA = 2.0  # fit_clipped_powerlaw's min_alpha: a clipped alpha this low stops the search
KS_SAMPLES = 32         # tail points per candidate in the KS lower bound
KS_SEEDS = 16           # candidates (least bounds) whose exact D sets the pruning level


def finger_counts(n: int, max_fingers: int) -> range:
    """The numbers of largest eigenvalues to try dropping: WeightWatcher's range(2, max_fingers),
    less than half of the n eigenvalues and leaving enough for a fit."""
    return range(2, max(2, min(int(max_fingers), (n + 1) // 2, n - MIN_EIGENVALUES + 1)))


def clips_a_finger(alpha_clipped: float, alpha_first: float, threshold: float) -> bool:
    """WeightWatcher's acceptance test: alpha_clipped + threshold < alpha_first (a NaN never passes)."""
    return bool(alpha_clipped + threshold < alpha_first)


def ks_lower_bounds(x: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """A lower bound on each candidate's KS distance D (heavytail.ks_scan): the same gap
    |1 - (x_j / x_i)^(1 - alpha_i) - (j - i) / n_i|, by the same arithmetic, at KS_SAMPLES evenly spaced
    points of the tail instead of all; -inf (never pruned) unless alpha_i > 1 and the gap is finite."""
    log_x = np.log(x)
    n = (x.size - candidates).astype(np.float64)
    suffix = np.cumsum(log_x[::-1])[::-1]
    offsets = np.floor(np.linspace(0, 1, KS_SAMPLES)[None, :] * (n[:, None] - 1)).astype(np.int64)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        alphas = 1 + n / (suffix[candidates] - n * log_x[candidates])   # ks_scan's alpha
        theory = 1 - np.exp((1 - alphas[:, None]) * (log_x[candidates[:, None] + offsets] - log_x[candidates][:, None]))
        bounds = np.abs(theory - offsets / n[:, None]).max(axis=1)
    return np.where(np.isfinite(bounds) & (alphas > 1), bounds, -np.inf)


def ks_optimal_fit(x: np.ndarray):
    """(alpha, D) of heavytail.powerlaw_fit on ascending eigenvalues above the floor, exactly (its ks_scan on
    the candidates that can win, the first least D), over ten times faster: a candidate whose lower bound
    exceeds the exact D of the KS_SEEDS least bounds cannot win."""
    candidates = np.arange(x.size - 1)
    bounds = ks_lower_bounds(x, candidates)
    _, seed_ds = ks_scan(x, np.sort(np.argsort(bounds, kind="stable")[:KS_SEEDS]))
    level = np.min(np.where(np.isfinite(seed_ds), seed_ds, np.inf))
    kept = candidates[bounds <= level + 1e-12]   # the margin: rounding can never prune a winner
    alphas, ds = ks_scan(x, kept)
    best = int(np.argmin(np.where(np.isfinite(ds), ds, np.inf)))
    return float(alphas[best]), float(ds[best])


def clipped_fit(eigs: np.ndarray, max_fingers: int, threshold: float) -> dict:
    """alpha_clipped, D_clipped, num_fingers (diagnostic_layout.FINGER_COLUMNS): the kept fit's alpha
    and D and the number of largest eigenvalues dropped (0: the plain fit, alpha_clipped == alpha).
    NaN, NaN, None where the plain fit fails (fewer than MIN_EIGENVALUES above the floor)."""
    x = tail_eigenvalues(eigs)
    if x.size < MIN_EIGENVALUES:
        return {"alpha_clipped": float("nan"), "D_clipped": float("nan"), "num_fingers": None}
    alpha_first, d_first = ks_optimal_fit(x)
    for k in finger_counts(x.size, max_fingers):
        alpha, d = ks_optimal_fit(x[:-k])
        if clips_a_finger(alpha, alpha_first, threshold):
            return {"alpha_clipped": alpha, "D_clipped": d, "num_fingers": k}
        if alpha <= FINGER_MIN_ALPHA:  # checked after the acceptance test, as in the source
            break
    return {"alpha_clipped": alpha_first, "D_clipped": d_first, "num_fingers": 0}
