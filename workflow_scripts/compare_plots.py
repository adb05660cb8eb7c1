"""rule compare_plots: a compare pair's relative distance and subspace overlap per layer."""

import pandas as pd

from blockscope import pair_layout
from blockscope.reporting.figures.deltas import distance_by_layer
from blockscope.runtime.run_step import run_step


def main(snakemake):
    model, other = snakemake.wildcards.model, snakemake.wildcards.other
    stem = pair_layout.COMPARE_FIGURE.format(model=model, other=other)
    distance_by_layer(pd.read_csv(snakemake.input.by_layer), stem, snakemake.params.formats)


run_step(snakemake, main)
