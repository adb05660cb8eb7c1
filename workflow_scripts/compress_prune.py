"""rule compress_prune: magnitude pruning at AlphaPruning's allocation, uniform, mirrored and random ones,
evaluated and compared."""

import logging

from blockscope.compression import experiments as compress
from blockscope.compression.comparisons import prune_comparisons
from blockscope.compression.pruning import magnitude_prune
from blockscope.evaluation.base_artifact import articles_covered
from blockscope.evaluation.variants import comparison_metric
from blockscope.io.atomic import write_json
from blockscope.layout import COMPARISON_COLUMNS, COMPRESS_PRUNE_COLUMNS, PRUNE_ALLOCATION_COLUMNS
from blockscope.runtime.run_step import run_step


def write_tables(table, allocations, comparisons, output):
    compress.write_table(table, output.summary, output.summary_csv)
    compress.write_table(allocations, output.allocations, output.allocations_csv)
    compress.write_table(comparisons, output.comparisons, output.comparisons_csv)


def variant(output):
    """The variant folder when compress.save_variants asks for one, else None."""
    return output.variant if "variant" in output.keys() else None


def skip(model_name, reason, output):
    compress.skip_experiment(model_name, reason,
                             {(output.summary, output.summary_csv): COMPRESS_PRUNE_COLUMNS,
                              (output.allocations, output.allocations_csv): PRUNE_ALLOCATION_COLUMNS,
                              (output.comparisons, output.comparisons_csv): COMPARISON_COLUMNS}, [output.plans],
                             variant(output))


def main(snakemake):
    model_name, settings, inputs, output = (snakemake.wildcards.model, snakemake.params.settings, snakemake.input,
                                            snakemake.output)
    evaluation = snakemake.params.evaluation
    session, reason = compress.experiment_session(
        model_name, inputs.dims, inputs.checkpoint, inputs.metrics, inputs.base, evaluation, snakemake.params.device)
    if reason:
        return skip(model_name, reason, output)
    prune = settings["prune"]
    outcome = compress.prune_experiment(
        session.scorer(evaluation["bootstrap"]), session.matrices, snakemake.params.targets, prune["eps"],
        prune["alpha_metric"], settings["random_seeds"], model_name)
    table, allocations = outcome.table, outcome.details["allocations"]
    logging.info("[%s] %d plans scored:\n%s", model_name, len(table), table.to_string(max_cols=12))
    comparisons = prune_comparisons(table, outcome.scores, model_name, evaluation["confidence"],
                                    evaluation["min_effect"], articles_covered(session.base),
                                    comparison_metric(session.base))
    logging.info("[%s] comparisons:\n%s", model_name, comparisons.to_string(max_cols=14))
    write_tables(table, allocations, comparisons, output)
    write_json({"model": model_name, "alpha_metric": prune["alpha_metric"], "eps": prune["eps"],
                "targets": snakemake.params.targets, "device": session.device,
                "layer_sparsity": outcome.plans}, output.plans)
    if "variant" in output.keys():
        chosen = compress.chosen_plan(table)
        sparsity = allocations[allocations["plan"] == chosen].set_index("param_name")["allocated"]
        compress.save_variant(session, lambda name, w: magnitude_prune(w, float(sparsity[name])), output.variant,
                              {"model": model_name, "plan": chosen, "sparsity": sparsity.to_dict()})


run_step(snakemake, main)
