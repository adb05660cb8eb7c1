"""Head merging on a live model: each layer's attention slots, merge plans scored, the threshold
sweep, and its comparisons. A causal LM is scored by its next-token predictions, an encoder by its
sentence embeddings (evaluation.variants): the comparisons' field nll holds either's loss per
window, lower is better; a threshold's record and summary row hold the kind's own numbers.

Per threshold: the head pairs of every layer whose similarity exceeds it, grouped into a merge
plan (connected components), scored against the base model; its controls are the same groups
with each layer's heads relabelled at random (head_merge.relabelled_controls: as many heads
removed per layer), distinct, up to headmerge.random_seeds of them. Each distinct plan is scored
once (PlanScorer). Merged minus base and merged minus the controls' mean are paired t intervals
over windows (paired_tests); the headline threshold is chosen on the even windows and reported
on the odd ones (half_columns, head_merge.headline_index).
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from blockscope.analysis.heads import AttentionWeights
from blockscope.checkpoint.attention_layout import has_attention, projection_names, read_projections, write_projections
from blockscope.errors import BlockscopeError
from blockscope.evaluation import head_merge as hm
from blockscope.evaluation.base_artifact import articles_covered
from blockscope.evaluation.corpus import articles_in
from blockscope.evaluation.encoder_base import EncoderScores
from blockscope.evaluation.paired_tests import comparison_row, paired_difference, rank_p_value, verdict
from blockscope.evaluation.scores import WindowScores, perplexity_change_ci
from blockscope.evaluation.variants import (
    REPORTED,
    comparison_metric,
    is_encoder_base,
    reported_metrics,
    score_fields,
)
from blockscope.layout import COMPARISON_COLUMNS


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


def merge_plan(pairs: dict, heads: int) -> dict:
    """layer -> head groups (connected components of the pairs), for layers with any pair."""
    return {layer: hm.components(heads, p) for layer, p in pairs.items() if p}


def evaluate_plan(evaluator, model, slots: dict, plan: dict) -> WindowScores:
    """Score the model with every layer's groups merged (evaluator: variants.variant_evaluator),
    then put the weights back."""
    try:
        for layer, groups in plan.items():
            slots[layer].apply(groups)
        return evaluator.score(model)
    finally:
        for layer in plan:
            slots[layer].restore()


def unchanged_scores(base: WindowScores) -> WindowScores:
    """The base's scores as a variant's: a plan that merges nothing is the base model (KL 0, agreement
    1; an encoder's embedding loss 0, every neighbour the base's), of the base's kind."""
    kind = EncoderScores if is_encoder_base(base) else WindowScores
    return kind(nll=list(base.nll), correct=list(base.correct), tokens=list(base.tokens),
                kl=[0.0] * len(base.tokens), agree=list(base.tokens))


class PlanScorer:
    """Scores merge plans, each distinct plan once: a threshold that merges the same heads as another,
    or a control equal to a plan already scored, reuses its scores; the empty plan is the base (no pass)."""

    def __init__(self, evaluator, model, slots: dict, base: WindowScores):
        self.evaluator, self.model, self.slots = evaluator, model, slots
        self.unchanged = unchanged_scores(base)
        self.scored = {}

    def __call__(self, plan: dict) -> WindowScores:
        key = hm.plan_key(plan)
        if not key:
            return self.unchanged
        if key not in self.scored:
            self.scored[key] = evaluate_plan(self.evaluator, self.model, self.slots, plan)
        return self.scored[key]


