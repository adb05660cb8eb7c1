"""Per-unit tables without pandas: rows in, an Arrow table out that pandas reads back exactly as if
it had written it. A per-unit job is a fresh process: importing pandas costs it about 0.25 CPU s
more than pyarrow alone, on every one of a model's hundreds of jobs.

Column types come from blockscope.layout (column_type); the table carries the pandas metadata
pandas itself writes (https://pandas.pydata.org/docs/development/developer.html, "Storing pandas
DataFrame objects in Apache Parquet format"), so pd.read_parquet gives Int64 for the nullable
integer columns and str for the text ones.

Read back, a damaged file (garbage, truncated, a page overwritten) raises one line naming the
model, the file and the fix (`damaged`), never a pyarrow traceback.
"""

import contextlib
import functools
import importlib.util
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from blockscope.errors import BlockscopeError
from blockscope.io.atomic import atomic_path
from blockscope.layout import MODEL_RESULTS, column_type

ARROW_TYPES = {"str": pa.large_string(), "Int64": pa.int64(), "int64": pa.int64(), "float64": pa.float64()}
PANDAS_TYPES = {"str": ("object", "str"), "Int64": ("int64", "Int64"), "int64": ("int64", "int64"),
                "float64": ("float64", "float64")}


def is_missing(value) -> bool:
    """None, NaN or pandas.NA (recognised by name: this module never imports pandas)."""
    return value is None or type(value).__name__ == "NAType" or (isinstance(value, float) and math.isnan(value))


def _validity(missing: np.ndarray):
    """Arrow's validity bitmap (least significant bit first), None when nothing is missing."""
    return pa.py_buffer(np.packbits(~missing, bitorder="little")) if missing.any() else None


def _offsets(lengths, dtype) -> pa.Buffer:
    offsets = np.zeros(len(lengths) + 1, dtype)
    np.cumsum(lengths, out=offsets[1:])
    return pa.py_buffer(offsets)


def arrow_array(arrow_type: pa.DataType, values) -> pa.Array:
    """An Arrow array of numbers (float or int), text, bytes or lists of int64 from Python values
    or a numpy array; a missing value (None, NaN, pandas.NA) is null. Built from raw buffers:
    pa.array checks whether its input is a pandas object, which imports pandas."""
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or \
            pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        missing = np.array([is_missing(v) for v in values], dtype=bool)
        text = pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
        encoded = [b"" if gone else str(v).encode() if text else bytes(v) for v, gone in zip(values, missing)]
        wide = pa.types.is_large_string(arrow_type) or pa.types.is_large_binary(arrow_type)
        buffers = [_offsets([len(e) for e in encoded], np.int64 if wide else np.int32), pa.py_buffer(b"".join(encoded))]
        children = None
    elif pa.types.is_list(arrow_type):
        missing = np.array([v is None for v in values], dtype=bool)
        items = [[] if gone else list(v) for v, gone in zip(values, missing)]
        buffers = [_offsets([len(i) for i in items], np.int32)]
        children = [arrow_array(arrow_type.value_type, [x for i in items for x in i])]
    else:
        dtype = np.dtype(arrow_type.to_pandas_dtype())
        if hasattr(values, "dtype") and values.dtype.kind in "fiu":
            numbers = np.ascontiguousarray(values, dtype=dtype)
            missing = np.isnan(numbers) if dtype.kind == "f" else np.zeros(numbers.size, bool)
        else:
            missing = np.array([is_missing(v) for v in values], dtype=bool)
            numbers = np.array([0 if gone else v for v, gone in zip(values, missing)], dtype=dtype)
        buffers, children = [pa.py_buffer(numbers)], None
    return pa.Array.from_buffers(arrow_type, len(missing), [_validity(missing), *buffers],
                                 null_count=int(missing.sum()), children=children)


