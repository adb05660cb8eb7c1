"""Per-matrix metrics from singular values. One formula, one function; docs/metrics.md cites each.

Conventions follow WeightWatcher 0.7.7 where its users will compare numbers: eigenvalues are
lambda = sigma^2 of the unnormalised matrix; `spectral_norm` is lambda_max (= sigma_max^2) and
`log_norm` is log10 of sum(lambda) (= the squared Frobenius norm), as WeightWatcher reports them.
"""

import math

import numpy as np

# --- ranks ---------------------------------------------------------------------------------


def design_rank(rows: int, cols: int) -> int:
    return min(rows, cols)


def numerical_rank(sigma: np.ndarray, rows: int, cols: int, eps: float) -> int:
    """Count of sigma > sigma_max * max(rows, cols) * eps (numpy.linalg.matrix_rank's rule)."""
    if sigma.size == 0 or sigma[0] == 0:
        return 0
    return int(np.count_nonzero(sigma > sigma[0] * max(rows, cols) * eps))


def rounding_noise_rank(sigma: np.ndarray, rows: int, cols: int, eps: float) -> int:
    """Count of sigma above the spectral norm of the rounding noise a format with machine
    epsilon `eps` adds: u ||W||_F (1/sqrt(rows) + 1/sqrt(cols)), u = eps / 2 (the Marchenko-Pastur
    edge of i.i.d. noise of that size). Unlike numpy's eps * max(rows, cols) rule, it stays
    meaningful for coarse formats (bf16, fp16, 4-bit)."""
    if sigma.size == 0 or sigma[0] == 0:
        return 0
    tol = eps / 2 * frobenius_norm(sigma) * (1 / np.sqrt(rows) + 1 / np.sqrt(cols))
    return int(np.count_nonzero(sigma > tol))


def energy_rank(sigma: np.ndarray, fraction: float) -> int:
    """Smallest k whose top-k sigma^2 hold `fraction` of sum sigma^2 (sigma sorted descending)."""
    energy = np.cumsum(sigma.astype(np.float64) ** 2)
    if energy.size == 0 or energy[-1] == 0:
        return 0
    return int(np.searchsorted(energy, fraction * energy[-1] * (1 - 1e-12)) + 1)


def effective_rank(sigma: np.ndarray) -> float:
    """Roy & Vetterli (2007): exp of the Shannon entropy of p = sigma / sum(sigma)."""
    total = sigma.sum(dtype=np.float64)
    if total == 0:
        return float("nan")
    p = sigma[sigma > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def stable_rank(sigma: np.ndarray) -> float:
    """sum(sigma^2) / sigma_max^2 (Rudelson & Vershynin 2007)."""
    if sigma.size == 0 or sigma[0] == 0:
        return float("nan")
    return float(np.sum(sigma.astype(np.float64) ** 2) / float(sigma[0]) ** 2)


def participation_ratio(sigma: np.ndarray) -> float:
    """(sum lambda)^2 / sum lambda^2 with lambda = sigma^2."""
    lam = sigma.astype(np.float64) ** 2
    denominator = np.sum(lam**2)
    return float(np.sum(lam) ** 2 / denominator) if denominator > 0 else float("nan")


def matrix_entropy(sigma: np.ndarray, rows: int, cols: int) -> float:
    """WeightWatcher's `entropy`: Shannon entropy of lambda / sum(lambda), over log(rank)."""
    rank = numerical_rank(sigma, rows, cols, np.finfo(sigma.dtype).eps)
    lam = sigma.astype(np.float64) ** 2
    if lam.sum() == 0:
        return float("nan")
    p = lam / lam.sum() + 1e-10
    return float(-np.sum(p * np.log(p)) / np.log(rank + 1e-10))


# --- norms ---------------------------------------------------------------------------------


def frobenius_norm(sigma: np.ndarray) -> float:
    """sqrt(sum sigma^2) = ||W||_F."""
    return float(np.sqrt(np.sum(sigma.astype(np.float64) ** 2)))


def spectral_norm(sigma: np.ndarray) -> float:
    """WeightWatcher convention: lambda_max = sigma_max^2 (the largest eigenvalue of W^T W)."""
    return float(sigma[0]) ** 2 if sigma.size else float("nan")


def log_norm(sigma: np.ndarray) -> float:
    """WeightWatcher convention: log10(sum lambda) = log10(||W||_F^2)."""
    return _log10(np.sum(sigma.astype(np.float64) ** 2))


def log_spectral_norm(sigma: np.ndarray) -> float:
    """log10(lambda_max)."""
    return _log10(spectral_norm(sigma))


def condition_number(sigma: np.ndarray) -> float:
    """sigma_max / sigma_min (inf for a singular matrix)."""
    if sigma.size == 0 or sigma[0] == 0:
        return float("nan")
    return float(sigma[0] / sigma[-1]) if sigma[-1] > 0 else float("inf")


def _log10(x) -> float:
    return float(np.log10(x)) if x > 0 else float("nan")


# --- element statistics --------------------------------------------------------------------

SPARSITY_THRESHOLD = 1e-6


ELEMENT_BLOCK = 1 << 18  # entries per pass: the float64 temporaries stay in cache (8x faster at 136M entries)


def element_blocks(matrix: np.ndarray, size: int = ELEMENT_BLOCK):
    """The entries as consecutive 1-D views of at most `size`, in memory order (a copy only for a
    non-contiguous matrix): the per-entry statistics below are order-free."""
    flat = np.asarray(matrix).ravel(order="K")
    for start in range(0, flat.size, size):
        yield flat[start:start + size]


def sparsity(matrix: np.ndarray, threshold: float = SPARSITY_THRESHOLD) -> float:
    """Fraction of entries with |w| <= threshold (absolute)."""
    if not matrix.size:
        return float("nan")
    return sum(int(np.count_nonzero(np.abs(block) <= threshold)) for block in element_blocks(matrix)) / matrix.size


def element_stats(matrix: np.ndarray) -> dict:
    """mean, std, var of the entries: two passes (mean, then mean squared deviation), float64
    accumulation, as numpy's mean and var (ddof 0); NaN for no entries."""
    if not matrix.size:
        return dict.fromkeys(("mean", "std", "var"), float("nan"))
    mean = math.fsum(float(np.add.reduce(block, dtype=np.float64)) for block in element_blocks(matrix)) / matrix.size
    squares = 0.0
    for block in element_blocks(matrix):
        deviation = np.subtract(block, mean, dtype=np.float64)
        with np.errstate(over="ignore"):  # entries beyond ~1e154: var is inf in float64, as numpy's
            squares += float(deviation @ deviation)
    var = squares / matrix.size
    return {"mean": mean, "std": float(np.sqrt(var)), "var": var}
