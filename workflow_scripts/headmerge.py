"""rule headmerge: merge similar attention heads at each threshold; evaluate against controls."""

import json
import logging
from pathlib import Path

import pandas as pd

from blockscope.checkpoint.selection import parse_layers
from blockscope.evaluation import head_merge_sweep as sweep
from blockscope.evaluation.base_artifact import load_base
from blockscope.evaluation.forward import Evaluator
from blockscope.evaluation.head_merge import similarity_table
from blockscope.evaluation.loading import load_causal_lm
from blockscope.io.atomic import write_json, write_parquet
from blockscope.runtime.device import torch_device
from blockscope.runtime.gpu_slots import claim_gpu
from blockscope.runtime.run_step import run_step


def skip(model_name, reason, settings, output):
    logging.info("[%s] skipped: %s", model_name, reason)
    for t, path in zip(settings["thresholds"], output.thresholds):
        write_json({"threshold": t, "skipped": reason}, path)
    write_parquet(pd.DataFrame(), output.summary)
    write_parquet(similarity_table({}), output.similarities)


def main(snakemake):
    model_name, settings, output = snakemake.wildcards.model, snakemake.params.settings, snakemake.output
    base = load_base(snakemake.input.base)  # rule evaluate_base: the base model is not run again here
    if base.skipped:
        return skip(model_name, base.skipped, settings, output)
    gpu = claim_gpu(snakemake.params.device)  # this job's own GPU, before torch loads
    device = torch_device(snakemake.params.device)
    model, _ = load_causal_lm(model_name, snakemake.input.checkpoint, device, settings["dtype"])
    evaluator = Evaluator.of(base, device=device, batch_size=settings["batch_size"])
    logging.info("[%s] base (%s): %s; variants scored on %s", model_name, snakemake.input.base, base.summary(),
                 device)

    dims = json.loads(Path(snakemake.input.dims).read_text())
    slots = sweep.layer_slots(model, pd.read_parquet(snakemake.input.inventory), dims, model_name,
                              path=snakemake.input.inventory, layers=parse_layers(settings.get("layers")))
    sims = sweep.layer_similarities(slots)
    write_parquet(similarity_table(sims), output.similarities)
    run_info = {"seq_len": base.settings["seq_len"], "dtype": settings["dtype"],
                "device": gpu.device if device == "cuda" else device, "corpus_sha256": base.settings["corpus_sha256"]}
    rows = []
    results = sweep.sweep(evaluator, model, slots, base, settings["thresholds"], settings["similarity"],
                          settings["random_seeds"], settings["bootstrap"], sims=sims)
    for result, path in zip(results, output.thresholds):
        write_json({**result, **run_info}, path)
        rows.append(sweep.summary_row(model_name, result))
        control = result["random_control"]
        logging.info("[%s] threshold %g: %d pairs, ppl %.3f (base %.3f, random %.3f +- %.3f)", model_name,
                     result["threshold"], result["total_merged_pairs"], result["merged_metrics"]["perplexity"],
                     result["original_metrics"]["perplexity"], control["perplexity_mean"], control["perplexity_std"])
    write_parquet(pd.DataFrame(rows), output.summary)


run_step(snakemake, main)
