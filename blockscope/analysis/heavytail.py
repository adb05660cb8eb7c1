"""Heavy-tail exponents of the eigenvalue spectrum lambda = sigma^2.

`alpha` follows WeightWatcher 0.7.7 (WW_powerlaw.WWFit, its default): every eigenvalue but the
largest is an xmin candidate, alpha is the continuous power-law MLE above it, and the xmin with
the smallest Kolmogorov-Smirnov distance wins. The scan is vectorised over candidates.
`alpha_peak` is AlphaPruning's xmin_peak fit, reproduced with its window and eigenvalues.
"""

from dataclasses import dataclass

import numpy as np

EIGENVALUE_FLOOR = 1e-5   # WeightWatcher's EVALS_THRESH: eigenvalues at or below are ignored
MIN_EIGENVALUES = 10      # fewer than this above the floor: no tail fit
KS_BLOCK = 256            # candidates per vectorised block (bounds memory at 256 x n)

# alpha_peak reproduces AlphaPruning's net_esd_estimator(fix_fingers='xmin_peak'), the default
# --ww_metric of its main.py (github.com/haiquanlu/AlphaPruning, lib/esd_utils.py at a585914);
# WeightWatcher's fit_powerlaw(fix_fingers='xmin_peak') sets the same window (weightwatcher.py
# at d6fd015). The names are the sources'.
XMIN_PEAK_BINS = 100      # `bins`: the histogram of log10(lambda) whose fullest bin is the peak
XMIN_PEAK_LOW = 0.95      # xmin_min = log10(0.95 * peak): a log10 bound, compared with linear lambdas
XMIN_PEAK_HIGH = 1.5      # xmin_max = 1.5 * peak


@dataclass(frozen=True)
class PowerLawFit:
    alpha: float
    xmin: float
    D: float
    alpha_stderr: float  # WeightWatcher's and powerlaw's `sigma`: (alpha - 1) / sqrt(n_tail)
    num_pl_spikes: int

    @classmethod
    def failed(cls):
        return cls(float("nan"), float("nan"), float("nan"), float("nan"), 0)


def tail_eigenvalues(eigs: np.ndarray) -> np.ndarray:
    """Ascending float64 eigenvalues above WeightWatcher's floor."""
    eigs = np.sort(np.asarray(eigs, dtype=np.float64))
    return eigs[eigs > EIGENVALUE_FLOOR]


def mle_alpha(eigs_ascending: np.ndarray, start: int) -> float:
    """Continuous power-law MLE with xmin = eigs[start]: 1 + n / sum(ln(x / xmin))."""
    tail = eigs_ascending[start:]
    denominator = np.sum(np.log(tail / tail[0]))
    return float(1 + tail.size / denominator) if denominator > 0 else float("nan")


def ks_scan(eigs_ascending: np.ndarray, candidates: np.ndarray):
    """alpha and KS distance D for each xmin index in candidates, vectorised.

    D_i = max_j |1 - (x_j / x_i)^(1 - alpha_i) - (j - i) / n_i| over the tail j >= i.
    """
    x = eigs_ascending
    n_total = x.size
    log_x = np.log(x)
    suffix = np.cumsum(log_x[::-1])[::-1]          # sum_{j >= i} ln x_j
    n = (n_total - candidates).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = 1 + n / (suffix[candidates] - n * log_x[candidates])
    ds = np.ones(candidates.size)
    j = np.arange(n_total)
    for block in range(0, candidates.size, KS_BLOCK):
        idx = candidates[block:block + KS_BLOCK]
        a = alphas[block:block + KS_BLOCK]
        offset = j[None, :] - idx[:, None]                       # (j - i)
        in_tail = offset >= 0
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            theory = 1 - np.exp((1 - a[:, None]) * (log_x[None, :] - log_x[idx][:, None]))
            empirical = offset / n[block:block + KS_BLOCK, None]
            gap = np.where(in_tail, np.abs(theory - empirical), 0.0)
        d = gap.max(axis=1)
        ds[block:block + KS_BLOCK] = np.where(a > 1, d, 1.0)
    return alphas, ds


def powerlaw_fit(eigs: np.ndarray) -> PowerLawFit:
    """KS-optimal power-law fit (WeightWatcher's `alpha`, `xmin`, `D`, `sigma` (here
    alpha_stderr: sigma means singular values everywhere else), `num_pl_spikes`)."""
    x = tail_eigenvalues(eigs)
    if x.size < MIN_EIGENVALUES:
        return PowerLawFit.failed()
    candidates = np.arange(x.size - 1)
    alphas, ds = ks_scan(x, candidates)
    ds = np.where(np.isfinite(ds), ds, np.inf)
    best = int(np.argmin(ds))
    i = int(candidates[best])
    alpha = float(alphas[best])
    return PowerLawFit(alpha, float(x[i]), float(ds[best]), alpha_stderr(alpha, x.size - i),
                       int(np.count_nonzero(np.asarray(eigs) >= x[i])))


def alpha_stderr(alpha: float, n_tail: int) -> float:
    """Standard error of the maximum-likelihood alpha over n_tail points (Clauset et al. 2009)."""
    return (alpha - 1) / np.sqrt(n_tail)


