"""rule head_and_precision_plots: the layers x heads heatmap and the precision charts."""

import os

import pandas as pd

from blockscope.plots import heads_heatmap, precision_distributions, precision_page
from blockscope.workflow import run_step


def main(snakemake):
    model, out = snakemake.wildcards.model, snakemake.output
    heads = pd.read_parquet(snakemake.input.heads)
    heads_heatmap(heads, f"{model}: effective rank per attention head", out.heatmap)
    precision = pd.read_parquet(snakemake.input.precision)
    precision_distributions(precision, f"{model}: α-Hill by precision, all matrices", out.distributions)
    wide = pd.read_csv(snakemake.input.precision_wide)
    precisions = list(dict.fromkeys(precision["precision"]))
    os.makedirs(out.pages, exist_ok=True)
    layer = precision.drop_duplicates("matrix").set_index("matrix")["layer_index"]
    wide["layer_index"] = wide["layer_name"].map(layer)
    per_page = snakemake.params.layers_per_page
    layers = sorted(wide["layer_index"].dropna().unique())
    for start in range(0, len(layers), per_page):
        chosen = layers[start:start + per_page]
        page = wide[wide["layer_index"].isin(chosen)]
        name = f"layers_{int(chosen[0]):03d}-{int(chosen[-1]):03d}"
        precision_page(page, precisions, f"{model}: α-Hill per precision, layers {int(chosen[0])}-{int(chosen[-1])}",
                       os.path.join(out.pages, f"{name}.png"))


run_step(snakemake, main)
