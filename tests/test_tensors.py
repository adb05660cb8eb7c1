"""Per-unit Parquet: lossless round trips, no inflation, streaming, atomic writes, plain readers."""

import os

import duckdb
import ml_dtypes
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from blockscope import read_unit
from blockscope.io.dtypes import safetensors_dtype
from blockscope.io.tensors import iter_unit, unit_names, write_unit


def _random(shape, dtype, seed=0):
    values = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return values.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn])
def test_round_trip_is_bit_identical(tmp_path, dtype):
    tensors = {"a.weight": _random((300, 70), dtype), "b.bias": _random((70,), dtype, 1),
               "c.experts": _random((3, 20, 10), dtype, 2)}
    target = tmp_path / "unit.parquet"
    write_unit(((n, safetensors_dtype(a.dtype), a) for n, a in tensors.items()), target, chunk_bytes=1000)
    back = read_unit(target)
    assert list(back) == list(tensors)
    for name, array in tensors.items():
        assert back[name].dtype == array.dtype and back[name].shape == array.shape
        assert back[name].tobytes() == array.tobytes()  # bit for bit, NaN payloads included


def test_chunks_stream_and_names_are_read_selectively(tmp_path):
    big = _random((1000, 64), np.float32)
    target = tmp_path / "unit.parquet"
    write_unit([("big", "F32", big), ("small", "F32", big[:2])], target, chunk_bytes=64 * 4 * 100)
    assert pq.ParquetFile(target).num_row_groups == 11  # 10 chunks of 100 rows + 1
    assert unit_names(target) == ["big", "small"]
    only = dict(iter_unit(target, names=["small"]))
    assert list(only) == ["small"] and np.array_equal(only["small"], big[:2])


def test_plain_parquet_for_pandas_pyarrow_and_duckdb(tmp_path):
    array = _random((50, 8), ml_dtypes.bfloat16)
    target = tmp_path / "unit.parquet"
    write_unit([("w", "BF16", array)], target)
    frame = pd.read_parquet(target)
    assert list(frame.columns) == ["param_name", "dtype", "shape", "chunk", "row_start", "data"]
    assert frame.loc[0, "dtype"] == "BF16" and list(frame.loc[0, "shape"]) == [50, 8]
    row = duckdb.sql(f"select param_name, octet_length(data) from '{target}'").fetchall()[0]
    assert row == ("w", array.nbytes)
    raw = pq.read_table(target).column("data")[0].as_py()
    assert np.array_equal(np.frombuffer(raw, ml_dtypes.bfloat16).reshape(50, 8), array)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_no_inflation_on_incompressible_weights(tmp_path, dtype):
    tensors = [(f"w{i}", safetensors_dtype(dtype), _random((256, 256), dtype, i)) for i in range(3)]
    tensors.append(("norm", safetensors_dtype(dtype), _random((256,), dtype, 9)))
    target = tmp_path / "unit.parquet"
    nbytes = write_unit(tensors, target)
    assert os.path.getsize(target) <= 1.0 * nbytes


def test_a_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "unit.parquet"

    def tensors():
        yield "ok", "F32", np.ones((4, 4), np.float32)
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_unit(tensors(), target)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary left behind either