def esd_peak(eigs_ascending: np.ndarray) -> float:
    """10^(left edge of the fullest bin) of XMIN_PEAK_BINS equal bins of log10(lambda) over its
    [min, max], binned as torch.histc bins (the floor of the linear position; the maximum joins
    the last bin; the first fullest bin wins a tie)."""
    log_x = np.log10(eigs_ascending)
    low, high = log_x[0], log_x[-1]
    position = ((log_x - low) * XMIN_PEAK_BINS / (high - low)).astype(np.int64)
    counts = np.bincount(np.minimum(position, XMIN_PEAK_BINS - 1), minlength=XMIN_PEAK_BINS)
    return float(10 ** np.linspace(low, high, XMIN_PEAK_BINS + 1)[int(np.argmax(counts))])


def xmin_peak_window(eigs_ascending: np.ndarray):
    """AlphaPruning's (and WeightWatcher's) xmin window [log10(0.95 peak), 1.5 peak]. The lower
    bound is a log10 compared with linear eigenvalues, as in both sources: below a peak of
    1 / 0.95 it is <= 0, so the window starts at the smallest eigenvalue."""
    peak = esd_peak(eigs_ascending)
    return float(np.log10(XMIN_PEAK_LOW * peak)), XMIN_PEAK_HIGH * peak


def alpha_peak(eigs: np.ndarray) -> float:
    """AlphaPruning's alpha_peak: the KS-optimal fit (ks_scan) over the xmin candidates in
    xmin_peak_window, on every positive eigenvalue (its default filter_zeros=False keeps those
    below EVALS_THRESH; a zero would make its log -inf). NaN for fewer than MIN_EIGENVALUES, a
    constant spectrum, or no candidate with D < 1, where the source returns its placeholder."""
    x = np.sort(np.asarray(eigs, dtype=np.float64))
    x = x[x > 0]
    if x.size < MIN_EIGENVALUES or x[0] == x[-1]:
        return float("nan")
    low, high = xmin_peak_window(x)
    candidates = np.flatnonzero((x[:-1] >= low) & (x[:-1] <= high))
    if candidates.size == 0:
        return float("nan")
    alphas, ds = ks_scan(x, candidates)
    ds = np.where(np.isfinite(ds), ds, np.inf)
    best = int(np.argmin(ds))  # the first least D, as torch.argmin over the source's loop
    return float(alphas[best]) if ds[best] < 1 else float("nan")


def alpha_hill(eigs: np.ndarray, k: int) -> float:
    """Hill estimator on the top k eigenvalues, in the density-exponent convention:
    1 + k / sum_{top k} ln(lambda / lambda_k), xmin = lambda_k the k-th largest (the estimator
    TempBalance's code applies at k = n/2). Same scale as the power-law `alpha`."""
    x = tail_eigenvalues(eigs)
    if x.size < MIN_EIGENVALUES or k < 2:
        return float("nan")
    return mle_alpha(x, x.size - min(int(k), x.size))


def hill_k(n: int, fraction: float) -> int:
    """k = max(2, round(fraction * n)) for n eigenvalues."""
    return max(2, int(round(fraction * n)))


def alpha_mid(eigs: np.ndarray) -> float:
    """TempBalance's alpha: xmin at the median eigenvalue (k = n / 2)."""
    x = tail_eigenvalues(eigs)
    if x.size < MIN_EIGENVALUES:
        return float("nan")
    return mle_alpha(x, x.size // 2)


def alpha_weighted(alpha: float, eigs: np.ndarray) -> float:
    """WeightWatcher: alpha * log10(lambda_max)."""
    return float(alpha * np.log10(np.max(eigs))) if np.size(eigs) and np.max(eigs) > 0 else float("nan")


def log_alpha_norm(alpha: float, eigs: np.ndarray) -> float:
    """WeightWatcher: log10(sum lambda^alpha)."""
    if not np.isfinite(alpha):
        return float("nan")
    with np.errstate(over="ignore"):
        total = np.sum(np.asarray(eigs, dtype=np.float64) ** alpha)
    return float(np.log10(total)) if total > 0 else float("nan")


# --- Marchenko-Pastur bulk -------------------------------------------------------------------


def marchenko_pastur_edge(variance: float, rows: int, cols: int) -> float:
    """Upper bulk edge of lambda = sigma^2 for an i.i.d. rows x cols matrix: s^2 (sqrt(N) + sqrt(M))^2."""
    return variance * (np.sqrt(rows) + np.sqrt(cols)) ** 2


def mp_bulk_fit(eigs: np.ndarray, rows: int, cols: int, iterations: int = 50):
    """Fit the MP bulk: the element variance from the bulk eigenvalues' mean (mean lambda = s^2 max(N, M)),
    spikes (eigenvalues above the edge) removed until the count is stable.

    Returns (num_spikes, mp_softrank = bulk edge / lambda_max, variance).
    """
    eigs = np.sort(np.asarray(eigs, dtype=np.float64))[::-1]
    if eigs.size == 0 or eigs[0] <= 0:
        return 0, float("nan"), float("nan")
    spikes = 0
    for _ in range(iterations):
        bulk = eigs[spikes:]
        variance = bulk.mean() / max(rows, cols)
        edge = marchenko_pastur_edge(variance, rows, cols)
        new_spikes = int(np.count_nonzero(eigs > edge))
        if new_spikes == spikes or new_spikes >= eigs.size:
            break
        spikes = new_spikes
    return spikes, float(min(1.0, edge / eigs[0])), float(variance)
