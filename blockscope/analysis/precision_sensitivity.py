"""Precision sensitivity of a matrix: how far alpha-Hill moves across the swept precisions.

Each formula of docs/metrics.md ("Precision sensitivity") in one short function. A matrix with
NaN alpha-Hill at any swept precision, or fewer than two precisions, has NaN range and is not
flagged (its `status` in precision.parquet says why).
"""

import numpy as np
import pandas as pd

from blockscope.layout import PRECISION_SENSITIVITY_COLUMNS

DEFAULT_THRESHOLD = 0.05  # config precision.sensitivity_threshold


def _swept(alphas) -> np.ndarray | None:
    values = np.asarray(alphas, dtype=np.float64)
    return values if values.size >= 2 and np.isfinite(values).all() else None


def alpha_hill_range(alphas) -> float:
    """max - min of alpha-Hill over the swept precisions."""
    values = _swept(alphas)
    return float("nan") if values is None else float(values.max() - values.min())


def alpha_hill_relative_range(alphas) -> float:
    """(max - min) / |mean| of alpha-Hill over the swept precisions."""
    values = _swept(alphas)
    if values is None or values.mean() == 0:
        return float("nan")
    return float((values.max() - values.min()) / abs(values.mean()))


def precision_sensitive(relative_range: float, threshold: float = DEFAULT_THRESHOLD) -> bool:
    """relative range > threshold (strictly; NaN is not sensitive)."""
    return bool(np.isfinite(relative_range) and relative_range > threshold)


def precision_sensitivity(precision: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """One row per matrix of the long sweep table (order of first appearance): matrix, block_type,
    then alpha_hill_range, alpha_hill_relative_range, precision_sensitive."""
    columns = ["matrix", "block_type", *PRECISION_SENSITIVITY_COLUMNS]
    if precision.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for matrix, group in precision.groupby("matrix", sort=False):
        relative = alpha_hill_relative_range(group["alpha_hill"])
        rows.append({"matrix": matrix, "block_type": group["block_type"].iloc[0],
                     "alpha_hill_range": alpha_hill_range(group["alpha_hill"]),
                     "alpha_hill_relative_range": relative,
                     "precision_sensitive": precision_sensitive(relative, threshold)})
    return pd.DataFrame(rows, columns=columns)


def most_sensitive(sensitivity: pd.DataFrame, top: int = 10) -> pd.DataFrame:
    """The `top` matrices of largest relative range (NaN last, left out)."""
    finite = sensitivity.dropna(subset=["alpha_hill_relative_range"])
    return finite.sort_values("alpha_hill_relative_range", ascending=False, kind="stable").head(top)
