"""What an update dW = W - W_base is, from its singular values: norms, ranks above the rounding
level of the stored formats, heavy-tail fits of the part above it, and the status saying why a
number is missing. One formula, one function; docs/metrics.md "Deltas, adapters and distances"
gives each with its source.

The rounding level: a stored weight is its exact value rounded to the format, an error of at most
half an ulp, u |w| with u = eps / 2 the format's unit roundoff. dW therefore carries noise whose
entries have standard deviations s_ij <= sqrt(u^2 w_ij^2 + u_base^2 b_ij^2) (both matrices rounded,
each in its own format). The spectral norm of such a noise matrix is at most about the largest row
norm plus the largest column norm of s (Latala 2005; Bandeira & van Handel 2016), which for equal
entries is the Marchenko-Pastur edge s (sqrt(rows) + sqrt(cols)) that
matrix_formulas.rounding_noise_rank uses for one matrix. The level is that edge times
ROUNDING_SAFETY; singular values of dW above it are the update, those below it rounding.
"""

import ml_dtypes
import numpy as np

from blockscope.analysis import heavytail as ht
from blockscope.analysis import matrix_formulas as mx
from blockscope.io.dtypes import numpy_dtype
from blockscope.layout import energy_column
from blockscope.pair_layout import (
    DELTA_BELOW_ROUNDING,
    DELTA_CHANGED,
    DELTA_ENERGY_FRACTIONS,
    DELTA_METRIC_COLUMNS,
    DELTA_NO_TAIL,
    DELTA_UNCHANGED,
)

# The edge above assumes errors of the largest size a rounding can make (half an ulp at the bottom
# of a binade); typical errors are 0.42 u |w| in rms, and measured rounding noise of bf16, fp16 and
# fp32 matrices (16 x 16 to 1024 x 512, uneven row and column scales) stayed under 0.41 of the edge.
# Errors of exactly u |w| with random signs reach the edge itself (1.01 at 16 x 16); 1.25 covers
# that worst case with the top singular value's finite-size fluctuation above the edge.
ROUNDING_SAFETY = 1.25
EPS64 = float(np.finfo(np.float64).eps)
ROW_BLOCK_ENTRIES = 1 << 20  # entries upcast to float64 at a time by squared_row_col_sums


def _finfo(dtype):
    return ml_dtypes.finfo(numpy_dtype(dtype) if isinstance(dtype, str) else np.dtype(dtype))


def unit_roundoff(dtype) -> float:
    """u = eps / 2 of a stored floating format (safetensors or numpy name, or a numpy dtype):
    F64 2^-53, F32 2^-24, F16 2^-11, BF16 2^-8, F8_E4M3 2^-4. A dequantised GGUF tensor is stored
    as F32, so its u is float32's: the level knows the stored format, not an earlier quantisation."""
    return float(_finfo(dtype).eps) / 2


def subnormal_rounding(dtype) -> float:
    """Half the smallest subnormal: the rounding error of a value too small for u |w| to bound it
    (F16 2^-25; 2^-134 and less for BF16, F32, F64)."""
    return float(_finfo(dtype).smallest_subnormal) / 2


def rounding_variances(matrix, dtype) -> tuple:
    """Per row and per column, sum of s_ij^2 = u^2 m_ij^2 + (subnormal_rounding)^2: the largest
    variance the rounding of each stored entry can have (|error| <= max(u |m|, subnormal_rounding))."""
    u, floor = unit_roundoff(dtype), subnormal_rounding(dtype)
    rows, cols = squared_row_col_sums(matrix)
    return u**2 * rows + floor**2 * len(cols), u**2 * cols + floor**2 * len(rows)


