"""rule compress_quant: quantisation plans (uniform, the presets' hints, mirrors, random controls) evaluated."""

import logging

from blockscope.compression import experiments as compress
from blockscope.compression import plans
from blockscope.compression.formats import quantize
from blockscope.io.atomic import write_json
from blockscope.layout import COMPRESS_QUANT_COLUMNS
from blockscope.runtime.run_step import run_step


def variant(output):
    """The variant folder when compress.save_variants asks for one, else None."""
    return output.variant if "variant" in output.keys() else None


def skip(model_name, reason, output):
    compress.skip_experiment(model_name, reason, {(output.summary, output.summary_csv): COMPRESS_QUANT_COLUMNS},
                             [output.plans, *output.hints], variant(output))


def main(snakemake):
    model_name, settings, inputs, output = (snakemake.wildcards.model, snakemake.params.settings, snakemake.input,
                                            snakemake.output)
    session, reason = compress.experiment_session(
        model_name, inputs.dims, inputs.checkpoint, inputs.metrics, inputs.base, snakemake.params.evaluation,
        snakemake.params.device)
    if reason:
        return skip(model_name, reason, output)
    device = session.device
    group_size = snakemake.params.group_size
    table, plan_formats, hints = compress.quant_experiment(
        session.scorer(snakemake.params.evaluation["bootstrap"]), session.matrices, settings["quant"]["formats"],
        group_size, settings["random_seeds"], model_name)
    logging.info("[%s] %d plans scored:\n%s", model_name, len(table), table.to_string(max_cols=12))
    compress.write_table(table, output.summary, output.summary_csv)
    write_json({"model": model_name, "group_size": group_size, "device": device, "plans": plan_formats}, output.plans)
    for path, (preset, (preset_settings, hint_table)) in zip(output.hints, hints.items()):
        write_json(plans.hint_export(model_name, hint_table, preset_settings), path)
    if "variant" in output.keys():
        chosen = compress.chosen_plan(table)
        formats = plan_formats[chosen]
        compress.save_variant(session, lambda name, w: quantize(w, formats[name], group_size), output.variant,
                              {"model": model_name, "plan": chosen, "group_size": group_size, "formats": formats})


run_step(snakemake, main)
