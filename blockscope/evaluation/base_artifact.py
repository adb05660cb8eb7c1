"""The base model's evaluation as kept for its variants: BaseEvaluation, and its files under
results/{model}/eval/ (base.safetensors, its per-window table, base.json).

The base model is evaluated once (rule evaluate_base, blockscope.evaluation.forward) into a
BaseEvaluation: its windows, its per-window scores and, per predicted token, what KL and agreement
need: the base's argmax, its top-k log-probabilities with their token ids, and draws from the rest
of its distribution. Every variant (merged heads, a quantised or pruned model) is then scored
against it; the base is never run again.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from blockscope import layout
from blockscope.errors import BlockscopeError
from blockscope.evaluation.corpus import articles_in, spread_indices
from blockscope.evaluation.encoder_base import ENCODER_FIELDS, ENCODER_KIND, EncoderBase
from blockscope.evaluation.kl import rest_mass
from blockscope.evaluation.scores import WindowScores
from blockscope.io.atomic import atomic_path

# What BaseEvaluation keeps per window, and per prediction, in its file.
WINDOW_FIELDS = ("nll", "correct", "tokens")
PREDICTION_FIELDS = ("windows", "predicted", "top_ids", "top_logprobs", "tail_ids", "tail_logprobs")


@dataclass
class BaseEvaluation(WindowScores):
    """The base model's evaluation: its WindowScores (nll, correct, tokens per window) and what
    scoring a variant against it needs, as CPU tensors:

    windows       (n, seq_len) int64, the token ids evaluated
    predicted     (n, seq_len - 1) int32, the base's argmax per prediction (top-1 agreement)
    top_ids       (n, seq_len - 1, k) int32, its k most probable next tokens, most probable first
    top_logprobs  (n, seq_len - 1, k) float32, their log-probabilities (KL)
    tail_ids      (n, seq_len - 1, s) int32, s tokens drawn from the base's distribution outside
                  its top k (systematic sampling, seed 0)
    tail_logprobs (n, seq_len - 1, s) float32, their log-probabilities
    settings      how it was made: seq_len, top_k, device, dtype, corpus_sha256, window_articles
                  ([first, last] WikiText article per window), ...
    skipped       why the model was not evaluated (an encoder, no tokenizer): then all is empty
    """
    windows: object = None
    predicted: object = None
    top_ids: object = None
    top_logprobs: object = None
    tail_ids: object = None
    tail_logprobs: object = None
    settings: dict = field(default_factory=dict)
    skipped: str | None = None

    @property
    def top_k(self) -> int:
        return int(self.top_logprobs.shape[-1])

    def rest_mass(self) -> np.ndarray:
        """Per prediction, the base probability outside its top k (the KL truncation's weight)."""
        return rest_mass(self.top_logprobs).numpy()

    def spread_windows(self, max_tokens: int | None) -> "BaseEvaluation":
        """The evaluation restricted to at most max_tokens tokens of its windows (at least one
        window; None: all), chosen evenly over them (corpus.spread_indices), as the windows
        themselves are spread over the corpus: a CPU sample of the plans reads as many articles
        as it can. Variants scored against it see only those windows."""
        if self.skipped or not max_tokens:
            return self
        count = max(1, max_tokens // self.windows.shape[1])
        if count >= len(self.nll):
            return self
        keep = spread_indices(len(self.nll), count)
        settings = {**self.settings, "windows_scored": count, "windows_kept": keep.tolist()}
        for key in ("window_articles", "window_offsets"):
            if key in settings:
                settings[key] = [settings[key][i] for i in keep]
        per_window = {name: [getattr(self, name)[i] for i in keep] for name in WINDOW_FIELDS}
        per_prediction = {name: getattr(self, name)[keep] for name in PREDICTION_FIELDS}
        return BaseEvaluation(**per_window, **per_prediction, settings=settings)


def articles_covered(base: BaseEvaluation) -> int | None:
    """The distinct WikiText articles the evaluation's windows cover (after spread_windows: the
    windows kept); None when its settings do not record them (an evaluation from before they did,
    or a slow tokenizer without character offsets)."""
    ranges = base.settings.get("window_articles")
    return None if ranges is None else articles_in(ranges)


def skipped_base(reason: str, settings: dict = None) -> BaseEvaluation:
    """The base evaluation of a model that cannot be evaluated, with the reason."""
    return BaseEvaluation(settings=settings or {}, skipped=reason)


def save_base(base: BaseEvaluation | EncoderBase, path):
    """Write a BaseEvaluation (or an encoder's EncoderBase, settings "kind": "encoder") as one
    safetensors file (atomically): the per-window sums and the per-prediction (per-sentence)
    tensors, settings and skip reason as JSON metadata."""
    import torch
    from safetensors.torch import save_file

    tensors = {}
    if not base.skipped:
        kept = ENCODER_FIELDS if isinstance(base, EncoderBase) else PREDICTION_FIELDS
        tensors = {name: torch.as_tensor(getattr(base, name)).contiguous() for name in kept}
        tensors |= {name: torch.tensor(getattr(base, name), dtype=torch.float64 if name == "nll" else torch.int64)
                    for name in WINDOW_FIELDS}
    metadata = {"blockscope": json.dumps({"settings": base.settings, "skipped": base.skipped})}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_base(path) -> BaseEvaluation | EncoderBase:
    """The BaseEvaluation (an EncoderBase for settings "kind": "encoder") that save_base wrote
    (results/{model}/eval/base.safetensors); a skipped model's has `skipped` set and nothing else.
    BlockscopeError for a file that is not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["blockscope"])
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:
        raise BlockscopeError(f"not a base evaluation ({type(exc).__name__}: {exc})", path=path,
                              fix="delete it and rerun the evaluate_base rule") from None
    if meta["skipped"]:
        return skipped_base(meta["skipped"], meta["settings"])
    sums = {name: tensors.pop(name).tolist() for name in WINDOW_FIELDS}
    kind = EncoderBase if meta["settings"].get("kind") == ENCODER_KIND else BaseEvaluation
    return kind(**sums, **tensors, settings=meta["settings"])


def base_windows_table(base: BaseEvaluation):
    """One row per window (layout.EVAL_WINDOW_COLUMNS): its sums, loss and accuracy."""
    import pandas as pd

    table = pd.DataFrame({name: getattr(base, name) for name in WINDOW_FIELDS})
    table.insert(0, "window", range(len(table)))
    if isinstance(base, EncoderBase):  # a group of sentences: its first sentence
        table.insert(1, "first_token", base.group_starts())
    else:
        table.insert(1, "first_token", table["window"] * (base.windows.shape[1] if base.windows is not None else 0))
    table["loss"] = table["nll"] / table["tokens"]
    table["accuracy"] = table["correct"] / table["tokens"]
    return table[layout.EVAL_WINDOW_COLUMNS]


def base_record(base: BaseEvaluation, path=None) -> dict:
    """base.json: the summary, the settings, the KL truncation's weight and the artifact's size."""
    if base.skipped:
        return {"skipped": base.skipped, **base.settings}
    if isinstance(base, EncoderBase):  # no KL truncation: embeddings are kept whole
        return {**base.summary(), "windows": len(base.nll), **base.settings,
                **({"bytes": Path(path).stat().st_size} if path else {})}
    rest = base.rest_mass()
    return {**base.summary(), "windows": len(base.nll), **base.settings,
            "rest_mass_mean": float(rest.mean()), "rest_mass_max": float(rest.max()),
            **({"bytes": Path(path).stat().st_size} if path else {})}
