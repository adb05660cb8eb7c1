"""rule head_deep_dive: every eigenvalue of one head's QK kernel, as a table.

A head that has no table (no attention in the layer, no such head, non-finite q or k weights)
gets an empty table with the reason in its metadata, which the plot shows; a pair the user set
in heads.deep_dive that names no head is their error to fix, and ends the job with one line.
"""

import json
import logging

import pandas as pd
import pyarrow as pa

from blockscope import read_unit
from blockscope.analysis.heads import attention_weights, deep_dive_problem, eigenvalue_table, empty_eigenvalue_table
from blockscope.checkpoint.selection import unselected_attention
from blockscope.errors import BlockscopeError
from blockscope.io.atomic import write_parquet
from blockscope.layout import ATTENTION_BLOCK_TYPES
from blockscope.runtime.run_step import run_step


def with_attrs(table: pd.DataFrame) -> pa.Table:
    """The table with its attrs kept in the Parquet metadata (pandas.read_parquet restores them)."""
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    if not table.attrs:
        return arrow
    return arrow.replace_schema_metadata({**(arrow.schema.metadata or {}),
                                          b"PANDAS_ATTRS": json.dumps(table.attrs).encode()})


def main(snakemake):
    model, layer, head = snakemake.wildcards.model, int(snakemake.wildcards.layer), int(snakemake.wildcards.head)
    dims = json.loads(open(snakemake.input.dims).read())
    inventory = pd.read_parquet(snakemake.input.inventory, filters=[("layer_index", "==", layer)])
    attention = inventory[inventory["block_type"].isin(ATTENTION_BLOCK_TYPES)]
    left_out = unselected_attention(attention["param_name"], snakemake.params.selected)
    if left_out:  # the selection keeps part of this layer's attention: no kernel to take apart
        logging.warning("[%s] layer %d head %d: empty deep-dive table: the selection leaves out %s",
                        model, layer, head, ", ".join(left_out))
        table = empty_eigenvalue_table(f"layer {layer}, head {head}: not selected ({', '.join(left_out)})")
        return write_parquet(with_attrs(table), snakemake.output[0])
    weights = attention_weights(read_unit(snakemake.input.tensors), inventory, dims, model=model)
    problem = deep_dive_problem(weights, head)
    if problem and snakemake.params.user_set and (weights is None or not 0 <= head < weights.heads):
        raise BlockscopeError(f"no head {head} in layer {layer}: {problem}", model=model, path="config.yaml",
                              fix="fix heads.deep_dive")
    if problem:
        logging.warning("[%s] layer %d head %d: empty deep-dive table: %s", model, layer, head, problem)
        table = empty_eigenvalue_table(f"layer {layer}, head {head}: {problem}")
    else:
        table = eigenvalue_table(weights, head)
        print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    write_parquet(with_attrs(table), snakemake.output[0])


run_step(snakemake, main)
