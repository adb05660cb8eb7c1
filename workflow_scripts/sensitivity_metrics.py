"""rule sensitivity_metrics: which metric predicts the measured per-matrix sensitivity (Spearman's rho
of every spectral metric and baseline with the measured KL, bootstrap intervals), from matrices.parquet."""

import logging

import pandas as pd

from blockscope.compression.experiments import write_table
from blockscope.compression.metric_prediction import best_predictor, metric_correlations
from blockscope.runtime.run_step import run_step


def main(snakemake):
    model, params, output = snakemake.wildcards.model, snakemake.params, snakemake.output
    matrices = pd.read_parquet(snakemake.input.matrices)
    table = metric_correlations(matrices, samples=params.samples, seed=params.seed, level=params.level, model=model)
    write_table(table, output.correlations, output.correlations_csv)
    for perturbation in dict.fromkeys(table["perturbation"]):
        best = best_predictor(table, perturbation=perturbation)
        logging.info("[%s] %s: best predictor %s", model, perturbation, best)


run_step(snakemake, main)
