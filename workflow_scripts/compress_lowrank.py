"""rule compress_lowrank: low-rank edits (truncated SVDs) at the energy, alpha and effective-rank
allocations with their mirrored, uniform and random controls, and LASER's single-matrix reductions
against the base and a random matrix, evaluated and compared."""

import logging

import pandas as pd

from blockscope.compression import experiments as compress
from blockscope.compression.low_rank import Factors
from blockscope.compression.low_rank_experiment import (
    chosen_lowrank_plan,
    lowrank_comparisons,
    lowrank_experiment,
    lowrank_session,
    planned_matrices,
)
from blockscope.diagnostic_layout import LOWRANK_ALLOCATION_COLUMNS, LOWRANK_SUMMARY_COLUMNS
from blockscope.evaluation.base_artifact import articles_covered
from blockscope.evaluation.variants import comparison_metric
from blockscope.io.atomic import write_json
from blockscope.layout import COMPARISON_COLUMNS
from blockscope.runtime.run_step import run_step


def write_tables(table, allocations, comparisons, output):
    compress.write_table(table, output.summary, output.summary_csv)
    compress.write_table(allocations, output.allocations, output.allocations_csv)
    compress.write_table(comparisons, output.comparisons, output.comparisons_csv)


def skip(model_name, reason, output):
    compress.skip_experiment(model_name, reason,
                             {(output.summary, output.summary_csv): LOWRANK_SUMMARY_COLUMNS,
                              (output.allocations, output.allocations_csv): LOWRANK_ALLOCATION_COLUMNS,
                              (output.comparisons, output.comparisons_csv): COMPARISON_COLUMNS}, [output.plans],
                             output.variant if "variant" in output.keys() else None)


def main(snakemake):
    model_name, settings, inputs, output = (snakemake.wildcards.model, snakemake.params.settings, snakemake.input,
                                            snakemake.output)
    evaluation = snakemake.params.evaluation
    session, reason = compress.experiment_session(
        model_name, inputs.dims, inputs.checkpoint, inputs.metrics, inputs.base, evaluation, snakemake.params.device)
    if reason:
        return skip(model_name, reason, output)
    session = lowrank_session(session, planned_matrices(pd.read_parquet(inputs.metrics), settings, model_name))
    factors = Factors(session.swap.original, session.device)
    outcome = lowrank_experiment(session.scorer(evaluation["bootstrap"]), session.matrices, factors, settings,
                                 model_name)
    table, allocations = outcome.table, outcome.details["allocations"]
    logging.info("[%s] %d plans scored:\n%s", model_name, len(table), table.to_string(max_cols=12))
    comparisons = lowrank_comparisons(table, outcome.scores, session.base, model_name, evaluation["confidence"],
                                      evaluation["min_effect"], articles_covered(session.base),
                                      comparison_metric(session.base), outcome.missing)
    logging.info("[%s] comparisons:\n%s", model_name, comparisons.to_string(max_cols=14))
    write_tables(table, allocations, comparisons, output)
    write_json({"model": model_name, "device": session.device, "matrices": len(session.matrices),
                "settings": settings, "stated_energy": outcome.details["stated_energy"],
                "missing_controls": {f"{plan} / {against}": why for (plan, against), why in outcome.missing.items()},
                "ranks": outcome.plans}, output.plans)
    if "variant" in output.keys():
        chosen = chosen_lowrank_plan(table)
        ranks = outcome.plans.get(chosen, {})
        compress.save_variant(session, lambda name, w: factors.weight(name, ranks[name], w) if name in ranks else w,
                              output.variant, {"model": model_name, "plan": chosen, "ranks": ranks})


run_step(snakemake, main)
