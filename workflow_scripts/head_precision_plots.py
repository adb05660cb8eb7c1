"""rule head_and_precision_plots: the layers x heads heatmap and the precision charts."""

import os

import pandas as pd

from blockscope.io.atomic import atomic_dir
from blockscope.layout import figure_files
from blockscope.reporting.figures.heads import heads_heatmap
from blockscope.reporting.figures.precision import precision_distributions, precision_page, precision_sensitivity
from blockscope.runtime.run_step import run_step


def main(snakemake):
    model, out = snakemake.wildcards.model, snakemake.output
    heads_heatmap(pd.read_parquet(snakemake.input.heads), f"{model}: effective rank per attention head", out.heatmap)
    precision = pd.read_parquet(snakemake.input.precision)
    precision_distributions(precision, f"{model}: α-Hill by precision, all matrices", out.distributions,
                            kind=snakemake.params.distribution_kind)
    precision_sensitivity(precision, snakemake.params.sensitivity_threshold,
                          f"{model}: the most precision-sensitive matrices", out.sensitivity)
    per_page = snakemake.params.layers_per_page
    layers = sorted(precision["layer_index"].dropna().unique()) if "layer_index" in precision else []
    if not layers:
        print(f"[{model}] no precision pages: no matrix in a transformer block")
    with atomic_dir(out.pages) as folder:  # renamed into place whole: a killed job leaves no half folder
        for start in range(0, len(layers), per_page):
            first, last = int(layers[start]), int(layers[min(start + per_page, len(layers)) - 1])
            page = precision[precision["layer_index"].between(first, last)]
            stem = os.path.join(folder, f"layers_{first:03d}-{last:03d}")
            precision_page(page, f"{model}: α-Hill per precision, layers {first}-{last}",
                           figure_files(stem, snakemake.params.formats))  # the page in every report.formats


run_step(snakemake, main)