def _column(kind: str, values) -> pa.Array:
    """As pandas converts a column: a missing value is null (NaN included, as from_pandas does)."""
    if kind in ("Int64", "int64") and not hasattr(values, "dtype"):
        values = [v if is_missing(v) else int(v) for v in values]
    return arrow_array(ARROW_TYPES[kind], values)


@functools.cache
def _pandas_version() -> str:
    """The installed pandas distribution's version, without importing pandas, from the name of its
    dist-info folder: importlib.metadata and its lookup cost a job ~20 ms, after its other imports."""
    site = Path(importlib.util.find_spec("pandas").origin).parent.parent
    found = sorted(site.glob("pandas-*.dist-info"))
    if len(found) == 1:
        return found[0].name.removeprefix("pandas-").removesuffix(".dist-info")
    from importlib.metadata import version  # a layout other than pip's

    return version("pandas")


def pandas_metadata(kinds: dict) -> dict:
    """The schema metadata pandas writes for a frame of these columns (name -> str, Int64, int64 or
    float64), no index (preserve_index=False)."""
    entries = [{"name": name, "field_name": name, "pandas_type": PANDAS_TYPES[kind][0],
                "numpy_type": PANDAS_TYPES[kind][1], "metadata": None} for name, kind in kinds.items()]
    return {b"pandas": json.dumps({
        "index_columns": [], "column_indexes": [], "columns": entries, "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": _pandas_version()})}


def table_of(columns: list, data: dict, types: dict = None) -> pa.Table:
    """An Arrow table of `columns` (in order, typed by `types`, else layout.column_type) from data:
    column -> a sequence of values or a numpy array (a float or int array goes in without a Python loop)."""
    kinds = {name: (types or {}).get(name) or column_type(name) for name in columns}
    arrays = [_column(kinds[name], data[name]) for name in columns]
    schema = pa.schema([(name, ARROW_TYPES[kinds[name]]) for name in columns], metadata=pandas_metadata(kinds))
    return pa.Table.from_arrays(arrays, schema=schema)


def table_from_rows(columns: list, rows: list, types: dict = None) -> pa.Table:
    """table_of from a list of row dicts (a column missing from a row is null)."""
    return table_of(columns, {name: [row.get(name) for row in rows] for name in columns}, types)


def records(inventory) -> list:
    """Inventory rows as dicts: a DataFrame's records, or the rows as given."""
    return inventory.to_dict("records") if hasattr(inventory, "to_dict") else list(inventory)


STAMP_KEY = b"blockscope.stamp"


def write_table(table: pa.Table, target, stamp: str | None = None):
    """Write an Arrow table atomically (temporary file, then rename); stamp: what it was computed
    from (blockscope.analysis.part_stamps), kept in the schema metadata."""
    if stamp is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), STAMP_KEY: stamp.encode()})
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)


def read_stamp(path) -> str | None:
    """The stamp write_table put in a Parquet file; None for a missing, unreadable or unstamped file."""
    try:
        stamp = (pq.ParquetFile(path).schema_arrow.metadata or {}).get(STAMP_KEY)
    except (OSError, pa.ArrowException):
        return None
    return stamp.decode() if stamp else None


# Every file under results/ is written by a job from its inputs: a damaged one is deleted and made again.
REBUILT = "delete it; the next run rebuilds it"
_RESULTS_MODEL = re.compile("(?:^|/)" + re.escape(MODEL_RESULTS).replace(re.escape("{model}"), "([^/]+)") + "/")


def results_model(path) -> str | None:
    """The model whose results folder (layout.MODEL_RESULTS) holds `path`; None for another path."""
    match = _RESULTS_MODEL.search(Path(path).as_posix())
    return match.group(1) if match and match.group(1) != "summary" else None


def damaged(path, reason: str, model=None) -> BlockscopeError:
    """The one-line error of an unreadable result file: the model, the file, the fix (REBUILT)."""
    reason = " ".join(str(reason).split())  # one line, whatever the reader said
    return BlockscopeError(f"damaged ({reason})", model=model or results_model(path), path=path,
                           fix=REBUILT)


