"""Quantisation and pruning plans applied to a live model and evaluated against the base model (a
causal LM by its next-token predictions, an encoder by its sentence embeddings: evaluation.variants).

The model is loaded once per experiment; each plan writes its weights into the live parameters
from a CPU copy of the originals, is scored on the corpus windows, and the originals go back.
Plans whose weights are identical to one already scored (a mirror of a one-format plan, say) reuse
its scores; a drawn control that repeats them gets no row (controls draws them distinct anyway).
The plans and their controls: blockscope.compression.controls; the paired comparisons of the
scores: blockscope.compression.comparisons.
"""

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from blockscope.compression import controls, plans
from blockscope.compression.formats import quantize
from blockscope.compression.oracle import predicted_kl
from blockscope.compression.presets import PRESETS
from blockscope.compression.pruning import achieved_sparsity, magnitude_prune
from blockscope.errors import BlockscopeError
from blockscope.evaluation.base_artifact import BaseEvaluation, load_base
from blockscope.evaluation.scores import WindowScores, perplexity_change_ci
from blockscope.evaluation.variants import is_encoder_base, score_fields, score_variant
from blockscope.layout import COMPRESS_PRUNE_COLUMNS, COMPRESS_QUANT_COLUMNS

# --- the evaluation ------------------------------------------------------------------------------------
# The base model was scored once by rule evaluate_base (results/{model}/eval/base.safetensors); every
# plan is scored against that file by variants.score_variant, on the same windows (sentences).


def score_plan(model, base: BaseEvaluation, device: str, batch_size: int) -> WindowScores:
    """Per-window scores of the model as it is now against the base: loss, accuracy, KL and top-1
    agreement (a causal LM), or embedding loss and retrieval agreement (an encoder)."""
    return score_variant(model, base, device, batch_size)

# --- the live weights -----------------------------------------------------------------------------------


class WeightSwap:
    """The planned matrices of a live model: new weights written in, the originals put back."""

    def __init__(self, model, names, model_name: str = None):
        self.params = dict(model.named_parameters())
        missing = [n for n in names if n not in self.params]
        if missing:
            raise BlockscopeError(f"{len(missing)} planned matrices are not parameters of the loaded model "
                                  f"(first: {missing[0]})", model=model_name, path="metrics.parquet",
                                  fix="rerun aggregate on this checkpoint")
        # On the CPU in the parameters' own dtype: restore() puts back the exact bits.
        self.original = {n: self.params[n].detach().to("cpu", copy=True) for n in names}

    @contextlib.contextmanager
    def applied(self, new_weight):
        """Inside the block every planned matrix holds new_weight(name, original on its device)."""
        import torch

        try:
            with torch.no_grad():
                for name, original in self.original.items():
                    param = self.params[name]
                    param.copy_(new_weight(name, original.to(param.device)))
            yield
        finally:
            with torch.no_grad():
                for name, original in self.original.items():
                    self.params[name].copy_(original)


def result_row(base: BaseEvaluation, scores: WindowScores, bootstrap: int) -> dict:
    """A plan's metrics against the base (variants.score_fields): perplexity, accuracy, KL, top-1
    agreement and the perplexity change with its paired bootstrap CI; for an encoder embedding
    cosine, retrieval agreement and embedding loss (as kl_divergence), the perplexity ones NaN."""
    fields = score_fields(scores)
    if is_encoder_base(base):
        return {**fields, "perplexity_change": np.nan, "ci_low": np.nan, "ci_high": np.nan}
    low, high = perplexity_change_ci(base, scores, bootstrap, seed=0)
    return {**fields, "perplexity_change": fields["perplexity"] - base.summary()["perplexity"],
            "ci_low": low, "ci_high": high}


def base_row(base: BaseEvaluation) -> dict:
    """The base's row: its own scores, KL 0 and agreement 1 (an encoder: cosine 1, agreement 1)."""
    change = np.nan if is_encoder_base(base) else 0.0
    return {**score_fields(base), "perplexity_change": change, "ci_low": change, "ci_high": change}


def score_words(row: dict) -> str:
    """A result row in a log line: its perplexity, or an encoder's embedding cosine."""
    if np.isnan(row["perplexity"]):
        return f"embedding cosine {row['embedding_cosine']:.5f}, retrieval agreement {row['retrieval_agreement']:.3f}"
    return f"perplexity {row['perplexity']:.3f}"


