"""Which per-matrix number predicts a matrix's measured sensitivity: the Spearman correlation of every
spectral metric, and of plain baselines, with the KL to the base that perturbing that matrix alone
causes; a percentile bootstrap interval over matrices and a t-approximation p-value, overall and
within each block type (the table layout.METRIC_CORRELATION_COLUMNS, docs/metrics.md "Per-matrix
sensitivity and what predicts it").

Only measured matrices count: an estimated KL comes from a proxy that is itself a function of the
weights, so correlating metrics with it would measure the proxy, and would flatter any metric the
proxy resembles.
"""

import numpy as np
import pandas as pd

from blockscope.layout import ALL_TYPES, METRIC_CORRELATION_COLUMNS

# What the spectra offer (alpha_hill_relative_range: precision sensitivity, when the sweep ran).
SPECTRAL_METRICS = ("alpha", "alpha_hill", "alpha_peak", "alpha_weighted", "stable_rank", "effective_rank",
                    "spectral_norm", "alpha_hill_relative_range")
# What a metric has to beat: layer depth, parameter count, the format's own weight-space error.
BASELINES = ("layer_index", "params", "weight_error")
MIN_MATRICES = 5  # fewer measured matrices in a group: no correlation (NaN), only the count
# How tables, figures and sentences name a metric (the rest by their column names).
METRIC_LABELS = {"layer_index": "layer depth", "params": "parameter count", "weight_error": "weight-space error",
                 "alpha_hill_relative_range": "precision sensitivity"}


def metric_label(metric: str) -> str:
    """A metric's name for a reader: layer_index -> layer depth; alpha_hill -> alpha_hill."""
    return METRIC_LABELS.get(metric, metric)


def perturbations_of(matrices: pd.DataFrame) -> list:
    """The perturbations a matrices table measured: every p with a `{p}_kl` and a `{p}_measured` column."""
    return [c.removesuffix("_kl") for c in matrices.columns
            if c.endswith("_kl") and f"{c.removesuffix('_kl')}_measured" in matrices]


def metric_column(metric: str, perturbation: str) -> str:
    """The column that holds a metric: weight_error is per perturbation (`{p}_weight_error`)."""
    return f"{perturbation}_weight_error" if metric == "weight_error" else metric


def measured_mask(matrices: pd.DataFrame, perturbation: str) -> pd.Series:
    """The matrices whose KL for `perturbation` was measured (not estimated) and is finite."""
    kl = pd.to_numeric(matrices[f"{perturbation}_kl"], errors="coerce")
    return matrices[f"{perturbation}_measured"].fillna(False).astype(bool) & np.isfinite(kl)


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, ties given their mean rank (as Spearman's rho with ties uses)."""
    from scipy.stats import rankdata

    return rankdata(values, method="average", axis=-1)


def pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson's r of each row of a with the same row of b; NaN where a row is constant."""
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=-1) / denominator
    return np.where(denominator > 0, np.clip(r, -1.0, 1.0), np.nan)


def spearman(x, y) -> float:
    """Spearman's rho: Pearson's r of the ranks (mean ranks for ties). NaN below 2 pairs or for a constant side."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2:
        return float("nan")
    return float(pearson_rows(ranks(x), ranks(y)))


def bootstrap_samples(n: int, samples: int, seed: int) -> np.ndarray:
    """(samples, n) indices: matrices drawn with replacement, the resamples of a percentile bootstrap."""
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def bootstrap_interval(x, y, samples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple:
    """Percentile bootstrap interval of rho over matrices (pairs resampled together); resamples
    with a constant side (undefined rho) are left out. (NaN, NaN) when none is defined."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or samples < 1:
        return float("nan"), float("nan")
    index = bootstrap_samples(len(x), samples, seed)
    rhos = pearson_rows(ranks(x[index]), ranks(y[index]))
    rhos = rhos[np.isfinite(rhos)]
    if not len(rhos):
        return float("nan"), float("nan")
    tail = (1 - level) / 2
    low, high = np.quantile(rhos, [tail, 1 - tail])
    return float(low), float(high)