@contextlib.contextmanager
def reading(path, model=None):
    """Turn the Arrow or OS error of a damaged Parquet file read inside the block into `damaged`; a
    missing or forbidden file keeps its own error (it is not damaged)."""
    try:
        yield
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (OSError, pa.ArrowException) as exc:
        first = str(exc).split(". ")[0].rstrip(".")  # pyarrow's second sentence guesses at the cause
        first = first.replace(f"Could not open Parquet input source '{path}': ", "")  # pandas names the file again
        raise damaged(path, f"{type(exc).__name__}: {first}", model) from None


def parquet_damage(path) -> str | None:
    """Why `path` cannot be a whole Parquet file, from its first and last 4 bytes and its size (a
    check cheap enough for every file while the DAG is built); None when it may be one."""
    magic = b"PAR1"
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < 12:  # magic, footer length, magic
            return f"{size} bytes, too short for a Parquet file"
        head = fh.read(4)
        fh.seek(size - 4)
        tail = fh.read(4)
    if head != magic:
        return "no Parquet header"
    return None if tail == magic else "no Parquet footer: truncated or overwritten"


def check_tables(paths, model=None):
    """The cheap content check of a job's Parquet inputs before it reads them: each file's footer
    (the schema and where every column lies) is parsed. Raises `damaged` for the first damaged file,
    naming how many more there are, so that one run finds them all."""
    found = []
    for path in paths:
        try:
            with reading(path, model):
                pq.read_metadata(path)
        except BlockscopeError as exc:
            found.append(exc)
    if found:
        first, others = found[0], [str(exc.path) for exc in found[1:]]
        what = first.what + (f"; {len(others)} more damaged: {', '.join(others)}" if others else "")
        raise BlockscopeError(what, model=first.model, path=first.path,
                              fix=REBUILT if not others else "delete them; the next run rebuilds them")


def read_table(path, columns=None, model=None) -> pa.Table:
    """A Parquet file as an Arrow table; a damaged file raises `damaged`. ParquetFile, not
    pq.read_table: read_table goes through pyarrow.dataset, which imports pandas."""
    with reading(path, model):
        return pq.ParquetFile(path).read(columns=columns)


def read_frame(path, columns=None, model=None):
    """A Parquet file as pandas reads it (pd.read_parquet); a damaged file raises `damaged`."""
    import pandas as pd  # only the jobs that work in pandas pay for it

    with reading(path, model):
        return pd.read_parquet(path, columns=columns)


def read_rows(path, columns=None, where=None) -> list:
    """Rows of a Parquet file as dicts, `columns` only; where=(column, value) keeps the matching rows."""
    rows = read_table(path, columns).to_pylist()
    if where is not None:
        column, value = where
        rows = [row for row in rows if row[column] == value]
    return rows


def unit_inventory(path, unit, selected=None) -> list:
    """The inventory rows of one unit, only those whose parameter `select` chose when `selected`
    (rule params `selected`) is given."""
    return selected_rows(read_rows(path, where=("unit", unit)), selected)


def selected_rows(rows: list, selected=None) -> list:
    """The inventory rows whose parameter `select` chose (all of them when selected is None)."""
    if selected is None:
        return rows
    chosen = set(selected)
    return [row for row in rows if row["param_name"] in chosen]


def text_table(table: pa.Table, leave_out=()) -> str:
    """A table as aligned text for a job's log, floats to 3 decimals."""
    columns = [name for name in table.column_names if name not in leave_out]

    def cell(value, numeric):
        return f"{value:.3f}" if isinstance(value, float) else "nan" if value is None and numeric else str(value)

    cells = [[cell(v, pa.types.is_floating(table.schema.field(name).type)) for v in table.column(name).to_pylist()]
             for name in columns]
    widths = [max([len(name), *map(len, column)]) for name, column in zip(columns, cells)]
    lines = [" ".join(name.rjust(width) for name, width in zip(columns, widths))]
    lines += [" ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in zip(*cells)]
    return "\n".join(lines)
