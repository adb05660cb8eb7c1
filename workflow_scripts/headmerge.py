"""rule headmerge: merge similar attention heads at each threshold; evaluate against controls."""

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from blockscope import headmerge_sweep as sweep
from blockscope.atomic import write_json, write_parquet
from blockscope.device import torch_device
from blockscope.evaluate import Evaluator, corpus_text, raw_file_rows, windows
from blockscope.gpu_slots import claim_gpu
from blockscope.headmerge import similarity_table
from blockscope.selection import parse_layers
from blockscope.sources import sha256
from blockscope.workflow import run_step


def skip(model_name, reason, settings, output):
    logging.info("[%s] skipped: %s", model_name, reason)
    for t, path in zip(settings["thresholds"], output.thresholds):
        write_json({"threshold": t, "skipped": reason}, path)
    write_parquet(pd.DataFrame(), output.summary)
    write_parquet(similarity_table({}), output.similarities)


def main(snakemake):
    model_name, settings, output = snakemake.wildcards.model, snakemake.params.settings, snakemake.output
    dims = json.loads(Path(snakemake.input.dims).read_text())
    reason = sweep.skip_reason(dims, snakemake.input.checkpoint)
    if reason:
        return skip(model_name, reason, settings, output)
    gpu = claim_gpu(snakemake.params.device)  # this job's own GPU, before torch loads
    device = torch_device(snakemake.params.device)
    seq_len, max_tokens = sweep.window_settings(settings, device)
    model, tokenizer = sweep.load_causal_lm(model_name, snakemake.input.checkpoint, device, settings["dtype"])
    ids = np.asarray(tokenizer(corpus_text(raw_file_rows(snakemake.input.corpus)))["input_ids"])
    evaluator = Evaluator(windows(ids, seq_len, max_tokens, model=model_name), device=device,
                          batch_size=settings["batch_size"], cache_mb=settings["kl_cache_mb"])
    base = evaluator.score(model, base=True)
    logging.info("[%s] base: %s on %s", model_name, base.summary(), device)

    slots = sweep.layer_slots(model, pd.read_parquet(snakemake.input.inventory), dims, model_name,
                              path=snakemake.input.inventory, layers=parse_layers(settings.get("layers")))
    sims = sweep.layer_similarities(slots)
    write_parquet(similarity_table(sims), output.similarities)
    run_info = {"seq_len": seq_len, "dtype": settings["dtype"], "device": gpu.device if device == "cuda" else device,
                "corpus_sha256": sha256(snakemake.input.corpus)}
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