class Scorer:
    """Scores plans on the live model, once per distinct set of weights: `scores` keeps each one's
    per-window WindowScores (the paired comparisons need them) and `rows` its result row, both
    under the key that identifies the weights."""

    def __init__(self, model, base: BaseEvaluation, device: str, swap: WeightSwap, bootstrap: int, batch_size: int):
        self.model, self.base, self.device, self.swap, self.bootstrap = model, base, device, swap, bootstrap
        self.batch_size = batch_size
        self.rows, self.scores = {}, {}

    def __call__(self, key, new_weight) -> tuple:
        """(result row, WindowScores, new) of the weights new_weight gives; key identifies them (same
        key, same weights). new is False when they were scored before, under another plan's name:
        the scores are the earlier ones, and a control drawn twice must not be counted twice."""
        if key in self.scores:
            return self.rows[key], self.scores[key], False
        started = time.perf_counter()
        with self.swap.applied(new_weight):
            scores = score_plan(self.model, self.base, self.device, self.batch_size)
        self.rows[key], self.scores[key] = result_row(self.base, scores, self.bootstrap), scores
        logging.info("plan %d scored in %.1f s: %s", len(self.scores), time.perf_counter() - started,
                     score_words(self.rows[key]))
        return self.rows[key], scores, True


@dataclass
class Outcome:
    """An experiment's results: its summary table, the plans as plans.json holds them, each scored
    plan's WindowScores by name (a control that repeated another plan's weights has none, and no
    row), and {(plan, against): why that control is missing}."""
    table: pd.DataFrame
    plans: dict
    scores: dict
    missing: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)


CONTROL_KINDS = ("random", "budget_random")  # drawn controls: a repeat of earlier weights gets no row


# --- quantisation --------------------------------------------------------------------------------------

class RoundTrips:
    """Each planned matrix's round trip through each format, computed once for every plan that uses
    it (the uniform plans alone hold every pair; a hint plan, its mirror and its random controls
    reuse them) and kept while they fit in `budget` bytes. bf16 / fp16 round trips are kept in
    their own dtype: exact, half the bytes."""

    HALF = {"bf16": "bfloat16", "fp16": "float16"}

    def __init__(self, group_size: int, budget: int):
        self.group_size, self.budget, self.used, self.kept = group_size, budget, 0, {}

    def __call__(self, name: str, w, fmt: str):
        import torch

        if (name, fmt) in self.kept:
            return self.kept[(name, fmt)].to(w.device, w.dtype)
        out = quantize(w, fmt, self.group_size)
        stored = out.to(getattr(torch, self.HALF[fmt])) if fmt in self.HALF else out
        size = stored.numel() * stored.element_size()
        if self.used + size <= self.budget:
            self.kept[(name, fmt)], self.used = stored.cpu(), self.used + size
        return out


def round_trip_budget(device: str) -> int:
    """Bytes RoundTrips may keep: a quarter of the free memory on the CPU; none on a GPU, which
    quantises faster than it would copy a kept matrix back."""
    import psutil

    return 0 if str(device).startswith("cuda") else psutil.virtual_memory().available // 4


def quant_experiment(scorer: Scorer, matrices: pd.DataFrame, formats, group_size: int, seeds: int,
                     budget_seeds: int, model_name: str, estimates: pd.DataFrame = None,
                     presets=tuple(PRESETS)) -> Outcome:
    """The plans of controls.quant_plans scored. Outcome.plans: {plan: {param: format}};
    details: {"hints": {preset: (settings, hint table)}, "simulated_as": {plan: {name: what is
    evaluated}}}. With per-matrix sensitivity estimates, the oracle plans and every plan's
    predicted_kl (the additive model), else predicted_kl NaN."""
    specs, hints, missing = controls.quant_plans(matrices, formats, group_size, seeds, budget_seeds, estimates,
                                                   presets)
    round_trip = RoundTrips(group_size, round_trip_budget(scorer.device))
    rows = [{"model": model_name, "plan": "base", "kind": "base", "bits_per_weight": np.nan, **base_row(scorer.base)}]
    kept, scores = [], {}
    for spec in specs:
        plan = spec["formats"]
        result, window_scores, new = scorer(("quant", controls.format_key(plan)),
                                            lambda name, w, plan=plan: round_trip(name, w, plan[name]))
        if spec["kind"] in CONTROL_KINDS and not new:
            continue
        predicted = np.nan if estimates is None else predicted_kl(plan, estimates)
        rows.append({"model": model_name, **{k: spec[k] for k in ("plan", "kind", "of", "seed", "direction")},
                     "bits_per_weight": plans.average_bits(plan, matrices, group_size),
                     "format_counts": plans.format_counts(plan), "predicted_kl": predicted, **result})
        scores[spec["plan"]] = window_scores
        kept.append(spec)
    table = pd.DataFrame(rows).reindex(columns=COMPRESS_QUANT_COLUMNS)
    return Outcome(table, {s["plan"]: s["formats"].to_dict() for s in kept}, scores, missing,
                   {"hints": hints, "simulated_as": {s["plan"]: s["simulated_as"] for s in kept}})


