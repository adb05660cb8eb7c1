"""rule headmerge: merge similar attention heads at each threshold; evaluate against controls."""

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from blockscope import headmerge as hm
from blockscope.atomic import write_json, write_parquet
from blockscope.errors import BlockscopeError
from blockscope.evaluate import Evaluator, corpus_text, perplexity_change_ci, raw_file_rows, windows
from blockscope.heads import AttentionWeights, has_attention, projection_names, read_projections, write_projections
from blockscope.sources import sha256
from blockscope.plots import headmerge_pairs, headmerge_sweep, similarity_histograms, similarity_matrices
from blockscope.spectra import resolve_backend
from blockscope.workflow import run_step


def is_causal(dims) -> bool:
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in dims.get("architectures", []))


def load(model_name, checkpoint, device, dtype):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=getattr(torch, dtype)).to(device).eval()
    except Exception as exc:
        raise BlockscopeError(f"transformers cannot load the model ({type(exc).__name__}: {exc})".replace("\n", " "),
                              model=model_name, path=checkpoint, fix="check config.json and the weights") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    except Exception as exc:
        raise BlockscopeError(f"no usable tokenizer ({type(exc).__name__})", model=model_name, path=checkpoint,
                              fix="add tokenizer.json / tokenizer_config.json to the checkpoint") from None
    return model, tokenizer


class LayerSlots:
    """One layer's attention tensors inside a live torch model: read, merge, write back, restore."""

    def __init__(self, model, names, dims):
        self.params = dict(model.named_parameters())
        self.names, self.dims = names, dims
        self.original = {n: self.params[n].detach().cpu().numpy().copy() for n, _ in names.values()}
        self.arrays = read_projections(self.original, names, dims)

    def weights(self) -> AttentionWeights:
        d = self.dims
        return AttentionWeights(self.arrays["q"], self.arrays["k"], self.arrays["v"], self.arrays["o"],
                                d["heads"], d["kv_heads"], d["head_dim"])

    def apply(self, groups):
        import torch

        merged = hm.merge_groups(self.arrays, groups, self.dims["heads"], self.dims["kv_heads"], self.dims["head_dim"])
        for name, array in write_projections(merged, self.names, self.dims).items():
            with torch.no_grad():
                self.params[name].copy_(torch.from_numpy(np.ascontiguousarray(array)))

    def restore(self):
        import torch

        for name, array in self.original.items():
            with torch.no_grad():
                self.params[name].copy_(torch.from_numpy(array))


def histogram(similarity, bins=20) -> dict:
    """Counts of the pairwise similarities of one layer over [-1, 1]."""
    counts, edges = np.histogram(similarity[np.triu_indices_from(similarity, 1)], bins=bins, range=(-1, 1))
    return {"edges": np.round(edges, 3).tolist(), "counts": counts.tolist()}


def evaluate_plan(evaluator, model, slots, plan) -> object:
    """Score the model with every layer's groups merged, then put the weights back."""
    for layer, groups in plan.items():
        slots[layer].apply(groups)
    try:
        return evaluator.score(model)
    finally:
        for layer in plan:
            slots[layer].restore()


