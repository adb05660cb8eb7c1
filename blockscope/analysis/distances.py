"""How far apart two matrices of one shape are (pair_layout.DISTANCE_METRIC_COLUMNS): the norms of their
difference, the angle between the flattened weights, and how much their top-k singular subspaces
overlap (principal angles). One formula, one function; docs/metrics.md "Deltas, adapters and
distances" gives each with its source.

The cosine and angle come from three float64 numbers, ||D||_F, <D, B>_F and ||B||_F with
D = A - B, so that a factored update (an adapter: D = scale B A, never formed) and a dense
difference share them, and a small angle is not lost to the cancellation of 1 - cos.
"""

import math

import numpy as np

from blockscope.analysis.gram import gram_floor
from blockscope.pair_layout import DISTANCE_METRIC_COLUMNS

# From this Gram side up, scipy's eigh computes the top k eigenpairs only (LAPACK syevr); below,
# numpy's full eigh is as fast and spares a job scipy.linalg's import.
SUBSET_MIN_N = 512


def relative_distance(frobenius_distance: float, other_frobenius: float) -> float:
    """||A - B||_F / ||B||_F (NaN for a zero B)."""
    return float(frobenius_distance / other_frobenius) if other_frobenius > 0 else float("nan")


def weight_norm(delta_frobenius: float, delta_dot_other: float, other_frobenius: float) -> float:
    """||A||_F = sqrt(||B||^2 + 2 <D, B> + ||D||^2) with A = B + D."""
    return math.sqrt(max(0.0, other_frobenius**2 + 2 * delta_dot_other + delta_frobenius**2))


def weight_cosine(delta_frobenius: float, delta_dot_other: float, other_frobenius: float) -> float:
    """<A, B>_F / (||A||_F ||B||_F) of the flattened weights, <A, B> = ||B||^2 + <D, B>; NaN for a zero one."""
    norm = weight_norm(delta_frobenius, delta_dot_other, other_frobenius)
    if norm == 0 or other_frobenius == 0:
        return float("nan")
    return float(np.clip((other_frobenius**2 + delta_dot_other) / (norm * other_frobenius), -1.0, 1.0))


def angle_degrees(delta_frobenius: float, delta_dot_other: float, other_frobenius: float) -> float:
    """The angle between A and B in degrees, atan2(||A|| ||B|| sin, ||A|| ||B|| cos) with
    (||A|| ||B|| sin)^2 = ||D||^2 ||B||^2 - <D, B>^2 (Lagrange's identity for A = B + D): accurate
    for small angles, where arccos of a cosine near 1 is not. NaN for a zero matrix."""
    if weight_norm(delta_frobenius, delta_dot_other, other_frobenius) == 0 or other_frobenius == 0:
        return float("nan")
    sine = math.sqrt(max(0.0, (delta_frobenius * other_frobenius) ** 2 - delta_dot_other**2))
    return math.degrees(math.atan2(sine, other_frobenius**2 + delta_dot_other))


def top_eigenpairs(gram: np.ndarray, k: int) -> tuple:
    """The k largest eigenvalues of a symmetric matrix, descending, and their eigenvectors (columns)."""
    n = len(gram)
    if n >= SUBSET_MIN_N:
        import scipy.linalg

        eigs, vectors = scipy.linalg.eigh(gram, subset_by_index=[n - k, n - 1], driver="evr", check_finite=False)
    else:
        eigs, vectors = np.linalg.eigh(gram)
        eigs, vectors = eigs[n - k:], vectors[:, n - k:]
    return eigs[::-1], vectors[:, ::-1]


