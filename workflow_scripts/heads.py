"""rule heads: per-head QK and OV kernel metrics of one unit."""

import json
import logging

import pandas as pd

from blockscope import read_unit
from blockscope.atomic import write_parquet
from blockscope.heads import attention_weights, heads_table
from blockscope.workflow import run_step


def main(snakemake):
    model, unit = snakemake.wildcards.model, snakemake.wildcards.unit
    dims = json.loads(open(snakemake.input.dims).read())
    inventory = pd.read_parquet(snakemake.input.inventory, filters=[("unit", "==", unit)])
    weights, reason = None, "not a transformer block"
    layer_index = None
    if unit.startswith("layer_"):
        layer_index = int(unit[6:])
        attention = inventory[inventory["block_type"].isin(["q_proj", "k_proj", "v_proj", "o_proj", "qkv_fused"])]
        tensors = read_unit(snakemake.input.tensors, names=list(attention["param_name"]))
        weights, reason = attention_weights(tensors, attention, dims, model=model)
    if weights is None:
        logging.info("[%s] %s: empty heads table: %s", model, unit, reason)
    table = heads_table(model, unit, layer_index, weights)
    write_parquet(table, snakemake.output[0])
    if len(table):
        print(table.drop(columns=["model", "unit"]).to_string(index=False, float_format=lambda x: f"{x:.3f}"))


run_step(snakemake, main)
