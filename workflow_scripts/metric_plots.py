"""rule metric_plots: each main metric against layer, one panel per weight type."""

import pandas as pd

from blockscope.aggregation.model_tables import spectral_rows
from blockscope.reporting.figures.spectra import metric_by_layer
from blockscope.runtime.run_step import run_step


def main(snakemake):
    model = snakemake.wildcards.model
    metrics = spectral_rows(pd.read_parquet(snakemake.input.metrics))  # no 1-D statistics-only rows
    control = pd.read_parquet(snakemake.input.control[0]) if snakemake.input.control else None
    twin = f" vs random-init twin {control['model'].iloc[0]}" if control is not None else ""
    for metric in snakemake.params.metrics:  # one figure each, in every report.formats
        metric_by_layer(metrics, metric, f"{model}: {metric} by layer{twin}", snakemake.output[metric], control)


run_step(snakemake, main)
