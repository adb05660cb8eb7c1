"""rule compress_plots: the Pareto figures of the quantisation, pruning and (compress.lowrank) low-rank
experiments, from their tables; and, when the per-matrix sensitivity was measured, what predicts it."""

import json

import pandas as pd

from blockscope.reporting.figures.compression import LOWRANK_LABELLED, LOWRANK_STYLES, compress_pareto
from blockscope.reporting.figures.sensitivity import best_metric_scatter, correlation_dots
from blockscope.runtime.run_step import run_step


def sensitivity_figures(model, inp, out):
    """The correlation dot plot and the best metric's scatter (compress.sensitivity on)."""
    matrices, correlations = pd.read_parquet(inp.sensitivity_matrices), pd.read_parquet(inp.correlations)
    reason = json.loads(open(inp.sensitivity_agreement).read()).get("skipped") or "no matrix was measured"
    correlation_dots(correlations, f"{model}: what predicts per-matrix sensitivity", out.correlations, reason)
    best_metric_scatter(matrices, correlations, f"{model}: per-matrix sensitivity against its best predictor",
                        out.best_metric, reason)


def main(snakemake):
    model, inp, out = snakemake.wildcards.model, snakemake.input, snakemake.output
    for table, plans, target, x, label, title in (
            (inp.quant, inp.quant_plans, out.quant, "bits_per_weight",
             "average bits per weight (scales and zero points included)", "quantisation plans"),
            (inp.prune, inp.prune_plans, out.prune, "sparsity",
             "achieved sparsity of the planned matrices (parameter-weighted)", "pruning plans")):
        reason = json.loads(open(plans).read()).get("skipped") or "the experiment has no rows"
        compress_pareto(pd.read_parquet(table), x, label, f"{model}: {title}", target, reason=reason)
    if "lowrank" in out.keys():
        reason = json.loads(open(inp.lowrank_plans).read()).get("skipped") or "the experiment has no rows"
        compress_pareto(pd.read_parquet(inp.lowrank), "params_share",
                        "share of the planned matrices' parameters kept (rank-r factors: r (m + n) of m n)",
                        f"{model}: low-rank edits", out.lowrank, reason=reason, styles=LOWRANK_STYLES,
                        labelled=LOWRANK_LABELLED)
    if "correlations" in out.keys():
        sensitivity_figures(model, inp, out)


run_step(snakemake, main)
