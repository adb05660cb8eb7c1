"""Quantisation and pruning plans applied to a live model and evaluated against the base model.

The model is loaded once per experiment; each plan writes its weights into the live parameters
from a CPU copy of the originals, is scored on the corpus windows, and the originals go back.
Plans whose weights are identical to one already scored (a mirror of a one-format plan, say) reuse
its scores.
"""

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from blockscope.compression import plans
from blockscope.compression.formats import quantize
from blockscope.compression.hints import DIRECTION_WORDS
from blockscope.compression.presets import PRESETS
from blockscope.compression.pruning import achieved_sparsity, magnitude_prune
from blockscope.errors import BlockscopeError
from blockscope.evaluation.base_artifact import BaseEvaluation, load_base
from blockscope.evaluation.forward import evaluate_variant
from blockscope.evaluation.scores import WindowScores, perplexity_change_ci
from blockscope.layout import COMPRESS_PRUNE_COLUMNS, COMPRESS_QUANT_COLUMNS

# --- the evaluation ------------------------------------------------------------------------------------
# The base model was scored once by rule evaluate_base (results/{model}/eval/base.safetensors); every
# plan is scored against that file by evaluate_variant, on the same windows.


def score_plan(model, base: BaseEvaluation, device: str, batch_size: int) -> WindowScores:
    """Per-window loss, accuracy, KL to the base and top-1 agreement of the model as it is now."""
    return evaluate_variant(model, base, device, batch_size)

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
    """A plan's metrics against the base: perplexity, accuracy, KL, top-1 agreement, paired CI."""
    summary = scores.summary()
    low, high = perplexity_change_ci(base, scores, bootstrap, seed=0)
    return {**summary, "perplexity_change": summary["perplexity"] - base.summary()["perplexity"],
            "ci_low": low, "ci_high": high}


def base_row(base: BaseEvaluation) -> dict:
    summary = base.summary()
    return {**summary, "kl_divergence": 0.0, "top1_agreement": 1.0, "perplexity_change": 0.0, "ci_low": 0.0,
            "ci_high": 0.0}


class Scorer:
    """Scores plans on the live model, once per distinct set of weights."""

    def __init__(self, model, base: BaseEvaluation, device: str, swap: WeightSwap, bootstrap: int, batch_size: int):
        self.model, self.base, self.device, self.swap, self.bootstrap = model, base, device, swap, bootstrap
        self.batch_size = batch_size
        self.seen = {}

    def __call__(self, key, new_weight) -> dict:
        """The result row of the weights new_weight gives; key identifies them (same key, same weights)."""
        if key not in self.seen:
            started = time.perf_counter()
            with self.swap.applied(new_weight):
                self.seen[key] = result_row(self.base, score_plan(self.model, self.base, self.device, self.batch_size),
                                            self.bootstrap)
            logging.info("plan %d scored in %.1f s: perplexity %.3f", len(self.seen), time.perf_counter() - started,
                         self.seen[key]["perplexity"])
        return self.seen[key]


# --- quantisation --------------------------------------------------------------------------------------

def direction_words(direction: str, metric: str, mirrored: bool) -> str:
    """'lower alpha keeps more bits' for a hint plan; its mirror says the opposite."""
    word = DIRECTION_WORDS[direction]
    if mirrored:
        word = "higher" if word == "lower" else "lower"
    return f"{word} {metric} keeps more bits"


def quant_plans(matrices: pd.DataFrame, formats, group_size: int, seeds: int) -> tuple:
    """([{plan, kind, of, seed, direction, formats}], {preset: (settings, hint table)}): uniform at
    each format; per preset its hint plan, the exact mirror and `seeds` random permutations."""
    out = [{"plan": f"uniform_{fmt}", "kind": "uniform", "of": None, "seed": None, "direction": None,
            "formats": plans.uniform_plan(matrices, fmt)} for fmt in formats]
    hints = {}
    for preset in PRESETS:
        settings = plans.preset_settings(preset, group_size)
        plan, table = plans.hint_plan(matrices, settings)
        hints[preset] = (settings, table)
        metric, direction = settings["metric"], settings["direction"]
        out.append({"plan": f"hint_{preset}", "kind": "hint", "of": preset, "seed": None,
                    "direction": direction_words(direction, metric, False), "formats": plan})
        out.append({"plan": f"mirror_{preset}", "kind": "mirror", "of": preset, "seed": None,
                    "direction": direction_words(direction, metric, True),
                    "formats": plans.mirror_plan(plan, matrices, metric)})
        out += [{"plan": f"random_{preset}_{seed}", "kind": "random", "of": preset, "seed": seed, "direction": None,
                 "formats": plans.random_plan(plan, matrices, seed)} for seed in range(seeds)]
    return out, hints


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
                     model_name: str) -> tuple:
    """(summary table, every plan {name: {param: format}}, {preset: (settings, hint table)})."""
    specs, hints = quant_plans(matrices, formats, group_size, seeds)
    round_trip = RoundTrips(group_size, round_trip_budget(scorer.device))
    rows = [{"model": model_name, "plan": "base", "kind": "base", "bits_per_weight": np.nan,
             **base_row(scorer.base)}]
    for spec in specs:
        plan = spec.pop("formats")
        key = ("quant", tuple(plan.items()))
        result = scorer(key, lambda name, w, plan=plan: round_trip(name, w, plan[name]))
        rows.append({"model": model_name, **spec, "bits_per_weight": plans.average_bits(plan, matrices, group_size),
                     "format_counts": plans.format_counts(plan), **result})
        spec["formats"] = plan
    table = pd.DataFrame(rows).reindex(columns=COMPRESS_QUANT_COLUMNS)
    return table, {s["plan"]: s["formats"].to_dict() for s in specs}, hints


