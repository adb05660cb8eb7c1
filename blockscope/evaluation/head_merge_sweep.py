"""Head merging on a live model: each layer's attention slots, merge plans scored, the threshold sweep.

Per threshold: the head pairs of every layer whose similarity exceeds it, grouped into a merge
plan (connected components), scored against the base model; the control merges as many random
pairs per layer, once per seed; a paired bootstrap gives the perplexity change's CI.
"""

import numpy as np
import pandas as pd

from blockscope.analysis.heads import AttentionWeights
from blockscope.checkpoint.attention_layout import has_attention, projection_names, read_projections, write_projections
from blockscope.errors import BlockscopeError
from blockscope.evaluation import head_merge as hm
from blockscope.evaluation.forward import Evaluator
from blockscope.evaluation.scores import WindowScores, perplexity_change_ci

REPORTED = ("perplexity", "accuracy")


class LayerSlots:
    """One layer's attention tensors inside a live torch model: read, merge, write back, restore."""

    def __init__(self, model, names: dict, dims: dict, model_name: str = None):
        self.params = dict(model.named_parameters())
        self.names, self.dims = names, dims
        # Kept on the CPU in the parameters' own dtype: restore() puts back the exact bits.
        self.original = {n: self.params[n].detach().to("cpu", copy=True) for n, _ in names.values()}
        self.arrays = read_projections({n: t.float().numpy() for n, t in self.original.items()}, names, dims,
                                       model_name)

    @property
    def heads(self) -> int:
        return self.dims["heads"]

    def weights(self) -> AttentionWeights:
        return AttentionWeights.from_projections(self.arrays, self.dims)

    def apply(self, groups: list):
        """Merge these head groups into the live parameters."""
        import torch

        d = self.dims
        merged = hm.merge_groups(self.arrays, groups, d["heads"], d["kv_heads"], d["head_dim"])
        with torch.no_grad():
            for name, array in write_projections(merged, self.names, d).items():
                self.params[name].copy_(torch.from_numpy(np.ascontiguousarray(array)))

    def restore(self):
        """Put the original parameters back."""
        import torch

        with torch.no_grad():
            for name, original in self.original.items():
                self.params[name].copy_(original)


def layer_slots(model, inventory: pd.DataFrame, dims: dict, model_name: str = None, path=None,
                layers=None) -> dict:
    """layer index -> LayerSlots, for every layer with attention (of `layers` only, when given:
    headmerge.layers); BlockscopeError when none has."""
    slots = {}
    for layer, rows in inventory.dropna(subset=["layer_index"]).groupby("layer_index"):
        if layers is not None and int(layer) not in layers:
            continue
        names = projection_names(rows)
        if has_attention(names):
            slots[int(layer)] = LayerSlots(model, names, dims, model_name)
    if not slots:
        where = f" among headmerge.layers {layers}" if layers is not None else ""
        raise BlockscopeError(f"no layer with attention projections{where}", model=model_name, path=path,
                              fix="head merging needs q/k/v/o (or fused qkv) projections")
    return slots


def layer_similarities(slots: dict) -> dict:
    """layer -> measure -> H x H cosine matrix."""
    return {layer: hm.similarities(slot.weights()) for layer, slot in slots.items()}


def pairs_by_layer(sims: dict, measure: str, threshold: float) -> dict:
    """layer -> [i, j, s] pairs whose similarity exceeds the threshold (every layer, maybe empty)."""
    return {layer: hm.pairs_above(s[measure], threshold) for layer, s in sims.items()}


def random_pairs_like(pairs: dict, heads: int, rng: np.random.Generator) -> dict:
    """The control: as many random pairs in each layer as `pairs` has there."""
    return {layer: hm.random_pairs(heads, len(p), rng) for layer, p in pairs.items() if p}


def merge_plan(pairs: dict, heads: int) -> dict:
    """layer -> head groups (connected components of the pairs), for layers with any pair."""
    return {layer: hm.components(heads, p) for layer, p in pairs.items() if p}


