"""rule compress_prune: magnitude pruning at AlphaPruning's allocation, uniform, mirrored and random ones, evaluated."""

import json
import logging
from pathlib import Path

import pandas as pd

from blockscope import compress
from blockscope import compress_plans as plans
from blockscope.atomic import write_json
from blockscope.device import torch_device
from blockscope.headmerge_sweep import skip_reason
from blockscope.layout import COMPRESS_PRUNE_COLUMNS, PRUNE_ALLOCATION_COLUMNS
from blockscope.pruning import magnitude_prune
from blockscope.workflow import run_step


def write_tables(table, allocations, output):
    compress.write_table(table, output.summary, output.summary_csv)
    compress.write_table(allocations, output.allocations, output.allocations_csv)


def skip(model_name, reason, output):
    logging.info("[%s] skipped: %s", model_name, reason)
    write_tables(pd.DataFrame(columns=COMPRESS_PRUNE_COLUMNS), pd.DataFrame(columns=PRUNE_ALLOCATION_COLUMNS), output)
    write_json({"model": model_name, "skipped": reason}, output.plans)
    if "variant" in output.keys():
        compress.skipped_variant(output.variant, reason)


def main(snakemake):
    model_name, settings, output = snakemake.wildcards.model, snakemake.params.settings, snakemake.output
    reason = skip_reason(json.loads(Path(snakemake.input.dims).read_text()), snakemake.input.checkpoint)
    if reason:
        return skip(model_name, reason, output)
    device = torch_device(snakemake.params.device)
    session = compress.open_session(model_name, snakemake.input.checkpoint, pd.read_parquet(snakemake.input.metrics),
                                    snakemake.input.base, snakemake.params.evaluation, device,
                                    snakemake.input.metrics)
    prune = settings["prune"]
    table, allocations, allocation_json = compress.prune_experiment(
        session.scorer(snakemake.params.evaluation["bootstrap"]), session.matrices, snakemake.params.targets,
        prune["eps"], prune["alpha_metric"], settings["random_seeds"], model_name)
    for line in compress.prune_sentences(table):
        logging.info("[%s] %s", model_name, line)
    write_tables(table, allocations, output)
    write_json({"model": model_name, "alpha_metric": prune["alpha_metric"], "eps": prune["eps"],
                "targets": snakemake.params.targets, "device": device,
                "layer_sparsity": allocation_json}, output.plans)
    if "variant" in output.keys():
        chosen = compress.chosen_plan(table)
        sparsity = allocations[allocations["plan"] == chosen].set_index("param_name")["allocated"]
        compress.save_variant(session, lambda name, w: magnitude_prune(w, float(sparsity[name])), output.variant,
                              {"model": model_name, "plan": chosen, "sparsity": sparsity.to_dict()})


run_step(snakemake, main)