def control_summary(runs: list, requested: int, possible: int, measures=REPORTED["nll"]) -> dict:
    """The controls' runs, the mean, median, min and max of the first of `measures` (perplexity;
    an encoder's embedding_cosine) and the mean of the second (accuracy; retrieval_agreement),
    None without a control; how many were asked for and found, and why fewer when fewer."""
    first, second = ([run[m] for run in runs] for m in measures)
    stat = lambda f, values: float(f(values)) if values else None  # noqa: E731
    out = {"matching": "heads removed per layer: each layer's groups with its heads relabelled at random",
           "requested": requested, "distinct": len(runs), "runs": runs,
           **{f"{measures[0]}_{name}": stat(f, first) for name, f in
              (("mean", np.mean), ("median", np.median), ("min", np.min), ("max", np.max))},
           f"{measures[1]}_mean": stat(np.mean, second)}
    if len(runs) < requested:
        out["fewer"] = f"{len(runs)} of {requested}: only {possible} distinct relabellings other than the plan exist"
    return out


@dataclass
class ThresholdRun:
    """One threshold's outcome: its record (threshold_{t}.json) and, kept in memory for the
    comparisons, the merged model's and each control's WindowScores."""
    result: dict
    merged: WindowScores
    controls: list


def threshold_result(score: PlanScorer, sims: dict, heads: int, base: WindowScores, threshold: float,
                     measure: str, random_seeds: int, bootstrap: int) -> ThresholdRun:
    """One threshold: pairs and groups per layer, the merged model's scores, its relabelled
    controls' scores, the perplexity change's bootstrap CI (an encoder: the embedding cosine and
    retrieval agreement instead of perplexity and accuracy, no perplexity CI; kl_divergence its
    embedding loss)."""
    pairs = pairs_by_layer(sims, measure, threshold)
    plan = merge_plan(pairs, heads)
    merged = score(plan)
    control_plans = hm.relabelled_controls(plan, heads, random_seeds)
    controls = [score(control) for control in control_plans]
    merged_fields = score_fields(merged)
    runs = [{**scores.summary(), "groups": {str(layer): groups for layer, groups in control.items()}}
            for control, scores in zip(control_plans, controls)]
    groups = {layer: hm.components(heads, pairs[layer]) for layer in sims}
    encoder = is_encoder_base(base)
    result = {
        "threshold": threshold,
        "metric": comparison_metric(base),
        "original_metrics": reported_metrics(base),
        "merged_metrics": reported_metrics(merged),
        "total_merged_pairs": sum(len(p) for p in pairs.values()),
        "heads_removed": sum(hm.heads_removed(g) for g in groups.values()),
        "layer_results": {str(layer): {"num_pairs": len(pairs[layer]), "pairs": pairs[layer],
                                       "groups": groups[layer], "heads_removed": hm.heads_removed(groups[layer]),
                                       "similarity_matrix": np.round(sims[layer][measure], 6).tolist(),
                                       "similarity_histogram": hm.similarity_histogram(sims[layer][measure])}
                          for layer in sims},
        "similarity": measure,
        "tokens_evaluated": int(sum(base.tokens)),
        "kl_divergence": merged_fields["kl_divergence"],
        "top1_agreement": None if encoder else merged_fields["top1_agreement"],
        "perplexity_change_ci95": None if encoder else list(perplexity_change_ci(base, merged, bootstrap, seed=0)),
        "random_control": control_summary(runs, random_seeds, hm.possible_controls(plan, heads),
                                          REPORTED[comparison_metric(base)]),
    }
    return ThresholdRun(result, merged, controls)


def sweep(evaluator, model, slots: dict, base: WindowScores, thresholds, measure: str,
          random_seeds: int, bootstrap: int, sims: dict = None):
    """threshold_result for each threshold in turn (a generator: each is ready to write as it
    comes); one scorer for all, so that no plan is scored twice."""
    sims = layer_similarities(slots) if sims is None else sims
    heads = next(iter(slots.values())).heads
    score = PlanScorer(evaluator, model, slots, base)
    for threshold in thresholds:
        yield threshold_result(score, sims, heads, base, threshold, measure, random_seeds, bootstrap)


