"""Per-unit tensor Parquet: lossless, streaming, plain.

Schema (one row per chunk of whole rows of one tensor, in tensor order):
    param_name string, dtype string (safetensors spelling), shape list<int64>,
    chunk int32, row_start int64, data binary (raw little-endian bytes, C order).
Concatenating a tensor's `data` in chunk order and viewing it as `dtype` with `shape`
gives the stored tensor bit for bit; pandas, pyarrow and duckdb read the file as is.
"""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from blockscope.errors import BlockscopeError
from blockscope.io.atomic import atomic_path
from blockscope.io.dtypes import numpy_dtype
from blockscope.io.safetensors_file import array_checksum, origin, read_header, tensor_view
from blockscope.io.tables import arrow_array, reading, records
from blockscope.layout import INVENTORY

SCHEMA = pa.schema([
    ("param_name", pa.string()),
    ("dtype", pa.string()),
    ("shape", pa.list_(pa.int64())),
    ("chunk", pa.int32()),
    ("row_start", pa.int64()),
    ("data", pa.binary()),
])
CHUNK_BYTES = 8 * 2**20
WRITER_OPTIONS = dict(
    compression="zstd",
    compression_level=3,
    use_dictionary=["param_name", "dtype"],
    write_statistics=["param_name", "chunk", "row_start"],
    data_page_size=CHUNK_BYTES,
    store_schema=False,  # the Arrow schema blob would add ~1 KiB to every file
    write_page_index=False,
)


def _chunks(array: np.ndarray, chunk_bytes: int):
    """(row_start, bytes) pieces of whole leading-axis rows, each about chunk_bytes."""
    if array.ndim == 0:
        yield 0, array.tobytes()
        return
    row_bytes = max(1, array.nbytes // max(1, array.shape[0]))
    step = max(1, chunk_bytes // row_bytes)
    for start in range(0, max(1, array.shape[0]), step):
        yield start, np.ascontiguousarray(array[start:start + step]).tobytes()


def write_unit(tensors, target, chunk_bytes: int = CHUNK_BYTES):
    """Stream (name, dtype_name, array) triples into one Parquet file, atomically.

    Arrays may be memory-mapped: only one chunk is in memory at a time.
    Returns the number of tensor bytes written.
    """
    total = 0
    with atomic_path(target) as tmp:
        with pq.ParquetWriter(tmp, SCHEMA, **WRITER_OPTIONS) as writer:
            for name, dtype_name, array in tensors:
                for chunk, (row_start, data) in enumerate(_chunks(array, chunk_bytes)):
                    row = {"param_name": name, "dtype": dtype_name, "shape": list(array.shape), "chunk": chunk,
                           "row_start": row_start, "data": data}
                    writer.write_table(pa.Table.from_arrays(
                        [arrow_array(field.type, [row[field.name]]) for field in SCHEMA], schema=SCHEMA))
                total += array.nbytes
    return total


def extract_unit(checkpoint, inventory_rows, target, model=None, inventory=None):
    """Write one unit's tensors from a canonical checkpoint folder, reading only that unit
    (inventory_rows: a DataFrame or row dicts; inventory: the inventory's path, for the fix).

    Each file's header is checked again (read_header) before its bytes are read, and each
    tensor's bytes against the checksum the inventory recorded: a checkpoint edited in place
    since the inventory (its mtime restored or not) is refused, never mixed into one model's
    results, and the target is not written."""
    headers = {}

    def changed(path, what):
        rebuild = inventory or (INVENTORY.format(model=model) if model else "the model's inventory.parquet")
        return BlockscopeError(f"{what}: the checkpoint changed since the inventory", model=model,
                               path=origin(path)[0],
                               fix=f"delete {rebuild} and rerun, so that the whole model is recomputed from the "
                                   "current file")

    def tensors():
        for row in records(inventory_rows):
            name, dtype, shape = row["param_name"], row["dtype"], list(row["shape"])
            path = Path(checkpoint) / row["file"]
            if path not in headers:
                headers[path] = read_header(path, model=model)
            info = headers[path].get(name)
            if info is None or info.dtype != dtype or list(info.shape) != shape:
                raise changed(path, f"tensor {name!r} is not what the inventory recorded ({dtype} {shape})")
            view = tensor_view(path, info)
            recorded = row.get("checksum")  # absent or null in an inventory written before checksums
            if isinstance(recorded, str) and (found := array_checksum(view)) != recorded:
                raise changed(path, f"tensor {name!r} does not hold the bytes the inventory recorded (checksum "
                                    f"{found}, recorded {recorded})")
            yield name, dtype, view

    return write_unit(tensors(), target)


class _Assembly:
    """One tensor's chunks as zero-copy views of Arrow's memory, joined by one copy at the end
    (a single-chunk tensor stays a read-only view)."""

    def __init__(self, name, dtype_name, shape):
        self.name, self.dtype, self.shape, self.pieces = name, numpy_dtype(dtype_name), tuple(shape), []

    def array(self) -> np.ndarray:
        data = self.pieces[0] if len(self.pieces) == 1 else np.concatenate(self.pieces)
        return data.view(self.dtype).reshape(self.shape)


def _row_group_name(parquet, index):
    stats = parquet.metadata.row_group(index).column(0).statistics
    if stats is None or not stats.has_min_max or stats.min != stats.max:
        return None
    return stats.min


def iter_unit(path, names=None):
    """Yield (param_name, array) one tensor at a time; memory holds one tensor. A damaged file
    raises the one-line error that names it and the fix (tables.damaged)."""
    with reading(path):
        yield from _iter_unit(path, names)


def _iter_unit(path, names):
    parquet = pq.ParquetFile(path)
    wanted = None if names is None else set(names)
    current = None
    for index in range(parquet.num_row_groups):
        group_name = _row_group_name(parquet, index)
        if wanted is not None and group_name is not None and group_name not in wanted:
            continue  # each row group holds one chunk of one tensor: skip without reading it
        group = parquet.read_row_group(index)
        data = group.column("data")
        for row, name in enumerate(group.column("param_name").to_pylist()):
            if wanted is not None and name not in wanted:
                continue
            if current is None or name != current.name:
                if current is not None:
                    yield current.name, current.array()
                current = _Assembly(name, group.column("dtype")[row].as_py(), group.column("shape")[row].as_py())
            current.pieces.append(np.frombuffer(data[row].as_buffer(), np.uint8))
    if current is not None:
        yield current.name, current.array()


def read_unit(path, names=None) -> dict:
    """The documented way to read a unit back: {param_name: numpy array in the source dtype}.

    bfloat16 and float8 arrays use ml_dtypes. `names` restricts what is read.
    """
    return dict(iter_unit(path, names))


def unit_names(path) -> list:
    """Parameter names in a unit file, without reading tensor bytes."""
    table = pq.read_table(path, columns=["param_name", "chunk"])
    names = table.column("param_name").to_pylist()
    return list(dict.fromkeys(names))
