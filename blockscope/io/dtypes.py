"""Number formats under their three spellings: safetensors (F32, BF16), numpy (float32,
bfloat16, through ml_dtypes) and the config's precision names (fp32, bf16, fp8-e4m3).
Every other module asks here."""

import ml_dtypes
import numpy as np

SAFETENSORS_TO_NUMPY = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
NUMPY_TO_SAFETENSORS = {v.name: k for k, v in SAFETENSORS_TO_NUMPY.items()}
# The precision sweep's names (config `precision.precisions`).
PRECISION_TO_SAFETENSORS = {"fp64": "F64", "fp32": "F32", "fp16": "F16", "bf16": "BF16", "fp8-e4m3": "F8_E4M3"}
# Compute dtypes of the SVD (config `compute_dtype`), numpy spelling.
COMPUTE_DTYPES = ("float32", "float64")


def numpy_dtype(name: str) -> np.dtype:
    """numpy dtype for a safetensors dtype name (or a numpy name such as 'bfloat16')."""
    if name in SAFETENSORS_TO_NUMPY:
        return SAFETENSORS_TO_NUMPY[name]
    if name in NUMPY_TO_SAFETENSORS:
        return SAFETENSORS_TO_NUMPY[NUMPY_TO_SAFETENSORS[name]]
    raise ValueError(f"unsupported tensor dtype {name!r}")


def safetensors_dtype(dtype) -> str:
    return NUMPY_TO_SAFETENSORS[np.dtype(dtype).name]


def precision_dtype(precision: str) -> np.dtype:
    """numpy dtype of a precision-sweep format (fp32, bf16, fp8-e4m3, ...)."""
    return SAFETENSORS_TO_NUMPY[PRECISION_TO_SAFETENSORS[precision]]


# GGUF integer quantisation: about one step of a block's range, by bits (Q8_0 is symmetric int8).
GGUF_STEPS = {"Q8": 1 / 127, "Q6": 1 / 63, "Q5": 1 / 31, "Q4": 1 / 15, "Q3": 1 / 7, "Q2": 1 / 3}


def relative_precision(source_dtype: str) -> float:
    """The relative rounding step of a stored format: machine epsilon for floating types (F16:
    2^-10, BF16: 2^-7), GGUF_STEPS for GGUF quant types (Q4_1: 1/15); NaN when unknown."""
    if source_dtype in SAFETENSORS_TO_NUMPY and source_dtype.startswith(("F", "BF")):
        return float(ml_dtypes.finfo(SAFETENSORS_TO_NUMPY[source_dtype]).eps)
    return GGUF_STEPS.get(source_dtype[:2], float("nan"))