# --- pruning ------------------------------------------------------------------------------------------------

PRUNE_DIRECTIONS = {"alpha": "higher alpha pruned more (AlphaPruning)", "mirror": "lower alpha pruned more"}


def prune_kind(name: str) -> str:
    return name.split("_")[0]


def prune_experiment(scorer: Scorer, matrices: pd.DataFrame, targets, eps: float, metric: str, seeds: int,
                     model_name: str) -> Outcome:
    """The allocations of controls.prune_plans per target, applied by magnitude pruning and scored.
    Outcome.plans: {plan: {layer: sparsity}}; details: {"allocations": allocated and achieved
    sparsity per matrix}."""
    layers = plans.layer_table(matrices, metric)
    rows = [{"model": model_name, "plan": "base", "kind": "base", "target": 0.0, "sparsity": 0.0,
             **base_row(scorer.base)}]
    allocations, plan_json, scores = [], {}, {}
    for target in targets:
        for name, allocation in controls.prune_plans(layers, target, eps, seeds).items():
            plans.check_allocation(allocation, model_name)
            sparsity = plans.matrix_sparsity(allocation, matrices)
            achieved = {}

            def new_weight(param, w, sparsity=sparsity, achieved=achieved):
                pruned = magnitude_prune(w, float(sparsity[param]))
                achieved[param] = achieved_sparsity(pruned)
                return pruned

            kind = prune_kind(name)
            result, window_scores, new = scorer(("prune", tuple(np.round(sparsity.to_numpy(), 12))), new_weight)
            if kind in CONTROL_KINDS and not new:
                continue
            if not achieved:  # weights scored before under another name: measure them again here
                achieved.update({p: achieved_sparsity(new_weight(p, w)) for p, w in scorer.swap.original.items()})
            plan = f"{name}_{target:g}"
            rows.append({"model": model_name, "plan": plan, "kind": kind,
                         "of": None if kind in ("uniform", "alpha") else "alpha",
                         "seed": int(name.split("_")[1]) if kind == "random" else None,
                         "direction": PRUNE_DIRECTIONS.get(kind), "target": target,
                         "sparsity": plans.weighted_mean(pd.Series(achieved), matrices), **result})
            scores[plan] = window_scores
            allocations.append(pd.DataFrame({
                "model": model_name, "target": target, "plan": plan, "param_name": matrices.index,
                "layer_index": matrices["layer_index"].to_numpy(),
                "layer_alpha": layers["alpha"].loc[matrices["layer_index"]].to_numpy(),
                "allocated": sparsity.to_numpy(), "achieved": [achieved[p] for p in matrices.index]}))
            plan_json[plan] = {str(layer): float(s) for layer, s in allocation.items()}
    table = pd.DataFrame(rows).reindex(columns=COMPRESS_PRUNE_COLUMNS)
    return Outcome(table, plan_json, scores, details={"allocations": pd.concat(allocations, ignore_index=True)})


# --- the variant to save ------------------------------------------------------------------------------------

def chosen_plan(table: pd.DataFrame) -> str | None:
    """The variant compress.save_variants writes: the plan of lowest perplexity (an encoder: of
    lowest embedding loss, kl_divergence) among the spectral plans and their mirrors (for pruning,
    at the first target)."""
    spectral = table[table["kind"].isin(["hint", "alpha", "mirror"])]
    if "target" in spectral and len(spectral):
        spectral = spectral[spectral["target"] == spectral["target"].iloc[0]]
    by = "kl_divergence" if spectral["perplexity"].isna().all() else "perplexity"
    return None if spectral.empty else str(spectral.sort_values(by, kind="stable")["plan"].iloc[0])


# --- one experiment's setup and its saved variant ------------------------------------------------------------

