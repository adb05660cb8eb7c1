"""A lazy view of safetensors files: headers parsed by hand, tensors memory-mapped on demand.

The format is an 8-byte little-endian header length, a JSON header, then the raw bytes.
Reading it ourselves keeps inventory free of tensor I/O and gives numpy views for every
dtype safetensors knows (bfloat16 and float8 through ml_dtypes), without torch.
"""

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dtypes import numpy_dtype
from .errors import BlockscopeError

MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors spelling: F32, BF16, F16, F8_E4M3, I64, ...
    shape: tuple
    begin: int  # absolute byte offset in the file
    end: int
    file: str

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def read_header(path, model=None) -> dict:
    """Map tensor name -> TensorInfo, reading only the header; checks the file is complete."""
    path = Path(path)
    fix = "re-fetch the checkpoint (delete resources/models/<model> and rerun) or replace the file"
    size = path.stat().st_size
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise BlockscopeError("not a safetensors file (shorter than 8 bytes)", model=model, path=path, fix=fix)
        (length,) = struct.unpack("<Q", prefix)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise BlockscopeError(
                f"corrupt safetensors header (declares {length} header bytes in a {size}-byte file)",
                model=model, path=path, fix=fix)
        try:
            header = json.loads(fh.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BlockscopeError(f"corrupt safetensors header ({exc})", model=model, path=path, fix=fix) from None
    data_start = 8 + length
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = entry["data_offsets"]
            info = TensorInfo(name, entry["dtype"], tuple(entry["shape"]), data_start + begin, data_start + end, path.name)
        except (KeyError, TypeError, ValueError):
            raise BlockscopeError(f"corrupt safetensors header entry for {name!r}", model=model, path=path, fix=fix) from None
        if info.end > size:
            raise BlockscopeError(
                f"truncated safetensors file: tensor {name!r} ends at byte {info.end} but the file has {size}",
                model=model, path=path, fix=fix)
        tensors[name] = info
    return tensors


def tensor_view(path, info: TensorInfo) -> np.ndarray:
    """A read-only memory-mapped numpy view of one tensor in its stored dtype."""
    dtype = numpy_dtype(info.dtype)
    count = int(np.prod(info.shape, dtype=np.int64))
    if count == 0:
        return np.zeros(info.shape, dtype=dtype)
    flat = np.memmap(path, dtype=dtype, mode="r", offset=info.begin, shape=(count,))
    return flat.reshape(info.shape)


def checkpoint_files(folder) -> list:
    """The *.safetensors files of a canonical checkpoint, sorted."""
    return sorted(Path(folder).glob("*.safetensors"))
