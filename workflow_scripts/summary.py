"""rule summary: every model's tables stacked, and a comparison by relative depth."""

import json

import pandas as pd

from blockscope.aggregation import model_tables as agg
from blockscope.io.atomic import atomic_path, write_parquet
from blockscope.runtime.run_step import run_step


def main(snakemake):
    layers = {}
    for path in snakemake.input.dims:
        dims = json.load(open(path))
        layers[dims["model"]] = dims["layers"]
    metrics = agg.stack(pd.read_parquet(p) for p in snakemake.input.metrics)
    metrics["relative_depth"] = agg.relative_depth(metrics, layers)
    metrics["control_of"] = metrics["model"].map(snakemake.params.controls)
    write_parquet(metrics, snakemake.output.metrics)
    write_parquet(agg.stack(pd.read_parquet(p) for p in snakemake.input.heads), snakemake.output.heads)
    write_parquet(agg.stack(pd.read_parquet(p) for p in snakemake.input.precision), snakemake.output.precision)
    depth = agg.depth_comparison(metrics)
    with atomic_path(snakemake.output.depth) as tmp:
        depth.to_csv(tmp, index=False)
    print(f"{len(layers)} models, {len(metrics)} matrices")


run_step(snakemake, main)
