"""rule evaluate_base: the base model scored once on the corpus windows (an encoder: by its embeddings of the
corpus's sentences), kept for its variants."""

import json
import logging
from pathlib import Path

from blockscope.checkpoint.sources import sha256
from blockscope.evaluation.base_artifact import base_record, base_windows_table, save_base, skipped_base
from blockscope.evaluation.corpus import (
    article_starts,
    corpus_text,
    raw_file_rows,
    token_ids_and_starts,
    window_articles,
    window_offsets,
    window_settings,
    windows,
)
from blockscope.evaluation.encoder import encoder_base_from_corpus
from blockscope.evaluation.forward import evaluate_base
from blockscope.evaluation.loading import is_encoder, load_causal_lm, load_encoder, skip_reason
from blockscope.io.atomic import write_json, write_parquet
from blockscope.runtime.device import torch_device
from blockscope.runtime.gpu_slots import claim_gpu
from blockscope.runtime.run_step import run_step


def write(base, output):
    save_base(base, output.base)
    write_parquet(base_windows_table(base), output.windows)
    write_json(base_record(base, output.base), output.summary)


def encoder_base(snakemake, device: str, made: dict):
    """An encoder's base: its embeddings of the corpus's first eval.encoder_sentences sentences."""
    model_name, settings, checkpoint = snakemake.wildcards.model, snakemake.params.settings, snakemake.input.checkpoint
    model, tokenizer = load_encoder(model_name, checkpoint, device, settings["dtype"])
    base = encoder_base_from_corpus(model, tokenizer, raw_file_rows(snakemake.input.corpus), checkpoint, device,
                                    settings["encoder_sentences"], settings["encoder_group"],
                                    settings["encoder_batch_size"], settings["encoder_per_article"], made,
                                    model_name=model_name)
    logging.info("[%s] encoder base: %d sentences from %d articles in %d groups of %d, %s pooling%s, %d truncated at "
                 "%d tokens, on %s", model_name, len(base.neighbours), len(set(base.articles.tolist())), len(base.nll),
                 base.group, base.settings["pooling"], ", normalised" if base.settings["normalize"] else "",
                 base.settings["truncated"], base.settings["max_seq_length"], device)
    return base


def main(snakemake):
    model_name, settings, output = snakemake.wildcards.model, snakemake.params.settings, snakemake.output
    dims = json.loads(Path(snakemake.input.dims).read_text())
    reason = skip_reason(dims, snakemake.input.checkpoint, encoders=True)
    if reason:
        logging.info("[%s] skipped: %s", model_name, reason)
        return write(skipped_base(reason), output)
    gpu = claim_gpu(snakemake.params.device)  # this job's own GPU, before torch loads
    device = torch_device(snakemake.params.device)
    if is_encoder(dims, snakemake.input.checkpoint):
        made = {"dtype": settings["dtype"], "device": gpu.device if device == "cuda" else device,
                "corpus_sha256": sha256(snakemake.input.corpus)}
        return write(encoder_base(snakemake, device, made), output)
    seq_len, max_tokens = window_settings(settings, device)
    model, tokenizer = load_causal_lm(model_name, snakemake.input.checkpoint, device, settings["dtype"])
    rows = raw_file_rows(snakemake.input.corpus)
    ids, token_starts = token_ids_and_starts(tokenizer, corpus_text(rows))
    offsets = window_offsets(len(ids), seq_len, max_tokens, model=model_name)
    batches = windows(ids, seq_len, max_tokens, model=model_name)
    made = {"seq_len": seq_len, "max_tokens": max_tokens, "dtype": settings["dtype"],
            "device": gpu.device if device == "cuda" else device,
            "batch_size": settings["batch_size"], "corpus_sha256": sha256(snakemake.input.corpus),
            "window_offsets": offsets.tolist()}
    if token_starts is not None:  # a slow tokenizer has no character offsets: no article count
        made["window_articles"] = window_articles(token_starts, article_starts(rows), seq_len, offsets)
    base = evaluate_base(model, batches, device, settings["batch_size"], settings["kl_top_k"], made,
                         settings["kl_tail_samples"])
    write(base, output)
    logging.info("[%s] base: %s on %s; its top %d tokens hold all but %.3f of the probability on average, "
                 "%d draws per prediction stand for the rest", model_name, base.summary(), device, base.top_k,
                 base.rest_mass().mean(), base.settings["tail_samples"])


run_step(snakemake, main)