def rho_difference_interval(a, b, y, samples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple:
    """(|rho(a, y)| - |rho(b, y)|, low, high): how much better metric a ranks y than metric b, with
    a percentile bootstrap interval over matrices (both rhos on the same resamples: paired).
    Rows where a, b or y is not finite are left out; NaNs when fewer than MIN_MATRICES remain."""
    a, b, y = (np.asarray(v, float) for v in (a, b, y))
    keep = np.isfinite(a) & np.isfinite(b) & np.isfinite(y)
    a, b, y = a[keep], b[keep], y[keep]
    if len(y) < MIN_MATRICES:
        return float("nan"), float("nan"), float("nan")
    estimate = abs(spearman(a, y)) - abs(spearman(b, y))
    index = bootstrap_samples(len(y), samples, seed)
    ranked_y = ranks(y[index])
    differences = np.abs(pearson_rows(ranks(a[index]), ranked_y)) - np.abs(pearson_rows(ranks(b[index]), ranked_y))
    differences = differences[np.isfinite(differences)]
    if not np.isfinite(estimate) or not len(differences):
        return float(estimate), float("nan"), float("nan")
    tail = (1 - level) / 2
    low, high = np.quantile(differences, [tail, 1 - tail])
    return float(estimate), float(low), float(high)


def t_p_value(rho: float, n: int) -> float:
    """Two-sided p-value of rho = 0: t = rho sqrt((n - 2) / (1 - rho^2)) on n - 2 degrees of freedom
    (the approximation scipy.stats.spearmanr uses); 0 for |rho| = 1, NaN below 3 pairs."""
    from scipy.stats import t as student_t

    if not np.isfinite(rho) or n < 3:
        return float("nan")
    if abs(rho) >= 1:
        return 0.0
    statistic = rho * np.sqrt((n - 2) / (1 - rho * rho))
    return float(2 * student_t.sf(abs(statistic), n - 2))


def correlation_row(model, perturbation, metric, block_type, x, y, samples, seed, level) -> dict:
    """One row of the table; fewer than MIN_MATRICES finite pairs: NaN statistics with the count."""
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = np.asarray(x, float)[keep], np.asarray(y, float)[keep]
    row = {"model": model, "perturbation": perturbation, "metric": metric, "block_type": block_type,
           "matrices": int(len(x)), "spearman": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan}
    if len(x) >= MIN_MATRICES:
        rho = spearman(x, y)
        low, high = bootstrap_interval(x, y, samples, seed, level)
        row.update(spearman=rho, ci_low=low, ci_high=high, p_value=t_p_value(rho, len(x)))
    return row


def metric_correlations(matrices: pd.DataFrame, perturbations=None, samples: int = 1000, seed: int = 0,
                        level: float = 0.95, model: str | None = None) -> pd.DataFrame:
    """Per perturbation, metric (SPECTRAL_METRICS and BASELINES present in the table) and block type
    ("all" first, then each type): Spearman's rho of the metric with the measured KL of that
    perturbation, its bootstrap interval and p-value (layout.METRIC_CORRELATION_COLUMNS).
    Estimated rows are left out (module docstring). model: the table's `model` column when None."""
    if model is None:
        model = str(matrices["model"].iloc[0]) if "model" in matrices and len(matrices) else ""
    perturbations = perturbations_of(matrices) if perturbations is None else list(perturbations)
    rows = []
    for perturbation in perturbations:
        if f"{perturbation}_kl" not in matrices:
            continue
        chosen = matrices[measured_mask(matrices, perturbation)]
        kl = pd.to_numeric(chosen[f"{perturbation}_kl"], errors="coerce").to_numpy(float)
        types = sorted(chosen["block_type"].dropna().astype(str).unique()) if "block_type" in chosen else []
        for metric in (*SPECTRAL_METRICS, *BASELINES):
            column = metric_column(metric, perturbation)
            if column not in matrices:
                continue
            values = pd.to_numeric(chosen[column], errors="coerce").to_numpy(float)
            groups = [(ALL_TYPES, np.ones(len(chosen), bool))]
            groups += [(t, (chosen["block_type"].astype(str) == t).to_numpy()) for t in types]
            rows += [correlation_row(model, perturbation, metric, block_type, values[mask], kl[mask], samples,
                                     seed, level) for block_type, mask in groups]
    return pd.DataFrame(rows, columns=METRIC_CORRELATION_COLUMNS)


def excludes_zero(low, high) -> bool:
    """Whether an interval lies wholly above or wholly below zero."""
    return bool(np.isfinite(low) and np.isfinite(high) and (low > 0 or high < 0))


def bonferroni(p_value: float, tests: int) -> float:
    """min(1, p x tests): the p-value of the best of `tests` metrics once the choice is counted
    (Bonferroni; conservative for correlated metrics)."""
    return min(1.0, float(p_value) * max(int(tests), 1))


def best_predictor(correlations: pd.DataFrame, metrics=None, perturbation: str | None = None) -> str | None:
    """The metric with the largest |rho| over all matrices (block_type "all") among those whose
    interval excludes zero; None when none does. metrics / perturbation: only these rows."""
    rows = correlations[correlations["block_type"] == ALL_TYPES]
    if metrics is not None:
        rows = rows[rows["metric"].isin(list(metrics))]
    if perturbation is not None:
        rows = rows[rows["perturbation"] == perturbation]
    rows = rows[[excludes_zero(low, high) for low, high in zip(rows["ci_low"], rows["ci_high"])]]
    if rows.empty:
        return None
    return str(rows.loc[rows["spearman"].abs().idxmax(), "metric"])
