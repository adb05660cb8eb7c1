"""rule delta_plots: how much each layer moved against the base, and how low-rank its update is."""

import pandas as pd

from blockscope import pair_layout
from blockscope.reporting.figures.deltas import delta_effective_rank, relative_change_heatmap
from blockscope.runtime.run_step import run_step


def main(snakemake):
    model, formats = snakemake.wildcards.model, snakemake.params.formats
    folder = pair_layout.DELTA_PLOTS.format(model=model)
    deltas, by_layer = pd.read_parquet(snakemake.input.deltas), pd.read_csv(snakemake.input.by_layer)
    relative_change_heatmap(by_layer, f"{folder}/relative_change", formats)
    delta_effective_rank(deltas, f"{folder}/effective_rank", formats)


run_step(snakemake, main)
