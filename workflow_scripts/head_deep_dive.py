"""rule head_deep_dive: every eigenvalue of one head's QK kernel, as a table and a figure."""

import json

import pandas as pd

from blockscope import read_unit
from blockscope.atomic import write_parquet
from blockscope.errors import BlockscopeError
from blockscope.heads import attention_weights, eigenvalue_table
from blockscope.plots import head_eigenvalues
from blockscope.workflow import run_step


def main(snakemake):
    model, layer, head = snakemake.wildcards.model, int(snakemake.wildcards.layer), int(snakemake.wildcards.head)
    dims = json.loads(open(snakemake.input.dims).read())
    inventory = pd.read_parquet(snakemake.input.inventory, filters=[("layer_index", "==", layer)])
    weights, reason = attention_weights(read_unit(snakemake.input.tensors), inventory, dims, model=model)
    if weights is None or head >= weights.heads:
        raise BlockscopeError(f"no head {head} in layer {layer} ({reason or f'{weights.heads} heads'})",
                              model=model, path="config.yaml", fix="fix heads.deep_dive")
    table = eigenvalue_table(weights, head)
    write_parquet(table, snakemake.output.table)
    head_eigenvalues(table, f"{model}: layer {layer}, head {head} (kv head {weights.kv_head(head)}), "
                            f"QK kernel eigenvalues (d_head = {weights.head_dim})", snakemake.output.plot)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))


run_step(snakemake, main)
