"""rule series_plots: the members' median alpha and effective rank along a series, and each one's change."""

import pandas as pd

from blockscope import pair_layout
from blockscope.reporting.figures.deltas import series_trend
from blockscope.runtime.run_step import run_step


def main(snakemake):
    name = snakemake.wildcards.series
    series_trend(pd.read_parquet(snakemake.input.table), pair_layout.SERIES_FIGURE.format(series=name),
                 snakemake.params.formats)


run_step(snakemake, main)
