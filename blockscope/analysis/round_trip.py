"""Precision round trips for the precision sweep: a matrix rounded to a precision (fp64 ... fp8)
and back, whole (cast_round_trip) or as it is read (RoundTrip, a block at a time for the Gram
path); which stored dtypes a precision holds exactly, and the dtype each precision's SVD runs in."""

import ml_dtypes
import numpy as np

from blockscope.analysis.gram import gram_block_rows
from blockscope.io.dtypes import precision_dtype

# Formats with a small range are used with a per-tensor scale (amax -> format max), as FP8
# inference does; the others are cast as they are.
SCALED_PRECISIONS = {"fp8-e4m3": float(ml_dtypes.finfo(ml_dtypes.float8_e4m3fn).max)}


# A round trip through a precision changes no value of a tensor stored in these dtypes: every
# value of the stored format is a value of the precision's (the precision sweep then reuses the
# spectra's singular values without casting).
EXACT_ROUND_TRIPS = {
    "fp64": {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"},
    "fp32": {"F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"},
    "fp16": {"F16", "F8_E4M3", "F8_E5M2"},
    "bf16": {"BF16", "F8_E4M3", "F8_E5M2"},
}


def round_trip_is_exact(stored_dtype: str, precision: str) -> bool:
    """True when every value stored as `stored_dtype` (safetensors spelling) survives a round trip
    through `precision` unchanged (EXACT_ROUND_TRIPS)."""
    return stored_dtype in EXACT_ROUND_TRIPS.get(precision, ())


def svd_dtype(precision: str, compute_dtype) -> np.dtype:
    """The dtype a precision's SVD runs in: the wider of `compute_dtype` and the precision's own
    compute type (float64 for fp64, float32 for every narrower format). fp64 is thus measured in
    float64 whatever compute_dtype says; fp32 and below run in compute_dtype, as the spectra do."""
    natural = np.float64 if precision == "fp64" else np.float32
    return np.promote_types(natural, np.dtype(compute_dtype))


def round_trip_scale(matrix, precision: str) -> float:
    """The per-tensor scale of a SCALED_PRECISIONS format (amax / format max; 1.0 for the others,
    for a zero matrix and for a non-finite amax)."""
    if precision not in SCALED_PRECISIONS or not matrix.size:
        return 1.0
    amax = max(float(np.max(matrix)), -float(np.min(matrix)))  # no |matrix| copy; NaN stays NaN
    return amax / SCALED_PRECISIONS[precision] if amax > 0 and np.isfinite(amax) else 1.0


def cast_round_trip(matrix: np.ndarray, precision: str, compute_dtype, scale: float | None = None) -> np.ndarray:
    """The matrix rounded to `precision` and back, in `compute_dtype`. Rounding starts from the
    matrix as given (read it in float64 and the fp64 round trip keeps every bit); the result is
    then held in compute_dtype (see svd_dtype for the dtype each precision needs). scale: the
    whole tensor's round_trip_scale, for a caller that rounds it a block at a time."""
    matrix = np.asarray(matrix)
    if matrix.dtype.kind != "f":
        matrix = matrix.astype(np.float64)
    compute_dtype = np.dtype(compute_dtype).type
    scale = round_trip_scale(matrix, precision) if scale is None else scale
    scaled = matrix / matrix.dtype.type(scale) if scale != 1.0 else matrix
    with np.errstate(over="ignore"):  # values beyond the format's range become inf: the verdict reports it
        rounded = scaled.astype(precision_dtype(precision)).astype(compute_dtype)
    return rounded * compute_dtype(scale) if scale != 1.0 else rounded


class RoundTrip:
    """A matrix rounded to `precision` and back in `dtype` (cast_round_trip), rounded as it is
    read: indexing rounds what it selects (rounding is elementwise, so it commutes with any slice
    and with the transpose), np.asarray rounds it all. The Gram path reads it a block at a time,
    so the precision sweep never holds a rounded copy of a large matrix."""

    def __init__(self, source: np.ndarray, precision: str, dtype, scale: float | None = None):
        self.source, self.precision, self.dtype = source, precision, np.dtype(dtype)
        self.scale = round_trip_scale(source, precision) if scale is None else scale
        self.shape, self.size = source.shape, source.size

    @property
    def T(self):
        return RoundTrip(self.source.T, self.precision, self.dtype, self.scale)

    def __getitem__(self, key) -> np.ndarray:
        return cast_round_trip(self.source[key], self.precision, self.dtype, self.scale)

    def __array__(self, dtype=None, copy=None):
        if copy is False:
            raise ValueError("a RoundTrip is rounded on demand: it has no array to share without a copy")
        rounded = self[...]
        return rounded if dtype is None else rounded.astype(dtype)

    def row_blocks(self):
        """(source block, rounded block) pairs over blocks of rows, gram.GRAM_BLOCK_ENTRIES each."""
        rows = gram_block_rows(self.shape[1])
        for start in range(0, self.shape[0], rows):
            yield self.source[start:start + rows], self[start:start + rows]