def squared_row_col_sums(matrix) -> tuple:
    """(sum_j m_ij^2 per row, sum_i m_ij^2 per column) in float64, a block of rows at a time."""
    matrix = np.asarray(matrix)
    rows = np.zeros(matrix.shape[0])
    cols = np.zeros(matrix.shape[1])
    step = max(1, ROW_BLOCK_ENTRIES // max(1, matrix.shape[1]))
    for start in range(0, matrix.shape[0], step):
        block = np.square(matrix[start:start + step], dtype=np.float64)
        rows[start:start + step] = block.sum(axis=1)
        cols += block.sum(axis=0)
    return rows, cols


def noise_edge(row_variances: np.ndarray, col_variances: np.ndarray) -> float:
    """max_i sqrt(sum_j s_ij^2) + max_j sqrt(sum_i s_ij^2): the spectral-norm scale of a noise matrix
    with independent entries of standard deviations s_ij, from the sums of s_ij^2 per row and per
    column; s (sqrt(cols) + sqrt(rows)), the Marchenko-Pastur edge, when every s_ij = s."""
    if not row_variances.size or not col_variances.size:
        return 0.0
    return float(np.sqrt(row_variances.max()) + np.sqrt(col_variances.max()))


def rounding_level(w, w_base, dtype, base_dtype) -> float:
    """The spectral norm the storage rounding of W (in `dtype`) and W_base (in `base_dtype`) can put
    into dW = W - W_base: ROUNDING_SAFETY * noise_edge of the rounding variances of both (s_ij^2 =
    u^2 w_ij^2 + u_base^2 b_ij^2, and the subnormal terms)."""
    rows, cols = rounding_variances(w, dtype)
    base_rows, base_cols = rounding_variances(w_base, base_dtype)
    return ROUNDING_SAFETY * noise_edge(rows + base_rows, cols + base_cols)


def rank_tolerance(sigma: np.ndarray, level: float, rows: int, cols: int) -> float:
    """The rounding level, or the float64 SVD's own resolution max(rows, cols) eps64 sigma_max
    (numpy.linalg.matrix_rank's rule) where that is larger: only F64-stored weights get there."""
    top = float(sigma[0]) if sigma.size else 0.0
    return max(float(level), max(rows, cols) * EPS64 * top)


def above_level(sigma: np.ndarray, tolerance: float) -> np.ndarray:
    """The singular values of dW above the tolerance, descending: the update, not its rounding."""
    sigma = np.sort(np.asarray(sigma, np.float64))[::-1]
    return sigma[sigma > tolerance]


def relative_change(delta_frobenius: float, base_frobenius: float) -> float:
    """||dW||_F / ||W_base||_F (NaN for a zero base)."""
    return float(delta_frobenius / base_frobenius) if base_frobenius > 0 else float("nan")


def scale_free_eigenvalues(kept: np.ndarray) -> np.ndarray:
    """lambda = sigma^2 of the kept singular values over their smallest: the power-law fits are
    scale-free, and heavytail's absolute floor (1e-5, made for weights of order 1) would otherwise
    drop a small update's whole spectrum."""
    eigs = np.asarray(kept, np.float64) ** 2
    return eigs / eigs.min() if eigs.size else eigs


def delta_alpha(kept: np.ndarray) -> float:
    """WeightWatcher's KS-optimal power-law alpha (heavytail.powerlaw_fit) of dW's eigenvalues above
    the level; NaN under heavytail.MIN_EIGENVALUES of them."""
    return ht.powerlaw_fit(scale_free_eigenvalues(kept)).alpha


def delta_alpha_hill(kept: np.ndarray, hill_fraction: float) -> float:
    """heavytail.alpha_hill of dW's eigenvalues above the level, k = hill_k(their count, hill_fraction)."""
    return ht.alpha_hill(scale_free_eigenvalues(kept), ht.hill_k(kept.size, hill_fraction))


def rank_metrics(kept: np.ndarray) -> dict:
    """delta_numerical_rank, effective, stable and energy ranks of the singular values above the
    level (all 0 when none is)."""
    if not kept.size:
        return {"delta_numerical_rank": 0, "delta_effective_rank": 0.0, "delta_stable_rank": 0.0,
                **{energy_column(f, "delta_"): 0 for f in DELTA_ENERGY_FRACTIONS}}
    return {"delta_numerical_rank": int(kept.size), "delta_effective_rank": mx.effective_rank(kept),
            "delta_stable_rank": mx.stable_rank(kept),
            **{energy_column(f, "delta_"): mx.energy_rank(kept, f) for f in DELTA_ENERGY_FRACTIONS}}


def delta_metrics(sigma, *, frobenius: float, level: float, base_frobenius: float, rows: int, cols: int,
                  hill_fraction: float = 0.1) -> dict:
    """Every DELTA_METRIC_COLUMNS value of an update from its singular values (any order), its
    Frobenius norm, the rounding level and ||W_base||_F, with `status` and `note`. An update whose
    singular values are all 0 is DELTA_UNCHANGED (an adapter whose B A = 0)."""
    sigma = np.sort(np.asarray(sigma, np.float64))[::-1]
    spectral = float(sigma[0]) if sigma.size else 0.0
    if spectral == 0:
        return {**unchanged_metrics(level, base_frobenius), "note": "the update is exactly zero"}
    kept = above_level(sigma, rank_tolerance(sigma, level, rows, cols))
    out = {"delta_frobenius": float(frobenius), "delta_spectral_norm": spectral,
           "relative_change": relative_change(frobenius, base_frobenius), **rank_metrics(kept),
           "delta_alpha": float("nan"), "delta_alpha_hill": float("nan"), "rounding_level": float(level),
           "base_frobenius": float(base_frobenius)}
    if spectral <= level:
        note = f"the change is at the level of the format's rounding: ||dW||_2 = {spectral:.3g} <= {level:.3g}"
        return {**out, "status": DELTA_BELOW_ROUNDING, "note": note}
    if kept.size < ht.MIN_EIGENVALUES:
        return {**out, "status": DELTA_NO_TAIL,
                "note": f"{kept.size} singular values above the rounding level; a tail fit needs {ht.MIN_EIGENVALUES}"}
    out.update(delta_alpha=delta_alpha(kept), delta_alpha_hill=delta_alpha_hill(kept, hill_fraction))
    return {**out, "status": DELTA_CHANGED, "note": ""}


def unchanged_metrics(level: float, base_frobenius: float) -> dict:
    """The metrics of dW = 0 (bit-identical matrices, found without an SVD): norms and ranks 0,
    the tail fits NaN, status DELTA_UNCHANGED."""
    out = dict.fromkeys(DELTA_METRIC_COLUMNS, 0.0)
    out.update(rank_metrics(np.zeros(0)), relative_change=relative_change(0.0, base_frobenius),
               delta_alpha=float("nan"), delta_alpha_hill=float("nan"), rounding_level=float(level),
               base_frobenius=float(base_frobenius))
    return {**out, "status": DELTA_UNCHANGED, "note": ""}


def missing_metrics() -> dict:
    """Every delta metric NaN (a pair that could not be compared: its status says why)."""
    return dict.fromkeys(DELTA_METRIC_COLUMNS, float("nan"))
