"""rule heads: per-head QK and OV kernel metrics of one unit."""

import json
import logging

import pandas as pd

from blockscope import read_unit
from blockscope.atomic import write_parquet
from blockscope.heads import attention_weights, heads_table
from blockscope.layout import ATTENTION_BLOCK_TYPES, unit_layer
from blockscope.workflow import run_step


def main(snakemake):
    model, unit = snakemake.wildcards.model, snakemake.wildcards.unit
    dims = json.loads(open(snakemake.input.dims).read())
    inventory = pd.read_parquet(snakemake.input.inventory, filters=[("unit", "==", unit)])
    weights, layer_index = None, unit_layer(unit)
    if layer_index is not None:
        attention = inventory[inventory["block_type"].isin(ATTENTION_BLOCK_TYPES)]
        tensors = read_unit(snakemake.input.tensors, names=list(attention["param_name"]))
        weights = attention_weights(tensors, attention, dims, model=model)
    if weights is None:
        logging.info("[%s] %s: empty heads table: no attention projections (q, k, v, o) in this unit", model, unit)
    table = heads_table(model, unit, layer_index, weights)
    write_parquet(table, snakemake.output[0])
    if len(table):
        print(table.drop(columns=["model", "unit"]).to_string(index=False, float_format=lambda x: f"{x:.3f}"))


run_step(snakemake, main)
