"""rule evaluate_base: the base model scored once on the corpus windows, kept for its variants."""

import json
import logging
from pathlib import Path

import numpy as np

from blockscope.checkpoint.sources import sha256
from blockscope.evaluation.base_artifact import base_record, base_windows_table, save_base, skipped_base
from blockscope.evaluation.corpus import corpus_text, raw_file_rows, window_settings, windows
from blockscope.evaluation.forward import evaluate_base
from blockscope.evaluation.loading import load_causal_lm, skip_reason
from blockscope.io.atomic import write_json, write_parquet
from blockscope.runtime.device import torch_device
from blockscope.runtime.gpu_slots import claim_gpu
from blockscope.runtime.run_step import run_step


def write(base, output):
    save_base(base, output.base)
    write_parquet(base_windows_table(base), output.windows)
    write_json(base_record(base, output.base), output.summary)


def main(snakemake):
    model_name, settings, output = snakemake.wildcards.model, snakemake.params.settings, snakemake.output
    reason = skip_reason(json.loads(Path(snakemake.input.dims).read_text()), snakemake.input.checkpoint)
    if reason:
        logging.info("[%s] skipped: %s", model_name, reason)
        return write(skipped_base(reason), output)
    gpu = claim_gpu(snakemake.params.device)  # this job's own GPU, before torch loads
    device = torch_device(snakemake.params.device)
    seq_len, max_tokens = window_settings(settings, device)
    model, tokenizer = load_causal_lm(model_name, snakemake.input.checkpoint, device, settings["dtype"])
    ids = np.asarray(tokenizer(corpus_text(raw_file_rows(snakemake.input.corpus)))["input_ids"])
    made = {"seq_len": seq_len, "max_tokens": max_tokens, "dtype": settings["dtype"],
            "device": gpu.device if device == "cuda" else device,
            "batch_size": settings["batch_size"], "corpus_sha256": sha256(snakemake.input.corpus)}
    base = evaluate_base(model, windows(ids, seq_len, max_tokens, model=model_name), device,
                         settings["batch_size"], settings["kl_top_k"], made, settings["kl_tail_samples"])
    write(base, output)
    logging.info("[%s] base: %s on %s; its top %d tokens hold all but %.3f of the probability on average, "
                 "%d draws per prediction stand for the rest", model_name, base.summary(), device, base.top_k,
                 base.rest_mass().mean(), base.settings["tail_samples"])


run_step(snakemake, main)
