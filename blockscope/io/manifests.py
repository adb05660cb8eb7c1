"""A model's manifests, results/{model}/model.json and inventory.parquet: the inventory job writes
both, and every later job and the workflow, while it builds the DAG, read them. A damaged one is
named with its fix (delete it: the inventory job writes both again), never a JSON or Arrow
traceback that names no file."""

import json
from pathlib import Path

import pyarrow as pa

from blockscope.io.tables import damaged, read_table

# What the workflow reads of them while it builds the DAG: a manifest without it is damaged.
INVENTORY_KEY_COLUMNS = ("param_name", "unit", "layer_index")


def read_model_json(path, model=None) -> dict:
    """model.json as a dict, checked: a JSON object whose `layers` is a number of layers."""
    try:
        dims = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise damaged(path, f"not valid JSON: {exc}", model) from None
    if not isinstance(dims, dict):
        raise damaged(path, f"a JSON {type(dims).__name__}, not the model's dimensions", model)
    layers = dims.get("layers")
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
        raise damaged(path, f"'layers' is {layers!r}, not a number of layers", model)
    return dims


def read_inventory(path, model=None) -> pa.Table:
    """inventory.parquet as an Arrow table, checked: every column readable, the unit columns there."""
    table = read_table(path, model=model)
    missing = [name for name in INVENTORY_KEY_COLUMNS if name not in table.column_names]
    if missing:
        raise damaged(path, f"no column {', '.join(missing)}", model)
    return table
