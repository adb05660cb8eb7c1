"""rule headmerge: merge similar attention heads at each threshold; evaluate against controls (a causal LM by
its next-token predictions, an encoder by its sentence embeddings)."""

import json
import logging
from pathlib import Path

import pandas as pd

from blockscope.checkpoint.selection import parse_layers
from blockscope.evaluation import head_merge_sweep as sweep
from blockscope.evaluation.base_artifact import load_base
from blockscope.evaluation.head_merge import similarity_table
from blockscope.evaluation.loading import load_model
from blockscope.evaluation.variants import REPORTED, comparison_metric, is_encoder_base, variant_evaluator
from blockscope.io.atomic import write_csv, write_json, write_parquet
from blockscope.layout import COMPARISON_COLUMNS
from blockscope.runtime.device import torch_device
from blockscope.runtime.gpu_slots import claim_gpu
from blockscope.runtime.run_step import run_step


def skip(model_name, reason, settings, output):
    logging.info("[%s] skipped: %s", model_name, reason)
    for t, path in zip(settings["thresholds"], output.thresholds):
        write_json({"threshold": t, "skipped": reason}, path)
    write_tables(pd.DataFrame(), pd.DataFrame(columns=COMPARISON_COLUMNS), output)
    write_parquet(similarity_table({}), output.similarities)


def write_tables(summary, comparisons, output):
    """summary.parquet, and comparisons.parquet with its CSV copy."""
    write_parquet(summary, output.summary)
    write_parquet(comparisons, output.comparisons)
    write_csv(comparisons, output.comparisons_csv)


def main(snakemake):
    model_name, settings, output = snakemake.wildcards.model, snakemake.params.settings, snakemake.output
    base = load_base(snakemake.input.base)  # rule evaluate_base: the base model is not run again here
    if base.skipped:
        return skip(model_name, base.skipped, settings, output)
    gpu = claim_gpu(snakemake.params.device)  # this job's own GPU, before torch loads
    device = torch_device(snakemake.params.device)
    model, _ = load_model(model_name, snakemake.input.checkpoint, device, settings["dtype"], is_encoder_base(base))
    evaluator = variant_evaluator(base, device=device, batch_size=settings["batch_size"])
    logging.info("[%s] base (%s): %s; variants scored on %s", model_name, snakemake.input.base, base.summary(),
                 device)

    dims = json.loads(Path(snakemake.input.dims).read_text())
    slots = sweep.layer_slots(model, pd.read_parquet(snakemake.input.inventory), dims, model_name,
                              path=snakemake.input.inventory, layers=parse_layers(settings.get("layers")))
    sims = sweep.layer_similarities(slots)
    write_parquet(similarity_table(sims), output.similarities)
    # an encoder's windows are groups of sentences: no seq_len; encoder_group sentences each
    run_info = {"seq_len": base.settings.get("seq_len"), "dtype": settings["dtype"],
                "device": gpu.device if device == "cuda" else device, "corpus_sha256": base.settings["corpus_sha256"],
                **({"group": base.settings["group"]} if is_encoder_base(base) else {})}
    quality, _ = REPORTED[comparison_metric(base)]  # perplexity, or an encoder's embedding_cosine
    runs = []
    results = sweep.sweep(evaluator, model, slots, base, settings["thresholds"], settings["similarity"],
                          settings["random_seeds"], settings["bootstrap"], sims=sims)
    for run, path in zip(results, output.thresholds):
        result, control = run.result, run.result["random_control"]
        write_json({**result, **run_info}, path)
        runs.append(run)  # its scores stay in memory for the comparisons: nothing is scored again
        logging.info("[%s] threshold %g: %d pairs, %d heads removed, %s %.4f (base %.4f); %d random controls, "
                     "%s %s", model_name, result["threshold"], result["total_merged_pairs"], result["heads_removed"],
                     quality, result["merged_metrics"][quality], result["original_metrics"][quality],
                     control["distinct"], quality, "-" if control[f"{quality}_min"] is None else
                     f"{control[f'{quality}_min']:.4f}-{control[f'{quality}_max']:.4f}")
        if "fewer" in control:
            logging.info("[%s] threshold %g: random controls %s", model_name, result["threshold"], control["fewer"])
    summary, comparisons = sweep.sweep_tables(model_name, runs, base, settings["confidence"], settings["min_effect"])
    write_tables(summary, comparisons, output)


run_step(snakemake, main)
