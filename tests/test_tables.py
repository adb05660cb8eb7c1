"""Per-unit tables written without pandas read back in pandas exactly as if pandas had written them."""

import ast
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from blockscope.analysis.anatomy import precision_table, unit_tables
from blockscope.analysis.heads import NONFINITE_TAG, AttentionWeights, head_table_of
from blockscope.io.tables import unit_inventory, write_table
from blockscope.io.tensors import write_unit
from blockscope.layout import HEAD_COLUMNS, METRICS_COLUMNS, PRECISION_COLUMNS, SPECTRA_COLUMNS

ROOT = Path(__file__).resolve().parent.parent


def _unit(tmp_path):
    """A unit with an expert stack, a matrix, a refused integer tensor, a NaN matrix and a 1-D weight."""
    rng = np.random.default_rng(0)
    tensors = {"mlp.experts.gate_up_proj": rng.standard_normal((2, 24, 12)).astype(np.float32),
               "attn.q_proj.weight": rng.standard_normal((12, 12)).astype(np.float32),
               "attn.broken.weight": np.full((12, 12), np.nan, np.float32),
               "norm.weight": np.ones(12, np.float32)}
    target = tmp_path / "unit.parquet"
    write_unit(((n, "F32", a) for n, a in tensors.items()), target)
    inventory = pd.DataFrame({
        "param_name": [*tensors, "attn.index"], "unit": "layer_000", "layer_index": 0,
        "block_type": ["moe_expert", "q_proj", "q_proj", "norm", "other"],
        "shape": [list(a.shape) for a in tensors.values()] + [[4, 4]], "dtype": ["F32"] * 4 + ["I64"],
        "source_dtype": ["F32"] * 4 + ["I64"], "layout": "out_in"})
    inventory_path = tmp_path / "inventory.parquet"
    inventory.to_parquet(inventory_path)
    return target, inventory_path


def test_tables_read_back_as_pandas_would_have_written_them(tmp_path):
    tensors, inventory_path = _unit(tmp_path)
    inventory = unit_inventory(inventory_path, "layer_000", ["mlp.experts.gate_up_proj", "attn.q_proj.weight",
                                                            "attn.broken.weight", "norm.weight", "attn.index"])
    assert [row["param_name"] for row in inventory][-1] == "attn.index"
    assert unit_inventory(inventory_path, "x", []) == []
    metrics, spectra = unit_tables("m", "layer_000", tensors, inventory)
    sweep = precision_table("m", "layer_000", tensors, inventory, spectra, ["fp32", "bf16"])
    for name, table, columns in (("metrics", metrics, METRICS_COLUMNS), ("spectra", spectra, SPECTRA_COLUMNS),
                                 ("precision", sweep, PRECISION_COLUMNS)):
        path = tmp_path / f"{name}.parquet"
        write_table(table, path)
        ours = pd.read_parquet(path)
        assert list(ours.columns) == columns
        # what pandas writes for the same frame: the same Arrow types, values and dtypes on reading
        theirs_path = tmp_path / f"{name}_pandas.parquet"
        ours.to_parquet(theirs_path, index=False)
        assert pq.read_schema(path).remove_metadata() == pq.read_schema(theirs_path).remove_metadata(), name
        pd.testing.assert_frame_equal(ours, pd.read_parquet(theirs_path))
        for column in ("expert", "layer_index", "rows", "cols", "design_rank"):
            if column in ours:
                assert ours[column].dtype == "Int64", (name, column)
        assert pq.read_table(path).equals(pq.read_table(theirs_path)), name
    frame = pd.read_parquet(tmp_path / "metrics.parquet").set_index("matrix")
    assert frame.loc["attn.index", "status"] == "integer tensor (I64): not a weight matrix"
    assert pd.isna(frame.loc["attn.index", "design_rank"]) and frame.loc["attn.index", "rows"] == 4
    assert pd.isna(frame.loc["norm.weight", "cols"]) and frame.loc["mlp.experts.gate_up_proj[1]", "expert"] == 1
    assert pd.isna(frame.loc["attn.q_proj.weight", "expert"]) and np.isnan(frame.loc["attn.broken.weight", "alpha"])


