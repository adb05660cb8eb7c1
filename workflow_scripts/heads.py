"""rule heads: per-head QK and OV kernel metrics of one unit."""

import json
import logging

from blockscope import read_unit
from blockscope.heads import attention_weights, head_table_of
from blockscope.layout import ATTENTION_BLOCK_TYPES, unit_layer
from blockscope.selection import unselected_attention
from blockscope.tables import text_table, unit_inventory, write_table
from blockscope.workflow import run_step


def main(snakemake):
    model, unit = snakemake.wildcards.model, snakemake.wildcards.unit
    dims = json.loads(open(snakemake.input.dims).read())
    inventory = unit_inventory(snakemake.input.inventory, unit)
    weights, layer_index = None, unit_layer(unit)
    attention = [row for row in inventory if row["block_type"] in ATTENTION_BLOCK_TYPES]
    left_out = unselected_attention([row["param_name"] for row in attention], snakemake.params.selected)
    if layer_index is not None and attention and left_out:
        logging.info("[%s] %s: empty heads table: the selection leaves out %s (heads need q, k, v and o)",
                     model, unit, ", ".join(left_out))
    elif layer_index is not None:
        tensors = read_unit(snakemake.input.tensors, names=[row["param_name"] for row in attention])
        weights = attention_weights(tensors, attention, dims, model=model)
        if weights is None:
            logging.info("[%s] %s: empty heads table: no attention projections (q, k, v, o) in this unit",
                         model, unit)
    else:
        logging.info("[%s] %s: empty heads table: no attention projections (q, k, v, o) in this unit", model, unit)
    table = head_table_of(model, unit, layer_index, weights)
    write_table(table, snakemake.output[0])
    if len(table):
        print(text_table(table, leave_out=("model", "unit")))


run_step(snakemake, main)