# --- pruning ------------------------------------------------------------------------------------------------

PRUNE_DIRECTIONS = {"alpha": "higher alpha pruned more (AlphaPruning)", "mirror": "lower alpha pruned more"}


def prune_kind(name: str) -> str:
    return name.split("_")[0]


def prune_experiment(scorer: Scorer, matrices: pd.DataFrame, targets, eps: float, metric: str, seeds: int,
                     model_name: str) -> tuple:
    """(summary table, allocations table: allocated and achieved sparsity per matrix, plans JSON)."""
    layers = plans.layer_table(matrices, metric)
    rows = [{"model": model_name, "plan": "base", "kind": "base", "target": 0.0, "sparsity": 0.0,
             **base_row(scorer.base)}]
    allocations, plan_json = [], {}
    for target in targets:
        for name, allocation in plans.prune_allocations(layers, target, eps, seeds).items():
            plans.check_allocation(allocation, model_name)
            sparsity = plans.matrix_sparsity(allocation, matrices)
            achieved = {}

            def new_weight(param, w, sparsity=sparsity, achieved=achieved):
                pruned = magnitude_prune(w, float(sparsity[param]))
                achieved[param] = achieved_sparsity(pruned)
                return pruned

            key = ("prune", tuple(np.round(sparsity.to_numpy(), 12)))
            result = scorer(key, new_weight)
            if not achieved:  # weights scored before under another name: measure them again here
                achieved.update({p: achieved_sparsity(new_weight(p, w)) for p, w in scorer.swap.original.items()})
            kind = prune_kind(name)
            rows.append({"model": model_name, "plan": f"{name}_{target:g}", "kind": kind,
                         "of": None if kind in ("uniform", "alpha") else "alpha",
                         "seed": int(name.split("_")[1]) if kind == "random" else None,
                         "direction": PRUNE_DIRECTIONS.get(kind), "target": target,
                         "sparsity": plans.weighted_mean(pd.Series(achieved), matrices), **result})
            allocations.append(pd.DataFrame({
                "model": model_name, "target": target, "plan": f"{name}_{target:g}", "param_name": matrices.index,
                "layer_index": matrices["layer_index"].to_numpy(),
                "layer_alpha": layers["alpha"].loc[matrices["layer_index"]].to_numpy(),
                "allocated": sparsity.to_numpy(), "achieved": [achieved[p] for p in matrices.index]}))
            plan_json[f"{name}_{target:g}"] = {str(layer): float(s) for layer, s in allocation.items()}
    table = pd.DataFrame(rows).reindex(columns=COMPRESS_PRUNE_COLUMNS)
    return table, pd.concat(allocations, ignore_index=True), plan_json


# --- the variant to save ------------------------------------------------------------------------------------

def chosen_plan(table: pd.DataFrame) -> str | None:
    """The variant compress.save_variants writes: the plan of lowest perplexity among the spectral
    plans and their mirrors (for pruning, at the first target)."""
    spectral = table[table["kind"].isin(["hint", "alpha", "mirror"])]
    if "target" in spectral and len(spectral):
        spectral = spectral[spectral["target"] == spectral["target"].iloc[0]]
    return None if spectral.empty else str(spectral.sort_values("perplexity", kind="stable")["plan"].iloc[0])


# --- one experiment's setup and its saved variant ------------------------------------------------------------

@dataclass
class Session:
    """What an experiment works on: the live model, its tokenizer, the base scores, the planned
    matrices and the swap that writes plans into the model."""
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
    """Load the model once beside its base evaluation (rule evaluate_base), pick the planned
    matrices; BlockscopeError when there are none."""
    from blockscope.evaluation.loading import load_causal_lm

    matrices = plans.plan_matrices(metrics)
    if matrices.empty:
        raise BlockscopeError("no block linear matrix with status ok and finite alpha, alpha_hill, alpha_peak and "
                              "alpha_mid: nothing to quantise or prune", model=model_name, path=metrics_path,
                              fix="check the metrics table's status column; set compress.enabled: false to skip")
    model, tokenizer = load_causal_lm(model_name, checkpoint, device, eval_settings["dtype"])
    return Session(model, tokenizer, base, matrices, WeightSwap(model, list(matrices.index), model_name),
                   device, eval_settings["batch_size"])


def experiment_session(model_name: str, dims_path, checkpoint, metrics_path, base_path, evaluation: dict,
                       backend: str):
    """(session, None) for one experiment's job, or (None, reason) for a model it skips: an encoder,
    no tokenizer, or a base that predicts at chance (evaluation["min_bits_over_chance"]). Plans are
    scored on the base's first windows, evaluation["max_tokens"] tokens. The paths: model.json, the
    checkpoint folder, the metrics table and the base evaluation. The job's own GPU is claimed
    before torch loads."""
    from blockscope.evaluation.loading import chance_reason, skip_reason
    from blockscope.runtime.device import torch_device
    from blockscope.runtime.gpu_slots import claim_gpu

    dims = json.loads(Path(dims_path).read_text())
    reason = skip_reason(dims, checkpoint)
    if reason:
        return None, reason
    base = load_base(base_path)
    reason = base.skipped or chance_reason(model_name, base.summary()["perplexity"], dims.get("vocab"),
                                           evaluation.get("min_bits_over_chance", 0))
    if reason:
        return None, reason
    claim_gpu(backend)
    return open_session(model_name, checkpoint, pd.read_parquet(metrics_path),
                        base.first_windows(evaluation.get("max_tokens")), evaluation, torch_device(backend),
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
