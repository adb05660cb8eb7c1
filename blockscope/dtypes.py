"""Dtype names across safetensors, numpy (with ml_dtypes) and torch."""

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


def numpy_dtype(name: str) -> np.dtype:
    """numpy dtype for a safetensors dtype name (or a numpy name such as 'bfloat16')."""
    if name in SAFETENSORS_TO_NUMPY:
        return SAFETENSORS_TO_NUMPY[name]
    if name in NUMPY_TO_SAFETENSORS:
        return SAFETENSORS_TO_NUMPY[NUMPY_TO_SAFETENSORS[name]]
    raise ValueError(f"unsupported tensor dtype {name!r}")


def safetensors_dtype(dtype) -> str:
    return NUMPY_TO_SAFETENSORS[np.dtype(dtype).name]

