"""rule head_deep_dive: every eigenvalue of one head's QK kernel, as a table."""

import json

import pandas as pd

from blockscope import read_unit
from blockscope.atomic import write_parquet
from blockscope.errors import BlockscopeError
from blockscope.heads import attention_weights, eigenvalue_table
from blockscope.workflow import run_step


def main(snakemake):
    model, layer, head = snakemake.wildcards.model, int(snakemake.wildcards.layer), int(snakemake.wildcards.head)
    dims = json.loads(open(snakemake.input.dims).read())
    inventory = pd.read_parquet(snakemake.input.inventory, filters=[("layer_index", "==", layer)])
    weights = attention_weights(read_unit(snakemake.input.tensors), inventory, dims, model=model)
    if weights is None or head >= weights.heads:
        found = "no attention projections" if weights is None else f"{weights.heads} heads"
        raise BlockscopeError(f"no head {head} in layer {layer} ({found})", model=model, path="config.yaml",
                              fix="fix heads.deep_dive")
    table = eigenvalue_table(weights, head)
    write_parquet(table, snakemake.output[0])
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))


run_step(snakemake, main)
