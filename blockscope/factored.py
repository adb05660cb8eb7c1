"""A product of two thin factors, never materialised: the math of QK and OV circuits.

    FactoredMatrix(left, right) stands for A = left @ right with left (n x d), right (d x m),
    d << n, m. Its singular values come from the d x d core R_l R_r^T of the QR factors
    (left = Q_l R_l, right^T = Q_r R_r); its nonzero eigenvalues (square A) are those of the
    d x d product right @ left; Frobenius norms and traces come from d x d products too.
    In the spirit of TransformerLens' FactoredMatrix.
"""

from functools import cached_property

import numpy as np


class FactoredMatrix:
    def __init__(self, left: np.ndarray, right: np.ndarray):
        if left.shape[1] != right.shape[0]:
            raise ValueError(f"inner dimensions differ: {left.shape} @ {right.shape}")
        self.left = np.asarray(left, dtype=np.float64)
        self.right = np.asarray(right, dtype=np.float64)

    @property
    def shape(self):
        return self.left.shape[0], self.right.shape[1]

    @cached_property
    def core(self) -> np.ndarray:
        """R_l R_r^T: same nonzero singular values as A, d x d."""
        r_left = np.linalg.qr(self.left, mode="r")
        r_right = np.linalg.qr(self.right.T, mode="r")
        return r_left @ r_right.T

    @cached_property
    def singular_values(self) -> np.ndarray:
        return np.linalg.svd(self.core, compute_uv=False)

    @cached_property
    def eigenvalues(self) -> np.ndarray:
        """Nonzero-spectrum eigenvalues of the square A, by |lambda| descending (complex)."""
        if self.shape[0] != self.shape[1]:
            raise ValueError("eigenvalues need a square product")
        eigs = np.linalg.eigvals(self.right @ self.left)
        return eigs[np.argsort(-np.abs(eigs), kind="stable")]

    @cached_property
    def frobenius_norm(self) -> float:
        return float(np.linalg.norm(self.core))

    def trace_of_square(self) -> float:
        """tr(A A) = tr((right @ left)^2)."""
        small = self.right @ self.left
        return float(np.sum(small * small.T))

    def asymmetry(self) -> float:
        """||A - A^T||_F / ||A||_F = sqrt(2 ||A||^2 - 2 tr(A A)) / ||A||."""
        norm2 = self.frobenius_norm**2
        if norm2 == 0:
            return float("nan")
        return float(np.sqrt(max(0.0, 2 * norm2 - 2 * self.trace_of_square())) / np.sqrt(norm2))

    def inner(self, other: "FactoredMatrix") -> float:
        """<A, B>_F = tr(A^T B), through d x d products only."""
        # tr(R^T L^T L' R') = sum((L^T L') * (R R'^T)) elementwise
        return float(np.sum((self.left.T @ other.left) * (self.right @ other.right.T)))

    def dense(self) -> np.ndarray:
        """The materialised product (tests and small examples only)."""
        return self.left @ self.right
