"""rule summary_plots: every model's metric curves against relative depth."""

import pandas as pd

from blockscope.plots import depth_overlay
from blockscope.workflow import run_step


def main(snakemake):
    metrics = pd.read_parquet(snakemake.input[0])
    for metric, path in zip(snakemake.params.metrics, snakemake.output):
        depth_overlay(metrics, metric, f"all models: {metric} by relative depth (dashed: random-init controls)", path)


run_step(snakemake, main)