def top_singular_vectors(matrix, k: int) -> tuple:
    """(U_k, sigma_k, V_k) of the k largest singular values, exactly: the eigenvectors of the float64
    Gram matrix of the short side, the other side as W V / sigma (or W^T U / sigma). Singular values
    the Gram cannot resolve (eigenvalue at or below gram.gram_floor) are left out, so fewer than k
    may come back."""
    values = np.asarray(matrix, dtype=np.float64)
    tall = values.shape[0] >= values.shape[1]
    gram = values.T @ values if tall else values @ values.T
    k = min(int(k), len(gram))
    if k <= 0:
        return np.zeros((values.shape[0], 0)), np.zeros(0), np.zeros((values.shape[1], 0))
    eigs, vectors = top_eigenpairs(gram, k)
    resolved = eigs > gram_floor(max(float(eigs[0]), 0.0), len(gram)) if eigs[0] > 0 else np.zeros(k, bool)
    sigma, vectors = np.sqrt(eigs[resolved]), vectors[:, resolved]
    other = (values @ vectors if tall else values.T @ vectors) / sigma
    return (other, sigma, vectors) if tall else (vectors, sigma, other)


def principal_cosines(basis: np.ndarray, other_basis: np.ndarray) -> np.ndarray:
    """cos of the principal angles between the spans of two orthonormal bases (columns), descending:
    the singular values of basis^T other_basis (Bjorck & Golub 1973)."""
    return np.clip(np.linalg.svd(basis.T @ other_basis, compute_uv=False), 0.0, 1.0)


def subspace_overlap(cosines: np.ndarray) -> float:
    """Mean cos^2 of the principal angles = ||U_a^T U_b||_F^2 / k: 1 for one subspace, k / n for random ones."""
    return float(np.mean(cosines**2)) if cosines.size else float("nan")


def min_principal_cosine(cosines: np.ndarray) -> float:
    """cos of the largest principal angle: 0 when one direction of either subspace is orthogonal to the other."""
    return float(cosines.min()) if cosines.size else float("nan")


def subspace_metrics(matrix, other, subspace_k: int) -> dict:
    """The overlap of the top-k left (column) and right (row) singular subspaces of two matrices,
    k = min(subspace_k, the singular values both resolve)."""
    left, _, right = top_singular_vectors(matrix, subspace_k)
    other_left, _, other_right = top_singular_vectors(other, subspace_k)
    k = min(left.shape[1], other_left.shape[1])
    cos_left = principal_cosines(left[:, :k], other_left[:, :k])
    cos_right = principal_cosines(right[:, :k], other_right[:, :k])
    return {"subspace_overlap_left": subspace_overlap(cos_left), "subspace_overlap_right": subspace_overlap(cos_right),
            "min_principal_cosine_left": min_principal_cosine(cos_left),
            "min_principal_cosine_right": min_principal_cosine(cos_right), "subspace_k": k}


def identical_subspaces(rows: int, cols: int, subspace_k: int) -> dict:
    """subspace_metrics of a matrix and itself, without a decomposition: every cosine 1,
    k = min(subspace_k, rows, cols)."""
    return {"subspace_overlap_left": 1.0, "subspace_overlap_right": 1.0, "min_principal_cosine_left": 1.0,
            "min_principal_cosine_right": 1.0, "subspace_k": min(int(subspace_k), rows, cols)}


def distance_metrics(*, delta_frobenius: float, delta_dot_other: float, other_frobenius: float, spectral: float,
                     subspaces: dict) -> dict:
    """DISTANCE_METRIC_COLUMNS of A against B from ||A - B||_F, <A - B, B>_F, ||B||_F, the largest
    singular value of A - B and subspace_metrics(A, B, k)."""
    return {"frobenius_distance": float(delta_frobenius), "spectral_distance": float(spectral),
            "relative_distance": relative_distance(delta_frobenius, other_frobenius),
            "weight_cosine": weight_cosine(delta_frobenius, delta_dot_other, other_frobenius),
            "angle_degrees": angle_degrees(delta_frobenius, delta_dot_other, other_frobenius),
            "other_frobenius": float(other_frobenius), **subspaces}


def missing_distances() -> dict:
    """Every distance metric NaN, subspace_k NA (a pair that could not be compared)."""
    return {**dict.fromkeys(DISTANCE_METRIC_COLUMNS, float("nan")), "subspace_k": None}
