"""rule compress_sensitivity: each projection matrix alone quantised or pruned, its KL to the base (measured or
estimated from the output-error proxy)."""

import logging
from pathlib import Path

import pandas as pd

from blockscope.compression import experiments as compress
from blockscope.compression import sensitivity
from blockscope.compression.source_blocks import int4_group_for
from blockscope.io.atomic import write_json
from blockscope.layout import SENSITIVITY_ESTIMATE_COLUMNS
from blockscope.runtime.run_step import run_step


def settings_of(snakemake) -> dict:
    params = snakemake.params
    return {**params.settings, "group_size": params.group_size, "prune_target": params.prune_target}


def skip(model_name, reason, output, settings):
    tables = {(output.estimates, output.estimates_csv): SENSITIVITY_ESTIMATE_COLUMNS}
    compress.skip_experiment(model_name, reason, tables, [output.agreement])
    measured = [sensitivity.low_format(), settings["harsh_format"],
                sensitivity.prune_perturbation(settings["prune_target"])]
    empty = sensitivity.empty_matrices_table(sensitivity.perturbation_list(settings["formats"], measured))
    compress.write_table(empty, output.matrices, output.matrices_csv)


def precision_table(path):
    """precision_alpha_hill.csv, or None when there is none (or it is empty)."""
    try:
        return pd.read_csv(path) if path and Path(path).stat().st_size else None
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return None


def main(snakemake):
    model_name, inputs, output = snakemake.wildcards.model, snakemake.input, snakemake.output
    settings = settings_of(snakemake)
    session, reason = compress.experiment_session(
        model_name, inputs.dims, inputs.checkpoint, inputs.metrics, inputs.base, snakemake.params.evaluation,
        snakemake.params.device)
    if reason:
        return skip(model_name, reason, output, settings)
    # int3 and int4 in the groups compress_quant evaluates (on a GGUF source, not the source's blocks)
    settings["group_size"], group_reason = int4_group_for(
        session.matrices.get("source_dtype", pd.Series(dtype=object)).tolist(), settings["group_size"])
    estimates, matrices, agreement = sensitivity.sensitivity_experiment(
        session, settings, model_name, precision_table(inputs.get("precision")))
    agreement.update(group_reason=group_reason, configured_group_size=snakemake.params.group_size)
    logging.info("[%s] agreement of the proxy with the measured sample: %s", model_name,
                 {p: (a["spearman"], a["n"], a["calibration"]) for p, a in agreement["perturbations"].items()})
    compress.write_table(estimates, output.estimates, output.estimates_csv)
    compress.write_table(matrices, output.matrices, output.matrices_csv)
    write_json(agreement, output.agreement)


run_step(snakemake, main)
