"""rule headmerge_plots: the head-merge sweep, pairs per layer and similarities, drawn from headmerge's files."""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from blockscope import headmerge as hm
from blockscope.plots import headmerge_pairs, headmerge_sweep, similarity_histograms, similarity_matrices
from blockscope.workflow import run_step


def first_middle_last(layers: list) -> list:
    return sorted({layers[0], layers[len(layers) // 2], layers[-1]})


def main(snakemake):
    model_name, output = snakemake.wildcards.model, snakemake.output
    first = json.loads(Path(snakemake.input.thresholds[0]).read_text())
    if "skipped" in first:
        for path in (output.sweep, output.pairs, output.matrices, output.histograms):
            similarity_histograms({}, f"{model_name}: skipped ({first['skipped']})", path)
        return
    summary = pd.read_parquet(snakemake.input.summary)
    sims = hm.similarity_matrices(pd.read_parquet(snakemake.input.similarities))
    measure, layers, thresholds = first["similarity"], sorted(sims), list(summary["threshold"])
    headmerge_sweep(summary, f"{model_name}: head merging by {measure} similarity", output.sweep)
    headmerge_pairs(summary, layers, f"{model_name}: merged head pairs per layer", output.pairs)
    similarity_matrices({layer: sims[layer] for layer in first_middle_last(layers)}, f"{model_name}: head similarity",
                        output.matrices)
    similarity_histograms({m: np.concatenate([hm.upper_triangle(s[m]) for s in sims.values()]) for m in hm.MEASURES},
                          f"{model_name}: pairwise head similarity, all layers", output.histograms, thresholds)


run_step(snakemake, main)
