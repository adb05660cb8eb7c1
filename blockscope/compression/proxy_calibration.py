"""From the output-error proxy to an estimated KL, and how far to trust it.

The proxy (blockscope.compression.output_error) measures how far a matrix's own outputs move; how
much of that reaches the logits depends on what the matrix feeds (a key projection's error passes a
softmax, a down projection's goes straight into the residual stream). So the proxy is calibrated
on the matrices that were measured, by least squares in log space with one intercept per block
type and one common slope:

    log KL = intercept[block type] + slope * log proxy,

over the measured rows of the same perturbation with both sides positive (the slope from the
deviations of each type's rows from their type's means; a type with no measured row takes the
intercept over all rows). The slope is kept >= 0 (constrained least squares: a negative fit
gives slope 0, each type's mean), so that a larger output error never estimates a smaller KL;
without variation to fit it (one row per type) it is 1, KL proportional to the proxy.

A format with fewer than MIN_OWN_FIT measured rows (every format that is only estimated) is scaled
from the anchor format (the measured low format) within each matrix: KL_f = KL_anchor * proxy_f /
proxy_anchor, the quadratic regime in which KL and the proxy both grow with the square of the
perturbation; without an anchor, or for pruning, it takes the fit pooled over every measured row.
A zero proxy (the weights did not change) estimates a KL of exactly zero.

Beside each fit: Spearman's rho of proxy and measured KL with its n; the log residuals' root mean
square (a typical factor of error: exp(rmse)); and the leave-one-out check, each measured matrix
estimated from the fit to the others (`loo_spearman`, `loo_rmse_log`): the quality to expect of
the estimate of a matrix that was not measured.
"""

import numpy as np
import pandas as pd

MIN_OWN_FIT = 3  # measured rows a perturbation needs for its own fit; fewer: the pooled one
ALL = "all"  # the intercept of a block type without measured rows


def usable(proxy, kl) -> np.ndarray:
    """Rows a log-space fit can use: proxy and KL both finite and positive."""
    proxy, kl = np.asarray(proxy, float), np.asarray(kl, float)
    with np.errstate(invalid="ignore"):
        return np.isfinite(proxy) & np.isfinite(kl) & (proxy > 0) & (kl > 0)


