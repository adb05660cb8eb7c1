"""A lazy view of safetensors files: headers parsed by hand, tensors memory-mapped on demand.

The format is an 8-byte little-endian header length, a JSON header, then the raw bytes.
Reading it ourselves keeps inventory free of tensor I/O and gives numpy views for every
dtype safetensors knows (bfloat16 and float8 through ml_dtypes), without torch.

The header is checked against the file before any tensor byte is read: a header that claims
more bytes than a tensor has, or two tensors sharing bytes, would otherwise give a matrix made
of its neighbours' bytes (the safetensors library rejects such files too).

Each tensor also gets a checksum of a fixed sample of its bytes: the inventory records it and
extraction recomputes it from the bytes it reads, so a file edited in place after the inventory
is refused instead of mixed into one model's results.
"""

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blockscope.errors import BlockscopeError
from blockscope.io.dtypes import SAFETENSORS_TO_NUMPY, numpy_dtype

MAX_HEADER_BYTES = 100 * 1024 * 1024
# dtypes of the safetensors format (0.8) that blockscope.io.dtypes has no numpy type for.
FORMAT_ONLY_DTYPES = ("U16", "U32", "U64", "C64", "F4", "F6_E2M3", "F6_E3M2", "F8_E8M0", "F8_E4M3FNUZ",
                      "F8_E5M2FNUZ")
# A canonical checkpoint's provenance file, written by fetch beside the weights.
SOURCE_JSON = "source.json"
# The checksum's sample: a tensor of up to 64 KiB whole, a larger one in 32 blocks of 2 KiB spread
# evenly from its first byte to its last, so the inventory reads 64 KiB per tensor at most.
SAMPLE_BLOCKS, SAMPLE_BLOCK_BYTES = 32, 2048


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


def origin(path) -> tuple:
    """(the path to name in an error, the fix) for a file of a checkpoint.

    An `hf` source's files are links into the shared Hugging Face cache: errors name the file
    in the cache's snapshot and ask to remove that revision from the cache before fetching again.
    A `local` source's files live in the user's folder (the weights are symlinked, config.json
    is copied): errors name the user's file and ask to replace or repair it, since fetching
    again would only link the same bytes. A file that fetch wrote itself (gguf, synthetic, hf before the cache)
    is fetched again by deleting the checkpoint folder.
    """
    path = Path(path)
    folder = path.parent
    try:
        source = json.loads((folder / SOURCE_JSON).read_text())
    except (OSError, ValueError):
        source = None
    if isinstance(source, dict) and source.get("source") == "local" and source.get("path"):
        shown = Path(source["path"]) / path.name
    elif isinstance(source, dict) and source.get("source") == "hf" and source.get("snapshot"):
        # linked into the shared Hugging Face cache: fetching again would link the same bytes
        shown = Path(source["snapshot"]) / path.name
        return shown, (f"remove the revision from the Hugging Face cache (hf cache rm {source.get('commit')}), "
                       f"delete {folder} and rerun the workflow with network access to download it again")
    elif source is not None:  # fetched (gguf, synthetic, an older hf fetch): fetching again rewrites it
        return path, f"delete {folder} and rerun the workflow to fetch it again"
    else:  # a folder blockscope did not fetch: the file itself, where a symlink leads
        shown = path.resolve() if path.is_symlink() else path
    return shown, f"replace or repair {shown}"


