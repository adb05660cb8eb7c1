"""WeightWatcher 0.7.7's detX=True (weightwatcher.py apply_detX, RMT_Util.py rescale_eigenvalues and
detX_constraint): how many of the largest eigenvalues it takes, after the spectrum is rescaled to mean
1, for their product to drop below 1 (the "det X = 1" condition of the ERG/SETOL theory), and the
eigenvalue where that happens."""

import numpy as np


def rescale_to_mean_one(eigs: np.ndarray) -> np.ndarray:
    """RMT_Util.rescale_eigenvalues: lambda * n / sum(lambda), so that the mean eigenvalue is 1."""
    eigs = np.asarray(eigs, np.float64)
    return eigs * (eigs.size / eigs.sum())


def detx_index(rescaled_ascending: np.ndarray) -> tuple:
    """(detx_num, index) as RMT_Util.detX_constraint(evals, rescale=False): going down from the top,
    the first index i >= 1 where prod(lambda[i:]) < 1 gives n - i; if none, n and index 1. Fewer
    than 2 eigenvalues, or lambda[0] >= lambda[-1] (a flat spectrum): (0, 0). The product is taken as
    a sum of logs: the same index, without the overflow to inf that would make WeightWatcher's never
    fall below 1 (a log-product above 709)."""
    x = np.asarray(rescaled_ascending, np.float64)
    if x.size < 2 or not x[0] < x[-1]:
        return 0, 0
    with np.errstate(divide="ignore"):  # a zero eigenvalue: log -inf, the product 0 < 1
        log_products = np.cumsum(np.log(x[::-1]))[::-1]  # log prod(x[i:]) for every i
    below = np.flatnonzero(log_products[1:] < 0) + 1
    if below.size == 0:
        return x.size, 1
    index = int(below[-1])  # the largest i: the first reached going down from the top
    return x.size - index, index


def detx(eigs: np.ndarray) -> tuple:
    """(detx_num, detx_val) of a spectrum as apply_detX: detx_index on the eigenvalues rescaled to
    mean 1; detx_val the eigenvalue at that index on W's own scale (its detX_val, not the rescaled
    detX_val_unrescaled). (None, NaN) without eigenvalues or with a zero spectrum."""
    x = np.sort(np.asarray(eigs, np.float64))
    if x.size == 0 or not x.sum() > 0:
        return None, float("nan")
    num, index = detx_index(rescale_to_mean_one(x))
    return int(num), float(x[index])
