"""A product of two thin factors, never materialised: the math of QK and OV circuits.

    FactoredMatrix(left, right) stands for A = left @ right with left (..., n, d) and
    right (..., d, m), d << n, m; leading axes stack many products (one per attention head)
    and every quantity below is computed for all of them at once. Singular values come from
    the d x d core R_l R_r^T of the QR factors (left = Q_l R_l, right^T = Q_r R_r); the nonzero
    eigenvalues of a square A are those of the d x d product right @ left; Frobenius norms,
    traces and inner products come from d x d products too. In the spirit of TransformerLens'
    FactoredMatrix.
"""

from functools import cached_property

import numpy as np


def _t(a: np.ndarray) -> np.ndarray:
    return np.swapaxes(a, -1, -2)


def r_factor(tall: np.ndarray) -> np.ndarray:
    """An R with R^T R = tall^T tall for (a stack of) tall matrices: (..., n, d) -> (..., d, d).

    The Cholesky factor of the d x d Gram matrix (ten times faster than a QR of n x d in
    float64; its error grows with the squared condition number, which float64 absorbs for any
    trained head); a rank-deficient factor falls back to Householder QR.
    """
    tall = np.asarray(tall, dtype=np.float64)
    try:
        return _t(np.linalg.cholesky(_t(tall) @ tall))
    except np.linalg.LinAlgError:
        return np.linalg.qr(tall, mode="r")


class FactoredMatrix:
    def __init__(self, left: np.ndarray, right: np.ndarray):
        if left.shape[-1] != right.shape[-2]:
            raise ValueError(f"inner dimensions differ: {left.shape} @ {right.shape}")
        self.left = np.asarray(left, dtype=np.float64)
        self.right = np.asarray(right, dtype=np.float64)
        # Distinct right factors and which one each product uses (set by `grouped`).
        self._distinct_right, self._groups = None, None

    @classmethod
    def grouped(cls, left: np.ndarray, right: np.ndarray, groups) -> "FactoredMatrix":
        """The stack left[i] @ right[groups[i]]: products that share right factors.

        Grouped-query attention: many query heads read one key/value head, so the R factor
        of each distinct right factor is computed once and shared by its group.
        """
        groups = np.asarray(groups)
        matrix = cls(left, np.asarray(right)[groups])
        matrix._distinct_right, matrix._groups = np.asarray(right, dtype=np.float64), groups
        return matrix

    @property
    def shape(self):
        return self.left.shape[:-1] + self.right.shape[-1:]

    def __getitem__(self, index) -> "FactoredMatrix":
        """One product (or a sub-stack) of a stack."""
        if self._groups is None:
            return FactoredMatrix(self.left[index], self.right[index])
        groups = self._groups[index]
        used = np.unique(groups)  # only the right factors the sub-stack reads (a NaN one left out stays out)
        return FactoredMatrix.grouped(self.left[index], self._distinct_right[used], np.searchsorted(used, groups))

    def _r_right(self) -> np.ndarray:
        """R factors of right^T, once per distinct right factor."""
        if self._groups is None:
            return r_factor(_t(self.right))
        return r_factor(_t(self._distinct_right))[self._groups]

    @cached_property
    def core(self) -> np.ndarray:
        """R_l R_r^T: the same nonzero singular values as A, d x d."""
        return r_factor(self.left) @ _t(self._r_right())

    @cached_property
    def singular_values(self) -> np.ndarray:
        return np.linalg.svd(self.core, compute_uv=False)

    @cached_property
    def right_left(self) -> np.ndarray:
        """right @ left (d x d; TransformerLens' BA): the nonzero spectrum of a square A."""
        return self.right @ self.left

    @cached_property
    def eigenvalues(self) -> np.ndarray:
        """Nonzero-spectrum eigenvalues of the square A, by |lambda| descending (complex)."""
        if self.shape[-2] != self.shape[-1]:
            raise ValueError("eigenvalues need a square product")
        eigs = np.linalg.eigvals(self.right_left)
        return np.take_along_axis(eigs, np.argsort(-np.abs(eigs), axis=-1, kind="stable"), axis=-1)

    @cached_property
    def frobenius_norm(self):
        return np.linalg.norm(self.core, axis=(-2, -1))

    def trace_of_square(self):
        """tr(A A) = tr((right @ left)^2)."""
        return np.sum(self.right_left * _t(self.right_left), axis=(-2, -1))

    def asymmetry(self):
        """||A - A^T||_F / ||A||_F = sqrt(2 ||A||^2 - 2 tr(A A)) / ||A||."""
        norm2 = self.frobenius_norm**2
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(np.maximum(0.0, 2 * norm2 - 2 * self.trace_of_square())) / np.sqrt(norm2)

    def gram(self) -> np.ndarray:
        """<A_i, A_j>_F for every pair of a stack (N x N): sum((L_i^T L_j) * (R_i R_j^T))."""
        left = np.einsum("ind,jne->ijde", self.left, self.left)
        right = np.einsum("idm,jem->ijde", self.right, self.right)
        return np.einsum("ijde,ijde->ij", left, right)

    def dense(self) -> np.ndarray:
        """The materialised product (tests and small examples only)."""
        return self.left @ self.right