def _is_count(value) -> bool:
    """A non-negative integer (JSON true/false are not counts)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _dims(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def read_header(path, model=None) -> dict:
    """Map tensor name -> TensorInfo, reading only the header; checks the header against the file.

    Every failure is a BlockscopeError naming the model, the file (the user's file for a local
    source, not the symlink), the tensor and a fix.
    """
    path = Path(path)
    shown, fix = origin(path)

    def fail(what, remedy=fix):
        return BlockscopeError(what, model=model, path=shown, fix=remedy)

    if not path.exists():  # a dangling symlink: the user's file was moved or deleted
        raise fail("the safetensors file is missing")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise fail("not a safetensors file (shorter than 8 bytes)")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise fail(f"corrupt safetensors header (declares {length} header bytes in a {size}-byte file)")
        try:
            header = json.loads(fh.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise fail(f"corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise fail(f"corrupt safetensors header (a JSON {type(header).__name__}, not an object of tensors)")
    data_start, data_size = 8 + length, size - 8 - length
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise fail("corrupt safetensors header (__metadata__ is not a map of strings)")
            continue
        tensors[name] = _tensor_info(name, entry, data_start, data_size, path.name, fail)
    _check_no_overlap(tensors, data_start, fail)
    return tensors


def _tensor_info(name, entry, data_start, data_size, file, fail) -> TensorInfo:
    """One header entry, checked: types, a known dtype, its byte range inside the data section
    and exactly as long as its shape and dtype say."""
    where = f"corrupt safetensors header: tensor {name!r}"
    if not isinstance(entry, dict):
        raise fail(f"{where} is a JSON {type(entry).__name__}, not an object with dtype, shape and data_offsets")
    missing = [key for key in ("dtype", "shape", "data_offsets") if key not in entry]
    if missing:
        raise fail(f"{where} lacks {' and '.join(missing)}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str):
        raise fail(f"{where} has dtype {dtype!r}, not a string")
    if dtype in FORMAT_ONLY_DTYPES:  # a valid file, in a number format blockscope cannot read yet
        raise fail(f"tensor {name!r} is stored as {dtype}, which blockscope cannot read "
                   f"(it reads {', '.join(SAFETENSORS_TO_NUMPY)})",
                   f"convert the file's {dtype} tensors to one of those")
    if dtype not in SAFETENSORS_TO_NUMPY:
        raise fail(f"{where} has the unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise fail(f"{where} has shape {shape!r}, not a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise fail(f"{where} has data_offsets {offsets!r}, not two non-negative integers")
    begin, end = offsets
    if begin > end:
        raise fail(f"{where} has data_offsets [{begin}, {end}] that end before they begin")
    if end > data_size:
        raise fail(f"truncated safetensors file: tensor {name!r} ends at byte {data_start + end} "
                   f"but the file has {data_start + data_size}")
    expected = math.prod(shape) * numpy_dtype(dtype).itemsize
    if end - begin != expected:
        raise fail(f"{where} claims shape {_dims(shape)} of {dtype} ({expected} bytes) "
                   f"but its data_offsets span {end - begin} bytes")
    return TensorInfo(name, dtype, tuple(shape), data_start + begin, data_start + end, file)


def _check_no_overlap(tensors: dict, data_start: int, fail):
    """No two tensors share a byte (ranges sorted by where they begin)."""
    ranges = sorted((info.begin, info.end, name) for name, info in tensors.items() if info.end > info.begin)
    for (_, end_a, a), (begin_b, _, b) in zip(ranges, ranges[1:]):
        if begin_b < end_a:
            raise fail(f"corrupt safetensors header: tensors {a!r} and {b!r} overlap "
                       f"(data bytes {begin_b - data_start} to {end_a - data_start} belong to both)")


def tensor_view(path, info: TensorInfo) -> np.ndarray:
    """A read-only memory-mapped numpy view of one tensor in its stored dtype."""
    dtype = numpy_dtype(info.dtype)
    count = int(np.prod(info.shape, dtype=np.int64))
    if count == 0:
        return np.zeros(info.shape, dtype=dtype)
    flat = np.memmap(path, dtype=dtype, mode="r", offset=info.begin, shape=(count,))
    return flat.reshape(info.shape)


def sample_ranges(nbytes: int) -> list:
    """(start, length) of the byte ranges of a tensor that its checksum covers."""
    if nbytes <= SAMPLE_BLOCKS * SAMPLE_BLOCK_BYTES:
        return [(0, nbytes)]
    last = nbytes - SAMPLE_BLOCK_BYTES
    return [(i * last // (SAMPLE_BLOCKS - 1), SAMPLE_BLOCK_BYTES) for i in range(SAMPLE_BLOCKS)]


def sample_checksum(read, nbytes: int) -> str:
    """blake2b-64 (hex) of a tensor's length and its sampled bytes; read(start, length) returns
    the tensor's bytes from `start` (the file for the inventory, the memory map for extraction)."""
    digest = hashlib.blake2b(nbytes.to_bytes(8, "little"), digest_size=8)
    for start, length in sample_ranges(nbytes):
        digest.update(read(start, length))
    return digest.hexdigest()


def file_checksums(path, tensors: dict) -> dict:
    """Tensor name -> sample_checksum of each TensorInfo in `tensors` (read_header's map), read
    from the file with one positioned read per block (a memory map would read ahead around each)."""
    with open(path, "rb") as fh:
        def reader(info):
            return lambda start, length: os.pread(fh.fileno(), length, info.begin + start)

        return {name: sample_checksum(reader(info), info.nbytes) for name, info in tensors.items()}


def array_checksum(array: np.ndarray) -> str:
    """sample_checksum of an array's bytes in C order (a tensor_view: only the sampled pages are read)."""
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    return sample_checksum(lambda start, length: flat[start:start + length].tobytes(), flat.size)


def checkpoint_files(folder) -> list:
    """The *.safetensors files of a canonical checkpoint, sorted."""
    return sorted(Path(folder).glob("*.safetensors"))
