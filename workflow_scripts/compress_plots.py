"""rule compress_plots: the Pareto figures of the quantisation and pruning experiments, from their tables."""

import json

import pandas as pd

from blockscope.reporting.figures.compression import compress_pareto
from blockscope.runtime.run_step import run_step


def main(snakemake):
    model, inp, out = snakemake.wildcards.model, snakemake.input, snakemake.output
    for table, plans, target, x, label, title in (
            (inp.quant, inp.quant_plans, out.quant, "bits_per_weight",
             "average bits per weight (scales and zero points included)", "quantisation plans"),
            (inp.prune, inp.prune_plans, out.prune, "sparsity",
             "achieved sparsity of the planned matrices (parameter-weighted)", "pruning plans")):
        reason = json.loads(open(plans).read()).get("skipped") or "the experiment has no rows"
        compress_pareto(pd.read_parquet(table), x, label, f"{model}: {title}", target, reason=reason)


run_step(snakemake, main)