def summary_row(model_name: str, result: dict) -> dict:
    """One threshold's measurements for summary.parquet, from its result (pairs per layer last).
    The columns are the same for either kind: an encoder's perplexity and accuracy columns are NaN,
    its embedding_cosine and retrieval_agreement filled (a causal LM's NaN), kl_divergence its
    embedding loss."""
    control = result["random_control"]
    value = lambda key: np.nan if control.get(key) is None else control[key]  # noqa: E731
    number = lambda found, key: np.nan if found.get(key) is None else found[key]  # noqa: E731
    original, merged, interval = result["original_metrics"], result["merged_metrics"], \
        result["perplexity_change_ci95"] or [np.nan, np.nan]
    return {"model": model_name, "threshold": result["threshold"], "similarity": result["similarity"],
            "merged_pairs": result["total_merged_pairs"], "heads_removed": result["heads_removed"],
            "base_perplexity": number(original, "perplexity"), "base_accuracy": number(original, "accuracy"),
            "perplexity": number(merged, "perplexity"), "accuracy": number(merged, "accuracy"),
            "kl_divergence": result["kl_divergence"], "top1_agreement": number(result, "top1_agreement"),
            "embedding_cosine": number(merged, "embedding_cosine"),
            "retrieval_agreement": number(merged, "retrieval_agreement"),
            "ci_low": interval[0], "ci_high": interval[1],
            "random_controls": control["distinct"], "random_perplexity_mean": value("perplexity_mean"),
            "random_perplexity_median": value("perplexity_median"), "random_perplexity_min": value("perplexity_min"),
            "random_perplexity_max": value("perplexity_max"), "random_accuracy_mean": value("accuracy_mean"),
            **{f"pairs_layer_{layer}": r["num_pairs"] for layer, r in result["layer_results"].items()}}


# --- comparisons and the headline threshold ----------------------------------------------------------

EXPERIMENT = "headmerge"
# The headline threshold is chosen on the even windows and reported on the odd ones.
SELECTION_HALF, REPORT_HALF = "even", "odd"


def window_subset(scores: WindowScores, windows) -> WindowScores:
    """The scores of these windows only (by index, in that order); a BaseEvaluation gives its sums."""
    windows = list(windows)
    return WindowScores(**{name: [getattr(scores, name)[i] for i in windows] if getattr(scores, name) else []
                           for name in ("nll", "correct", "tokens", "kl", "agree")})


def window_halves(count: int) -> dict:
    """The window indices split by parity, "even" (0, 2, ...) and "odd" (1, 3, ...): interleaved,
    so that both halves run through the same articles of the corpus."""
    return {"even": range(0, count, 2), "odd": range(1, count, 2)}


def articles_of(base, windows) -> int | None:
    """WikiText articles these windows of the base evaluation overlap (corpus.articles_in on their
    settings "window_articles"); None when the base does not record them."""
    ranges = base.settings.get("window_articles")
    return None if ranges is None else articles_in([ranges[i] for i in windows])


def mean_nll(scores: WindowScores) -> float:
    """Mean NLL per token over all the scores' windows (nats)."""
    return float(np.sum(scores.nll) / np.sum(scores.tokens))


def versus(run: ThresholdRun, base: WindowScores, level: float, windows=None) -> dict:
    """On these windows (None: all): merged minus the base, merged minus its controls' per-window
    mean (paired t intervals, paired_tests.paired_difference), and the merge's rank among the
    controls' mean NLL as a p-value; no "random" without a control."""
    part = (lambda s: s) if windows is None else (lambda s: window_subset(s, windows))  # noqa: E731
    merged, controls = part(run.merged), [part(c) for c in run.controls]
    found = {"base": paired_difference(merged, part(base), level=level), "random": None, "p_value": np.nan}
    if controls:
        found["random"] = paired_difference(merged, controls, level=level)
        found["p_value"] = rank_p_value(mean_nll(merged), [mean_nll(c) for c in controls])
    return found