def main(snakemake):
    model_name, settings = snakemake.wildcards.model, snakemake.params.settings
    dims = json.loads(Path(snakemake.input.dims).read_text())
    thresholds = settings["thresholds"]
    if not is_causal(dims):
        reason = f"not a causal LM ({', '.join(dims.get('architectures') or ['unknown'])}): no next-token evaluation"
        logging.info("[%s] skipped: %s", model_name, reason)
        for t, path in zip(thresholds, snakemake.output.thresholds):
            write_json({"threshold": t, "skipped": reason}, path)
        write_parquet(pd.DataFrame(), snakemake.output.summary)
        for path in (snakemake.output.sweep, snakemake.output.pairs, snakemake.output.matrices, snakemake.output.histograms):
            similarity_histograms({}, f"{model_name}: skipped ({reason})", path)
        return
    import torch

    device = "cuda" if resolve_backend(snakemake.params.device) == "cuda" else "cpu"
    seq_len, max_tokens = settings["seq_len"], settings["max_tokens"]
    if device == "cuda":
        seq_len, max_tokens = settings.get("gpu_seq_len", seq_len), settings.get("gpu_max_tokens", max_tokens)
    model, tokenizer = load(model_name, snakemake.input.checkpoint, device, settings["dtype"])
    text = corpus_text(raw_file_rows(snakemake.input.corpus))
    ids = np.asarray(tokenizer(text)["input_ids"])
    evaluator = Evaluator(windows(ids, seq_len, max_tokens, model=model_name), device=device,
                          batch_size=settings["batch_size"], cache_mb=settings["kl_cache_mb"])
    base = evaluator.score(model, base=True)
    base_summary = base.summary()
    logging.info("[%s] base: %s on %s", model_name, base_summary, device)

    inventory = pd.read_parquet(snakemake.input.inventory)
    slots, sims = {}, {}
    for layer, rows in inventory.dropna(subset=["layer_index"]).groupby("layer_index"):
        names = projection_names(rows)
        if not has_attention(names):
            continue
        slots[int(layer)] = LayerSlots(model, names, dims)
        sims[int(layer)] = hm.similarities(slots[int(layer)].weights())
    if not slots:
        raise BlockscopeError("no layer with attention projections", model=model_name, path=snakemake.input.inventory,
                              fix="head merging needs q/k/v/o (or fused qkv) projections")
    measure = settings["similarity"]
    summary_rows = []
    for t, path in zip(thresholds, snakemake.output.thresholds):
        pairs = {layer: hm.pairs_above(s[measure], t) for layer, s in sims.items()}
        total = sum(len(p) for p in pairs.values())
        plan = {layer: hm.components(dims["heads"], p) for layer, p in pairs.items() if p}
        merged = evaluate_plan(evaluator, model, slots, plan) if plan else base
        merged_summary = merged.summary()
        if not plan:  # nothing merged: the merged model is the base
            merged_summary.update(kl_divergence=0.0, top1_agreement=1.0)
        controls = []
        for seed in range(settings["random_seeds"]):
            rng = np.random.default_rng(seed)
            random_plan = {layer: hm.components(dims["heads"], hm.random_pairs(dims["heads"], len(p), rng))
                           for layer, p in pairs.items() if p}
            controls.append(evaluate_plan(evaluator, model, slots, random_plan).summary() if random_plan else base_summary)
        ci = perplexity_change_ci(base, merged, settings["bootstrap"], seed=0) if plan else (0.0, 0.0)
        control_ppl = [c["perplexity"] for c in controls]
        result = {
            "threshold": t,
            "original_metrics": {k: base_summary[k] for k in ("perplexity", "accuracy")},
            "merged_metrics": {k: merged_summary[k] for k in ("perplexity", "accuracy")},
            "total_merged_pairs": total,
            "layer_results": {str(layer): {"num_pairs": len(pairs[layer]), "pairs": pairs[layer],
                                           "groups": hm.components(dims["heads"], pairs[layer]),
                                           "similarity_matrix": np.round(sims[layer][measure], 6).tolist(),
                                           "similarity_histogram": histogram(sims[layer][measure])}
                              for layer in sims},
            "similarity": measure,
            "tokens_evaluated": base_summary["tokens_evaluated"],
            "kl_divergence": merged_summary["kl_divergence"],
            "top1_agreement": merged_summary["top1_agreement"],
            "perplexity_change_ci95": list(ci),
            "random_control": {"seeds": settings["random_seeds"], "runs": controls,
                               "perplexity_mean": float(np.mean(control_ppl)), "perplexity_std": float(np.std(control_ppl)),
                               "accuracy_mean": float(np.mean([c["accuracy"] for c in controls]))},
            "seq_len": seq_len, "dtype": settings["dtype"], "device": device,
            "corpus_sha256": sha256(snakemake.input.corpus),
        }
        write_json(result, path)
        summary_rows.append({"model": model_name, "threshold": t, "similarity": measure, "merged_pairs": total,
                             "base_perplexity": base_summary["perplexity"], "base_accuracy": base_summary["accuracy"],
                             "perplexity": merged_summary["perplexity"], "accuracy": merged_summary["accuracy"],
                             "kl_divergence": merged_summary["kl_divergence"],
                             "top1_agreement": merged_summary["top1_agreement"],
                             "ci_low": ci[0], "ci_high": ci[1],
                             "random_perplexity_mean": result["random_control"]["perplexity_mean"],
                             "random_perplexity_std": result["random_control"]["perplexity_std"],
                             "random_accuracy_mean": result["random_control"]["accuracy_mean"],
                             **{f"pairs_layer_{layer}": len(p) for layer, p in pairs.items()}})
        logging.info("[%s] threshold %g: %d pairs, ppl %.3f (base %.3f, random %.3f +- %.3f)", model_name, t, total,
                     merged_summary["perplexity"], base_summary["perplexity"], np.mean(control_ppl), np.std(control_ppl))
    summary = pd.DataFrame(summary_rows)
    write_parquet(summary, snakemake.output.summary)
    layers = sorted(sims)
    chosen = [layers[0], layers[len(layers) // 2], layers[-1]]
    headmerge_sweep(summary, f"{model_name}: head merging by {measure} similarity", snakemake.output.sweep)
    headmerge_pairs(summary, layers, f"{model_name}: merged head pairs per layer", snakemake.output.pairs)
    similarity_matrices({layer: sims[layer] for layer in chosen}, f"{model_name}: head similarity", snakemake.output.matrices)
    similarity_histograms({m: np.concatenate([s[m][np.triu_indices_from(s[m], 1)] for s in sims.values()])
                           for m in hm.MEASURES}, f"{model_name}: pairwise head similarity, all layers",
                          snakemake.output.histograms, thresholds)


run_step(snakemake, main)
