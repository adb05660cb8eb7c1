"""rule head_deep_dive_plot: the eigenvalues of one head's QK kernel (head_deep_dive's table), drawn.
An empty table (no such head, no attention, non-finite weights) is drawn as its reason."""

import json

import pandas as pd

from blockscope.analysis.heads import kv_head
from blockscope.reporting.figures.heads import head_eigenvalues
from blockscope.runtime.run_step import run_step


def main(snakemake):
    model, layer, head = snakemake.wildcards.model, int(snakemake.wildcards.layer), int(snakemake.wildcards.head)
    dims = json.loads(open(snakemake.input.dims).read())
    table = pd.read_parquet(snakemake.input.table)
    group = kv_head(head, dims["heads"], dims["kv_heads"])
    reason = table.attrs.get("reason") or f"no eigenvalues for layer {layer}, head {head} (see the head_deep_dive log)"
    title = (f"{model}: layer {layer}, head {head} (kv head {group}), "
             f"QK kernel eigenvalues (d_head = {dims['head_dim']})")
    head_eigenvalues(table, title, list(snakemake.output), reason=reason)


run_step(snakemake, main)
