"""rule headmerge_plots: the head-merge sweep, pairs per layer, similarities and, per threshold,
the comparison with the random control and the merged pairs by layer, drawn from headmerge's files."""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from blockscope.checkpoint.selection import chosen_layers, parse_layers
from blockscope.evaluation import head_merge as hm
from blockscope.layout import HEADMERGE_THRESHOLD_FIGURES, figure_files
from blockscope.reporting.figures.head_merge import (
    headmerge_comparison,
    headmerge_layer_pairs,
    headmerge_pairs,
    headmerge_sweep,
    similarity_histograms,
    similarity_matrices,
)
from blockscope.runtime.run_step import run_step


def threshold_figures(model, threshold, formats) -> tuple:
    """The files of one threshold's comparison and pairs-by-layer figures."""
    return tuple(figure_files(stem.format(model=model, threshold=threshold), formats)
                 for stem in HEADMERGE_THRESHOLD_FIGURES)


def main(snakemake):
    model_name, output, formats = snakemake.wildcards.model, snakemake.output, snakemake.params.formats
    thresholds = [json.loads(Path(p).read_text()) for p in snakemake.input.thresholds]
    first = thresholds[0]
    if "skipped" in first:
        for target in (output.sweep, output.pairs, output.matrices, output.histograms,
                       *[files for t in thresholds
                         for files in threshold_figures(model_name, t["threshold"], formats)]):
            similarity_histograms({}, f"{model_name}: skipped ({first['skipped']})", target)
        return
    summary = pd.read_parquet(snakemake.input.summary)
    sims = hm.similarity_matrices(pd.read_parquet(snakemake.input.similarities))
    measure, layers = first["similarity"], sorted(sims)
    headmerge_sweep(summary, f"{model_name}: head merging by {measure} similarity", output.sweep)
    headmerge_pairs(summary, layers, f"{model_name}: merged head pairs per layer", output.pairs)
    shown = chosen_layers(parse_layers(snakemake.params.plot_layers) or [], layers)
    similarity_matrices({layer: sims[layer] for layer in shown}, f"{model_name}: head similarity",
                        output.matrices, reason=f"none of headmerge.plot_layers {snakemake.params.plot_layers} "
                                                f"has merged heads (layers {layers[0]}-{layers[-1]})"
                        if layers else "no layer with attention heads")
    similarity_histograms({m: np.concatenate([hm.upper_triangle(s[m]) for s in sims.values()]) for m in hm.MEASURES},
                          f"{model_name}: pairwise head similarity, all layers", output.histograms,
                          list(summary["threshold"]))
    for t in thresholds:
        row = summary[summary["threshold"] == t["threshold"]].to_dict("records")
        comparison, pairs = threshold_figures(model_name, t["threshold"], formats)
        title = f"{model_name}: threshold {t['threshold']:g} ({measure})"
        headmerge_comparison(row[0] if row else {}, title, comparison)
        headmerge_layer_pairs(row[0] if row else {}, layers, f"{title}, merged head pairs by layer", pairs)


run_step(snakemake, main)