def evaluate_plan(evaluator: Evaluator, model, slots: dict, plan: dict) -> WindowScores:
    """Score the model with every layer's groups merged, then put the weights back."""
    try:
        for layer, groups in plan.items():
            slots[layer].apply(groups)
        return evaluator.score(model)
    finally:
        for layer in plan:
            slots[layer].restore()


def control_summary(runs: list, seeds: int) -> dict:
    """The random-merge runs and their perplexity mean and spread, mean accuracy."""
    perplexity = [run["perplexity"] for run in runs]
    return {"seeds": seeds, "runs": runs, "perplexity_mean": float(np.mean(perplexity)),
            "perplexity_std": float(np.std(perplexity)), "accuracy_mean": float(np.mean([r["accuracy"] for r in runs]))}


def threshold_result(evaluator: Evaluator, model, slots: dict, sims: dict, base: WindowScores, threshold: float,
                     measure: str, random_seeds: int, bootstrap: int) -> dict:
    """One threshold: pairs and groups per layer, the merged model's scores, controls, CI."""
    heads = next(iter(slots.values())).heads
    pairs = pairs_by_layer(sims, measure, threshold)
    plan = merge_plan(pairs, heads)
    base_summary = base.summary()
    if plan:
        merged = evaluate_plan(evaluator, model, slots, plan)
        merged_summary, ci = merged.summary(), perplexity_change_ci(base, merged, bootstrap, seed=0)
    else:  # nothing merged: the merged model is the base
        merged_summary, ci = {**base_summary, "kl_divergence": 0.0, "top1_agreement": 1.0}, (0.0, 0.0)
    runs = []
    for seed in range(random_seeds):
        control = merge_plan(random_pairs_like(pairs, heads, np.random.default_rng(seed)), heads)
        runs.append(evaluate_plan(evaluator, model, slots, control).summary() if control else base_summary)
    return {
        "threshold": threshold,
        "original_metrics": {k: base_summary[k] for k in REPORTED},
        "merged_metrics": {k: merged_summary[k] for k in REPORTED},
        "total_merged_pairs": sum(len(p) for p in pairs.values()),
        "layer_results": {str(layer): {"num_pairs": len(pairs[layer]), "pairs": pairs[layer],
                                       "groups": hm.components(heads, pairs[layer]),
                                       "similarity_matrix": np.round(sims[layer][measure], 6).tolist(),
                                       "similarity_histogram": hm.similarity_histogram(sims[layer][measure])}
                          for layer in sims},
        "similarity": measure,
        "tokens_evaluated": base_summary["tokens_evaluated"],
        "kl_divergence": merged_summary["kl_divergence"],
        "top1_agreement": merged_summary["top1_agreement"],
        "perplexity_change_ci95": list(ci),
        "random_control": control_summary(runs, random_seeds),
    }


def sweep(evaluator: Evaluator, model, slots: dict, base: WindowScores, thresholds, measure: str,
          random_seeds: int, bootstrap: int, sims: dict = None):
    """threshold_result for each threshold in turn (a generator: each is ready to write as it comes)."""
    sims = layer_similarities(slots) if sims is None else sims
    for threshold in thresholds:
        yield threshold_result(evaluator, model, slots, sims, base, threshold, measure, random_seeds, bootstrap)


def summary_row(model_name: str, result: dict) -> dict:
    """One threshold's line of summary.parquet, from its result."""
    control = result["random_control"]
    return {"model": model_name, "threshold": result["threshold"], "similarity": result["similarity"],
            "merged_pairs": result["total_merged_pairs"],
            "base_perplexity": result["original_metrics"]["perplexity"],
            "base_accuracy": result["original_metrics"]["accuracy"],
            "perplexity": result["merged_metrics"]["perplexity"], "accuracy": result["merged_metrics"]["accuracy"],
            "kl_divergence": result["kl_divergence"], "top1_agreement": result["top1_agreement"],
            "ci_low": result["perplexity_change_ci95"][0], "ci_high": result["perplexity_change_ci95"][1],
            "random_perplexity_mean": control["perplexity_mean"], "random_perplexity_std": control["perplexity_std"],
            "random_accuracy_mean": control["accuracy_mean"],
            **{f"pairs_layer_{layer}": r["num_pairs"] for layer, r in result["layer_results"].items()}}
