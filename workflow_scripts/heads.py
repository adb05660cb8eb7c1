"""rule heads: per-head QK and OV kernel metrics of one unit."""

import json
import logging

import pandas as pd

from blockscope import read_unit
from blockscope.atomic import write_parquet
from blockscope.heads import attention_weights, heads_table
from blockscope.layout import ATTENTION_BLOCK_TYPES, unit_layer
from blockscope.selection import unselected_attention
from blockscope.workflow import run_step


def main(snakemake):
    model, unit = snakemake.wildcards.model, snakemake.wildcards.unit
    dims = json.loads(open(snakemake.input.dims).read())
    inventory = pd.read_parquet(snakemake.input.inventory, filters=[("unit", "==", unit)])
    weights, layer_index = None, unit_layer(unit)
    attention = inventory[inventory["block_type"].isin(ATTENTION_BLOCK_TYPES)]
    left_out = unselected_attention(attention["param_name"], snakemake.params.selected)
    if layer_index is not None and len(attention) and left_out:
        logging.info("[%s] %s: empty heads table: the selection leaves out %s (heads need q, k, v and o)",
                     model, unit, ", ".join(left_out))
    elif layer_index is not None:
        tensors = read_unit(snakemake.input.tensors, names=list(attention["param_name"]))
        weights = attention_weights(tensors, attention, dims, model=model)
        if weights is None:
            logging.info("[%s] %s: empty heads table: no attention projections (q, k, v, o) in this unit",
                         model, unit)
    else:
        logging.info("[%s] %s: empty heads table: no attention projections (q, k, v, o) in this unit", model, unit)
    table = heads_table(model, unit, layer_index, weights)
    write_parquet(table, snakemake.output[0])
    if len(table):
        print(table.drop(columns=["model", "unit"]).to_string(index=False, float_format=lambda x: f"{x:.3f}"))


run_step(snakemake, main)
