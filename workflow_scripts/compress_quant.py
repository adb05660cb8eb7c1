"""rule compress_quant: quantisation plans (uniform, the presets' hints, mirrors, random and budget-matched
random controls, the oracle when per-matrix sensitivity estimates exist) evaluated and compared."""

import logging

import pandas as pd

from blockscope.compression import experiments as compress
from blockscope.compression import plans
from blockscope.compression.comparisons import quant_comparisons
from blockscope.compression.formats import quantize
from blockscope.compression.source_blocks import int4_group_for
from blockscope.evaluation.base_artifact import articles_covered
from blockscope.evaluation.variants import comparison_metric
from blockscope.io.atomic import write_json
from blockscope.layout import COMPARISON_COLUMNS, COMPRESS_QUANT_COLUMNS
from blockscope.runtime.run_step import run_step


def variant(output):
    """The variant folder when compress.save_variants asks for one, else None."""
    return output.variant if "variant" in output.keys() else None


def skip(model_name, reason, output):
    compress.skip_experiment(model_name, reason, {(output.summary, output.summary_csv): COMPRESS_QUANT_COLUMNS,
                                                  (output.comparisons, output.comparisons_csv): COMPARISON_COLUMNS},
                             [output.plans, *output.hints], variant(output))


def sensitivity_estimates(inputs):
    """The per-matrix sensitivity estimates when compress.sensitivity gave them as an input, else None."""
    path = inputs.estimates if "estimates" in inputs.keys() else None
    return pd.read_parquet(path) if path else None


def main(snakemake):
    model_name, settings, inputs, output = (snakemake.wildcards.model, snakemake.params.settings, snakemake.input,
                                            snakemake.output)
    evaluation = snakemake.params.evaluation
    session, reason = compress.experiment_session(
        model_name, inputs.dims, inputs.checkpoint, inputs.metrics, inputs.base, evaluation, snakemake.params.device)
    if reason:
        return skip(model_name, reason, output)
    # On a GGUF-derived checkpoint int4's groups must not coincide with the source's blocks.
    group_size, group_reason = int4_group_for(session.matrices.get("source_dtype", pd.Series(dtype=object)).tolist(),
                                              snakemake.params.group_size)
    outcome = compress.quant_experiment(
        session.scorer(evaluation["bootstrap"]), session.matrices, settings["quant"]["formats"], group_size,
        settings["random_seeds"], settings["budget_random_plans"], model_name, sensitivity_estimates(inputs),
        settings["quant"]["presets"])
    table = outcome.table
    logging.info("[%s] %d plans scored:\n%s", model_name, len(table), table.to_string(max_cols=12))
    comparisons = quant_comparisons(table, outcome.scores, model_name, evaluation["confidence"],
                                    evaluation["min_effect"], articles_covered(session.base), outcome.missing,
                                    comparison_metric(session.base))
    logging.info("[%s] comparisons:\n%s", model_name, comparisons.to_string(max_cols=14))
    compress.write_table(table, output.summary, output.summary_csv)
    compress.write_table(comparisons, output.comparisons, output.comparisons_csv)
    write_json({"model": model_name, "group_size": group_size, "group_reason": group_reason,
                "configured_group_size": snakemake.params.group_size, "device": session.device, "plans": outcome.plans,
                "simulated_as": outcome.details["simulated_as"]}, output.plans)
    for path, (preset_settings, hint_table) in zip(output.hints, outcome.details["hints"].values()):
        write_json(plans.hint_export(model_name, hint_table, preset_settings), path)
    if "variant" in output.keys():
        chosen = compress.chosen_plan(table)
        formats = outcome.plans[chosen]
        compress.save_variant(session, lambda name, w: quantize(w, formats[name], group_size), output.variant,
                              {"model": model_name, "plan": chosen, "group_size": group_size, "formats": formats})


run_step(snakemake, main)
