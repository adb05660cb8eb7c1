"""One metrics row per matrix: every column of layout.MATRIX_COLUMNS, with a status."""

import numpy as np

from blockscope.analysis import heavytail as ht
from blockscope.analysis import matrix_formulas as mx
from blockscope.io.dtypes import relative_precision
from blockscope.layout import ELEMENT_COLUMNS, ENERGY_FRACTIONS, SPECTRAL_METRIC_COLUMNS, energy_column

ALPHA_LOW, ALPHA_HIGH = 2.0, 6.0  # WeightWatcher's well-trained range of alpha


def _nan_metrics() -> dict:
    return dict.fromkeys([*SPECTRAL_METRIC_COLUMNS, *ELEMENT_COLUMNS], float("nan"))


def spectral_metrics(sigma: np.ndarray, rows: int, cols: int, source_dtype: str, hill_fraction: float = 0.1) -> dict:
    """Every metric that needs only the singular values (sigma descending)."""
    sigma = np.sort(np.asarray(sigma))[::-1]
    eigs = sigma.astype(np.float64) ** 2
    design = mx.design_rank(rows, cols)
    out = {
        "actual_rank": mx.numerical_rank(sigma, rows, cols, np.finfo(sigma.dtype).eps),
        "numerical_rank_fp16": mx.rounding_noise_rank(sigma, rows, cols, relative_precision("F16")),
        "numerical_rank_bf16": mx.rounding_noise_rank(sigma, rows, cols, relative_precision("BF16")),
        "numerical_rank_source": mx.rounding_noise_rank(sigma, rows, cols, relative_precision(source_dtype))
        if np.isfinite(relative_precision(source_dtype)) else float("nan"),
        "effective_rank": mx.effective_rank(sigma),
        "stable_rank": mx.stable_rank(sigma),
        "participation_ratio": mx.participation_ratio(sigma),
        "entropy": mx.matrix_entropy(sigma, rows, cols),
        "sigma_max": float(sigma[0]) if sigma.size else float("nan"),
        "spectral_norm": mx.spectral_norm(sigma),
        "frobenius_norm": mx.frobenius_norm(sigma),
        "log_norm": mx.log_norm(sigma),
        "log_spectral_norm": mx.log_spectral_norm(sigma),
        "condition_number": mx.condition_number(sigma),
    }
    out["rank_ratio"] = out["actual_rank"] / design if design else float("nan")
    for fraction in ENERGY_FRACTIONS:
        out[energy_column(fraction)] = mx.energy_rank(sigma, fraction)
    out["svd_90_percent_rank"] = out["energy_rank_90"]
    out["svd_90_percent_ratio"] = out["energy_rank_90"] / design if design else float("nan")
    fit = ht.powerlaw_fit(eigs)
    out.update(alpha=fit.alpha, xmin=fit.xmin, D=fit.D, alpha_stderr=fit.alpha_stderr,
               num_pl_spikes=fit.num_pl_spikes)
    out["alpha_weighted"] = ht.alpha_weighted(fit.alpha, eigs)
    out["log_alpha_norm"] = ht.log_alpha_norm(fit.alpha, eigs)
    out["alpha_hill"] = ht.alpha_hill(eigs, ht.hill_k(ht.tail_eigenvalues(eigs).size, hill_fraction))
    out["alpha_peak"] = ht.alpha_peak(eigs)
    out["alpha_mid"] = ht.alpha_mid(eigs)
    out["num_spikes"], out["mp_softrank"], _ = ht.mp_bulk_fit(eigs, rows, cols)
    return out


def check_matrix(matrix: np.ndarray) -> str | None:
    """Why a matrix cannot be analysed (None when it can)."""
    if not all(np.isfinite(block).all() for block in mx.element_blocks(matrix)):
        return f"non-finite weights ({int(np.isnan(matrix).sum())} NaN, {int(np.isinf(matrix).sum())} Inf)"
    if matrix.size == 0:
        return "empty matrix"
    return None


def status_of(row: dict, n_eigs: int) -> tuple:
    """(status, warning) for a computed row."""
    if row["sigma_max"] == 0:
        return "zero matrix: all metrics that divide by a norm are NaN", ""
    if not np.isfinite(row["alpha"]):
        return (f"fewer than {ht.MIN_EIGENVALUES} eigenvalues above {ht.EIGENVALUE_FLOOR:g} "
                f"({n_eigs}): no tail fit"), ""
    warning = ""
    if row["alpha"] < ALPHA_LOW:
        warning = f"alpha < {ALPHA_LOW:g}: very heavy tail (WeightWatcher: over-trained?)"
    elif row["alpha"] > ALPHA_HIGH:
        warning = f"alpha > {ALPHA_HIGH:g}: light tail (WeightWatcher: under-trained?)"
    return "ok", warning


def matrix_metrics(matrix: np.ndarray, sigma, source_dtype: str, hill_fraction: float = 0.1,
                   sparsity_threshold: float = mx.SPARSITY_THRESHOLD) -> dict:
    """All metrics for one matrix (stored values in `matrix`, its singular values in `sigma`)."""
    rows, cols = matrix.shape
    row = {"rows": rows, "cols": cols, "design_rank": mx.design_rank(rows, cols)}
    problem = check_matrix(matrix)
    if problem is not None:
        return {**row, **_nan_metrics(), "status": problem, "warning": ""}
    values = np.asarray(matrix, dtype=np.float32) if matrix.dtype.itemsize < 4 else np.asarray(matrix)
    row.update(spectral_metrics(sigma, rows, cols, source_dtype, hill_fraction))
    row.update(mx.element_stats(values))
    row["sparsity"] = mx.sparsity(values, sparsity_threshold)
    n_eigs = int(np.count_nonzero(np.asarray(sigma, np.float64) ** 2 > ht.EIGENVALUE_FLOOR))
    row["status"], row["warning"] = status_of(row, n_eigs)
    return row
