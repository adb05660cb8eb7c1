"""Flop counts of the operations a per-unit job runs (docs/metrics.md, "Cost model", gives each
with its source): an SVD by LAPACK gesdd, a Gram product, a symmetric eigensolve, one layer's
attention heads."""


def gesdd_flops(rows: int, cols: int) -> tuple:
    """(qr, bidiagonal) flops of LAPACK gesdd, singular values only, m x n with m >= n.

    Tall matrices (m >= 11 n / 6, LAPACK's MNTHR) are QR-factored first (2mn^2 - 2n^3/3,
    blocked, BLAS-3) and the n x n R is bidiagonalised (8n^3/3); others are bidiagonalised
    directly (4mn^2 - 4n^3/3, half BLAS-2). The bidiagonal singular values cost O(n^2).
    Golub & Van Loan, Matrix Computations (4th ed.), 5.2 and 8.6; LAPACK dgesdd."""
    m, n = max(rows, cols), min(rows, cols)
    if m * 6 >= n * 11:
        return 2 * m * n**2 - 2 * n**3 / 3, 8 * n**3 / 3
    return 0.0, 4 * m * n**2 - 4 * n**3 / 3


def gram_flops(rows: int, cols: int) -> float:
    """The n x n Gram matrix A^T A (n = the smaller side) as one GEMM: 2 m n^2."""
    m, n = max(rows, cols), min(rows, cols)
    return 2 * m * n**2


def eigh_flops(n: int) -> float:
    """Eigenvalues only of a symmetric n x n matrix: the tridiagonal reduction, 4 n^3 / 3
    (the tridiagonal eigenvalues cost O(n^2)). Golub & Van Loan, 8.3.1."""
    return 4 * n**3 / 3


def heads_flops(heads: int, kv_heads: int, head_dim: int, hidden: int) -> float:
    """One layer's QK and OV kernels through FactoredMatrix: per query head two d x d Gram
    products of D x d factors (2 D d^2 each) and the d x d product right @ left (2 D d^2); per
    key/value head two more Gram products; then ~30 d^3 of Cholesky, SVD and eigvals per head."""
    d, D = head_dim, hidden
    return heads * (6 * D * d**2 + 30 * d**3) + kv_heads * 4 * D * d**2