def within_slope(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    """The common least-squares slope of y on x within groups: sum(dx dy) / sum(dx^2), d the
    deviation from the group's mean. NaN when x does not vary within any group."""
    frame = pd.DataFrame({"x": x, "y": y, "g": groups})
    dx = frame["x"] - frame.groupby("g")["x"].transform("mean")
    dy = frame["y"] - frame.groupby("g")["y"].transform("mean")
    spread = float((dx * dx).sum())
    return float((dx * dy).sum()) / spread if spread > 1e-12 * max(1.0, float((frame["x"] ** 2).sum())) else np.nan


def log_fit(proxy, kl, groups=None) -> dict | None:
    """{intercept, intercepts: {group: value}, slope, slope_fitted, n, rmse_log} of log kl =
    intercept[group] + slope log proxy over the usable rows (module docstring); groups None: one
    intercept. None without a usable row."""
    keep = usable(proxy, kl)
    x, y = np.log(np.asarray(proxy, float)[keep]), np.log(np.asarray(kl, float)[keep])
    if not len(x):
        return None
    groups = np.asarray([ALL] * len(keep) if groups is None else groups, dtype=object)[keep]
    fitted = within_slope(x, y, groups)
    slope = 1.0 if not np.isfinite(fitted) else max(fitted, 0.0)
    level = pd.Series(y - slope * x)
    intercepts = {str(g): float(v) for g, v in level.groupby(groups).mean().items()}
    residual = level.to_numpy() - np.array([intercepts[str(g)] for g in groups])
    return {"intercept": float(level.mean()), "intercepts": intercepts, "slope": slope, "slope_fitted": fitted,
            "n": int(len(x)), "rmse_log": float(np.sqrt(np.mean(residual ** 2)))}


def calibrated(proxy, fit: dict | None, groups=None) -> np.ndarray:
    """exp(intercept[group]) * proxy^slope; 0 where the proxy is 0; NaN without a fit or a finite proxy."""
    proxy = np.asarray(proxy, float)
    out = np.full(proxy.shape, np.nan)
    out[proxy == 0] = 0.0
    positive = np.isfinite(proxy) & (proxy > 0)
    if fit is not None:
        groups = [ALL] * len(proxy) if groups is None else list(groups)
        level = np.array([fit["intercepts"].get(str(g), fit["intercept"]) for g in groups])
        out[positive] = np.exp(level[positive] + fit["slope"] * np.log(proxy[positive]))
    return out


def spearman(x, y) -> tuple:
    """(Spearman's rho, n) over the rows where both are finite; rho NaN below 3 rows or for a constant side."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    n = int(keep.sum())
    if n < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return float("nan"), n
    return float(spearmanr(x[keep], y[keep]).statistic), n


def leave_one_out(proxy, kl, groups) -> dict:
    """{loo_spearman, loo_rmse_log, loo_n}: each usable row estimated from the fit to the others,
    against its measured KL."""
    proxy, kl, groups = np.asarray(proxy, float), np.asarray(kl, float), np.asarray(groups, dtype=object)
    index = np.flatnonzero(usable(proxy, kl))
    estimates = []
    for i in index:
        others = index[index != i]
        fit = log_fit(proxy[others], kl[others], groups[others])
        estimates.append(calibrated(proxy[[i]], fit, groups[[i]])[0] if fit else np.nan)
    estimates = np.asarray(estimates, float)
    rho, n = spearman(estimates, kl[index])
    with np.errstate(invalid="ignore", divide="ignore"):
        error = np.log(estimates) - np.log(kl[index])
    error = error[np.isfinite(error)]
    return {"loo_spearman": rho, "loo_rmse_log": float(np.sqrt(np.mean(error ** 2))) if len(error) else np.nan,
            "loo_n": n}


def scaled_from(anchor_kl, anchor_proxy, proxy) -> np.ndarray:
    """KL_anchor * proxy / proxy_anchor per matrix (NaN where the anchor's proxy is not positive)."""
    anchor_kl, anchor_proxy, proxy = (np.asarray(v, float) for v in (anchor_kl, anchor_proxy, proxy))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = anchor_kl * proxy / anchor_proxy
    out[~(anchor_proxy > 0)] = np.nan
    out[proxy == 0] = 0.0
    return out


def agreement_of(rows: pd.DataFrame, fit: dict | None, source: str) -> dict:
    """A perturbation's entry of agreement.json: measured rows, rho of proxy and KL, the fit, leave-one-out."""
    rho, n = spearman(rows["proxy"], rows["kl_divergence"])
    check = leave_one_out(rows["proxy"], rows["kl_divergence"], rows["block_type"]) if source == "own" else {}
    return {"measured": int(len(rows)), "spearman": rho, "n": n, "calibration": source, "fit": fit, **check}


def calibrate(estimates: pd.DataFrame, anchor: str | None = None, prune_prefix: str = "prune_") -> tuple:
    """(estimates with estimated_kl filled: the measured KL, else the calibrated proxy; the
    agreement per perturbation and pooled). estimates: layout.SENSITIVITY_ESTIMATE_COLUMNS rows.
    anchor: the format that unmeasured formats are scaled from (module docstring)."""
    out = estimates.copy()
    out["estimated_kl"] = np.nan
    is_measured = out["measured"].astype(bool)
    measured = out[is_measured]
    pooled = log_fit(measured["proxy"], measured["kl_divergence"], measured["block_type"])
    rho, n = spearman(measured["proxy"], measured["kl_divergence"])
    agreement = {"pooled": {"spearman": rho, "n": n, "fit": pooled}, "perturbations": {}}
    own_fits = {}
    for perturbation in sorted(out["perturbation"].unique(), key=lambda p: p != anchor):  # the anchor first
        rows = out[out["perturbation"] == perturbation]
        own = rows[is_measured[rows.index]]
        fit, source = log_fit(own["proxy"], own["kl_divergence"], own["block_type"]), "own"
        if fit is None or fit["n"] < MIN_OWN_FIT:
            fit, source = pooled, "pooled"
        else:
            own_fits[perturbation] = fit
        estimate = calibrated(rows["proxy"], fit, rows["block_type"])
        if source == "pooled" and anchor in own_fits and not str(perturbation).startswith(prune_prefix):
            base = out[out["perturbation"] == anchor].set_index("param_name").reindex(rows["param_name"])
            estimate = scaled_from(base["estimated_kl"], base["proxy"], rows["proxy"])
            fit, source = None, f"proportional to {anchor}"
        out.loc[rows.index, "estimated_kl"] = np.where(is_measured[rows.index], rows["kl_divergence"].astype(float),
                                                       estimate)
        agreement["perturbations"][perturbation] = agreement_of(own, fit, source)
    agreement["perturbations"] = {p: agreement["perturbations"][p] for p in out["perturbation"].unique()}
    return out, agreement