def comparison_rows(model: str, run: ThresholdRun, base: WindowScores, level: float, min_effect: float,
                    articles=None) -> list:
    """The threshold's rows of comparisons.parquet (layout.COMPARISON_COLUMNS), on every window:
    against "base", and against "random" (the controls' mean) when it has controls; metric "nll",
    or "embedding_loss" for an encoder (variants.comparison_metric)."""
    plan, found, metric = f"threshold_{run.result['threshold']}", versus(run, base, level), comparison_metric(base)
    rows = [comparison_row(model, EXPERIMENT, plan, "base", "base", found["base"], min_effect, articles=articles,
                           metric=metric)]
    if found["random"] is not None:
        n = len(run.controls)
        rows.append(comparison_row(model, EXPERIMENT, plan, "random", f"mean of {n} random plans", found["random"],
                                   min_effect, p_value=found["p_value"], n_random=n, articles=articles,
                                   metric=metric))
    return rows


def half_columns(run: ThresholdRun, base, level: float, min_effect: float) -> dict:
    """A threshold's summary columns from the two halves of the windows: merged minus the base on
    the selection half (select_*: what chooses the headline), and on the held-out half merged minus
    the base (heldout_nll_change, _ci_low, _ci_high) and minus its controls' mean (heldout_vs_random,
    _low, _high, heldout_p_value, heldout_verdict), with that half's windows, tokens and articles."""
    halves, nan = window_halves(len(base.nll)), np.nan
    out = {"level": level, "min_effect": min_effect, "selected_on": SELECTION_HALF, "select_nll_change": nan,
           "select_ci_low": nan, "select_ci_high": nan, "reported_on": REPORT_HALF, "heldout_nll_change": nan,
           "heldout_ci_low": nan, "heldout_ci_high": nan, "heldout_vs_random": nan, "heldout_vs_random_low": nan,
           "heldout_vs_random_high": nan, "heldout_p_value": nan, "heldout_verdict": None,
           "heldout_windows": len(halves[REPORT_HALF]), "heldout_tokens": 0,
           "heldout_articles": articles_of(base, halves[REPORT_HALF])}
    if len(halves[SELECTION_HALF]):
        chosen = versus(run, base, level, halves[SELECTION_HALF])["base"]
        out.update(select_nll_change=chosen["estimate"], select_ci_low=chosen["ci_low"],
                   select_ci_high=chosen["ci_high"])
    if len(halves[REPORT_HALF]):
        held = versus(run, base, level, halves[REPORT_HALF])
        out.update(heldout_nll_change=held["base"]["estimate"], heldout_ci_low=held["base"]["ci_low"],
                   heldout_ci_high=held["base"]["ci_high"], heldout_tokens=int(held["base"]["tokens"]))
        if held["random"] is not None:
            against = held["random"]
            out.update(heldout_vs_random=against["estimate"], heldout_vs_random_low=against["ci_low"],
                       heldout_vs_random_high=against["ci_high"], heldout_p_value=held["p_value"],
                       heldout_verdict=verdict(against["estimate"], against["ci_low"], against["ci_high"],
                                               min_effect))
    return out


def sweep_tables(model: str, runs: list, base, level: float, min_effect: float) -> tuple:
    """(summary, comparisons) of a sweep's runs: one summary row per threshold (summary_row, the
    half_columns; pairs per layer last) and the comparisons on every window
    (layout.COMPARISON_COLUMNS). The headline threshold is chosen from the summary when the report
    is written (head_merge.headline_index), so a new report.findings.ppl_tolerance reruns no merge."""
    summary = pd.DataFrame([{**summary_row(model, run.result), **half_columns(run, base, level, min_effect)}
                            for run in runs])
    if not summary.empty:
        layers = [c for c in summary.columns if c.startswith("pairs_layer_")]
        summary = summary[[c for c in summary.columns if c not in layers] + layers]
    articles = articles_covered(base)
    comparisons = pd.DataFrame([row for run in runs for row in comparison_rows(model, run, base, level, min_effect,
                                                                                articles)],
                               columns=COMPARISON_COLUMNS)
    return summary, comparisons