def test_heads_tables_read_back_as_pandas_would_have_written_them(tmp_path):
    """Energy ranks are int64, or float64 where a non-finite head leaves them NaN (pandas' own
    inference); an attention-free unit writes the same columns, typed, with no rows."""
    rng = np.random.default_rng(1)
    dims = {"heads": 4, "kv_heads": 2, "head_dim": 4}
    clean = AttentionWeights(rng.standard_normal((16, 16)), rng.standard_normal((8, 16)),
                             rng.standard_normal((8, 16)), rng.standard_normal((16, 16)), **dims)
    bad_q = clean.q.copy()
    bad_q[0, 0] = np.nan
    bad = AttentionWeights(bad_q, clean.k, clean.v, clean.o, **dims)
    for name, weights, energy_dtype in (("clean", clean, "int64"), ("bad", bad, "float64"), ("none", None, "int64")):
        path, theirs_path = tmp_path / f"{name}.parquet", tmp_path / f"{name}_pandas.parquet"
        write_table(head_table_of("m", "layer_000", 0, weights), path)
        ours = pd.read_parquet(path)
        ours.to_parquet(theirs_path, index=False)
        assert list(ours.columns) == HEAD_COLUMNS and len(ours) == (0 if weights is None else 4)
        assert pq.read_table(path).equals(pq.read_table(theirs_path)), name
        assert ours["qk_energy_rank_90"].dtype == energy_dtype and ours["head"].dtype == "int64", name
    frame = pd.read_parquet(tmp_path / "bad.parquet")
    assert frame["tag"].iloc[0] == NONFINITE_TAG and np.isnan(frame["qk_energy_rank_90"].iloc[0])


JOB_WORK = """
import json, sys
from blockscope.analysis.part_stamps import Part, run_part
from blockscope import read_unit
from blockscope.analysis.heads import attention_weights, head_table_of
from blockscope.io.tables import read_table, text_table, unit_inventory, write_table
from blockscope.io.tensors import read_unit, write_unit
from blockscope.analysis.anatomy import alpha_hill_grid, precision_table, unit_tables
tensors, inventory_path, out = sys.argv[1:]
write_unit(((name, "F32", array) for name, array in read_unit(tensors).items()), out + "/written.parquet")
inventory = unit_inventory(inventory_path, "layer_000", ["attn.q_proj.weight", "mlp.experts.gate_up_proj",
                                                        "attn.broken.weight", "norm.weight", "attn.index"])
metrics, spectra = unit_tables("m", "layer_000", tensors, inventory)
run_part(Part("spectra", {"spectra": out + "/spectra.parquet", "metrics": out + "/metrics.parquet"}, {},
              {"tensors": tensors}, lambda: {"spectra": spectra, "metrics": metrics}))
sweep = precision_table("m", "layer_000", tensors, inventory, read_table(out + "/spectra.parquet", ["matrix", "sigma"]),
                        ["fp32", "bf16"])
write_table(sweep, out + "/precision.parquet"); alpha_hill_grid(sweep.to_pylist(), ["fp32", "bf16"])
heads = head_table_of("m", "layer_000", 0, None)
write_table(heads, out + "/heads.parquet"); text_table(heads)
print("pandas" in sys.modules, "importlib.metadata" in sys.modules)
"""


def test_the_per_unit_jobs_never_import_pandas(tmp_path):
    """The extract and anatomy jobs (spectra, precision sweep, heads) leave pandas out, imports and work alike:
    it would cost every one of a model's hundreds of jobs about 0.25 CPU s (pyarrow imports it behind
    pa.array and read_table, which is why blockscope.io.tables uses neither). importlib.metadata, ~20 ms, stays
    out too: the tables' pandas metadata finds pandas' version without it."""
    for rule in ("extract", "anatomy"):  # the rule scripts' own top-level imports
        tree = ast.parse((ROOT / "workflow_scripts" / f"{rule}.py").read_text())
        imports = "\n".join(ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)))
        code = f"import sys\n{imports}\nprint('pandas' in sys.modules, 'importlib.metadata' in sys.modules)"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert done.stdout.strip() == "False False", rule
    tensors, inventory_path = _unit(tmp_path)  # the work itself, as the jobs do it
    done = subprocess.run([sys.executable, "-c", JOB_WORK, str(tensors), str(inventory_path), str(tmp_path)],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False False"
    assert len(pd.read_parquet(tmp_path / "precision.parquet")) == 2 * 5  # 4 matrices + 1 refused, 2 precisions
    assert (tmp_path / "written.parquet").read_bytes() == tensors.read_bytes()  # the writer, byte for byte
    written = json.loads(pq.read_schema(tmp_path / "precision.parquet").metadata[b"pandas"])
    assert written["pandas_version"] == importlib.metadata.version("pandas") == pd.__version__
