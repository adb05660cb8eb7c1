"""A LoRA update dW = scale * B @ A (B: out x r, A: r x in) measured from its factors, never formed.

Householder QR of B and A^T (B = Q_B R_B, A^T = Q_A R_A) gives B A = Q_B (R_B R_A^T) Q_A^T, so the
r nonzero singular values of B A are those of the r x r core R_B R_A^T, and so is its Frobenius
norm; <dW, W_base>_F = scale * sum((B^T W_base) * A) costs one r x in product. Everything is in
float64 from the stored factors. analysis.factored.FactoredMatrix does the same for stacks of
attention heads with a Cholesky R (faster, but its error grows with the squared condition number
of the factor); for one adapter matrix both cost out r^2, so Householder QR.
"""

import numpy as np

from blockscope.analysis.delta_metrics import ROUNDING_SAFETY, noise_edge, rounding_variances


def _float64(matrix) -> np.ndarray:
    return np.asarray(matrix, dtype=np.float64)


def update_core(B, A) -> np.ndarray:
    """R_B R_A^T: the nonzero singular values of B @ A, at most r x r."""
    return np.linalg.qr(_float64(B), mode="r") @ np.linalg.qr(_float64(A).T, mode="r").T


def update_singular_values(B, A, scale: float) -> np.ndarray:
    """The r largest singular values of scale * B @ A, descending (all others are 0)."""
    return abs(float(scale)) * np.linalg.svd(update_core(B, A), compute_uv=False)


def update_dot(B, A, scale: float, w_base) -> float:
    """<scale B A, W_base>_F = scale * sum((B^T W_base) * A)."""
    return float(scale) * float(np.sum((_float64(B).T @ _float64(w_base)) * _float64(A)))


def factor_noise(factor, dtype=None) -> float:
    """The rounding-noise edge of one stored factor: noise_edge of its rounding variances (s_ij = u |f_ij|,
    u of `dtype`, by default the factor's own)."""
    return noise_edge(*rounding_variances(factor, dtype or np.asarray(factor).dtype))


def factor_rounding_level(B, A, scale: float, dtype=None) -> float:
    """What the storage rounding of the factors (in `dtype`, by default their own) can put into
    scale * B @ A, to first order: ROUNDING_SAFETY |scale| (||E_B||_2 ||A||_2 + ||B||_2 ||E_A||_2),
    each ||E||_2 its factor_noise. An adapter is applied from its factors, so no stored W is
    rounded: this is its only rounding."""
    spectral_b, spectral_a = np.linalg.norm(_float64(B), 2), np.linalg.norm(_float64(A), 2)
    noise_b, noise_a = factor_noise(B, dtype), factor_noise(A, dtype)
    return ROUNDING_SAFETY * abs(float(scale)) * (noise_b * spectral_a + spectral_b * noise_a)


def dense_update(B, A, scale: float) -> np.ndarray:
    """scale * B @ A in float64, out x in: only where a dense matrix of W's size is needed anyway
    (the subspaces of W = W_base + dW) and in tests."""
    return float(scale) * (_float64(B) @ _float64(A))