@dataclass
class Session:
    """What an experiment works on: the live model, its tokenizer, the base scores (a causal LM's
    BaseEvaluation or an encoder's EncoderBase), the planned matrices and the swap that writes
    plans into the model."""
    model: object
    tokenizer: object
    base: BaseEvaluation
    matrices: pd.DataFrame
    swap: WeightSwap
    device: str
    batch_size: int

    def scorer(self, bootstrap: int) -> Scorer:
        return Scorer(self.model, self.base, self.device, self.swap, bootstrap, self.batch_size)


def open_session(model_name: str, checkpoint, metrics: pd.DataFrame, base: BaseEvaluation, eval_settings: dict,
                 device: str, metrics_path=None) -> Session:
    """Load the model (a causal LM, or an encoder for an encoder's base) once beside its base
    evaluation (rule evaluate_base), pick the planned matrices; BlockscopeError when there are none."""
    from blockscope.evaluation.loading import load_model

    matrices = plans.plan_matrices(metrics)
    if matrices.empty:
        raise BlockscopeError("no block linear matrix with status ok and finite alpha, alpha_hill, alpha_peak and "
                              "alpha_mid: nothing to quantise or prune", model=model_name, path=metrics_path,
                              fix="check the metrics table's status column; set compress.enabled: false to skip")
    model, tokenizer = load_model(model_name, checkpoint, device, eval_settings["dtype"], is_encoder_base(base))
    return Session(model, tokenizer, base, matrices, WeightSwap(model, list(matrices.index), model_name),
                   device, eval_settings["batch_size"])


def experiment_session(model_name: str, dims_path, checkpoint, metrics_path, base_path, evaluation: dict,
                       backend: str):
    """(session, None) for one experiment's job, or (None, reason) for a model it skips: neither a
    causal LM nor an encoder, no tokenizer, or a causal LM that predicts at chance
    (evaluation["min_bits_over_chance"]; an encoder predicts no tokens). Plans are scored on the
    base's windows, evaluation["max_tokens"] tokens chosen evenly among them (an encoder: on all its sentences). The
    paths: model.json, the checkpoint folder, the metrics table and the base evaluation. The job's
    own GPU is claimed before torch loads."""
    from blockscope.evaluation.loading import chance_reason, skip_reason
    from blockscope.runtime.device import torch_device
    from blockscope.runtime.gpu_slots import claim_gpu

    dims = json.loads(Path(dims_path).read_text())
    reason = skip_reason(dims, checkpoint, encoders=True)
    if reason:
        return None, reason
    base = load_base(base_path)
    reason = base.skipped or (None if is_encoder_base(base) else chance_reason(
        model_name, base.summary()["perplexity"], dims.get("vocab"), evaluation.get("min_bits_over_chance", 0)))
    if reason:
        return None, reason
    claim_gpu(backend)
    return open_session(model_name, checkpoint, pd.read_parquet(metrics_path),
                        base.spread_windows(evaluation.get("max_tokens")), evaluation, torch_device(backend),
                        metrics_path), None


def save_variant(session: Session, new_weight, target, info: dict):
    """The model with a plan applied, as a safetensors checkpoint with its config and tokenizer
    (transformers' save_pretrained), plus variant.json saying which plan it is."""
    from blockscope.io.atomic import atomic_dir

    with atomic_dir(target) as tmp, session.swap.applied(new_weight):
        session.model.save_pretrained(tmp, safe_serialization=True)
        session.tokenizer.save_pretrained(tmp)
        (tmp / "variant.json").write_text(json.dumps(info, indent=2, default=str) + "\n")


def write_table(frame: pd.DataFrame, parquet, csv):
    """A table as parquet and as CSV (atomically)."""
    from blockscope.io.atomic import write_csv, write_parquet

    write_parquet(frame, parquet)
    write_csv(frame, csv)


def skip_experiment(model_name: str, reason: str, tables: dict, notes: list, variant=None):
    """A skipped model's outputs: each table empty (tables: (parquet, csv) -> columns), each JSON
    in `notes` {model, skipped: reason}, and the variant folder (when asked for) with the reason."""
    from blockscope.io.atomic import write_json

    logging.info("[%s] skipped: %s", model_name, reason)
    for (parquet, csv), columns in tables.items():
        write_table(pd.DataFrame(columns=columns), parquet, csv)
    for path in notes:
        write_json({"model": model_name, "skipped": reason}, path)
    if variant:
        skipped_variant(variant, reason)


def skipped_variant(folder, reason: str):
    """A variant folder that says why no variant was written (the rule's output exists either way)."""
    from blockscope.io.atomic import atomic_dir

    with atomic_dir(folder) as tmp:
        (tmp / "skipped.txt").write_text(reason + "\n")
