"""rule summary_plots: every model's metric curves against relative depth."""

import pandas as pd

from blockscope.reporting.figures.spectra import depth_overlay
from blockscope.runtime.run_step import run_step


def main(snakemake):
    metrics = pd.read_parquet(snakemake.input[0])
    for metric in snakemake.params.metrics:  # one figure each, in every report.formats
        depth_overlay(metrics, metric, f"all models: {metric} by relative depth (dashed: random-init controls)",
                      snakemake.output[metric])


run_step(snakemake, main)
