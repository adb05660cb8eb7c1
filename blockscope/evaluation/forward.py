"""The forward passes of the evaluation: the base model scored once on the corpus windows
(evaluate_base: its per-window scores and, per prediction, its argmax, top-k log-probabilities and
tail draws), and each variant scored against that in one forward pass per batch (evaluate_variant:
loss, accuracy, KL and top-1 agreement); the base is never run again. Names stable (the head-merge
sweep and the compression experiments call them):

    evaluate_base(model, windows, device, batch_size, top_k, settings, tail_samples_per_token) -> BaseEvaluation
    evaluate_variant(model, base, device, batch_size) -> WindowScores   (loss, accuracy, KL, agreement)
    Evaluator(windows, ...).score(model, base=...) / Evaluator.of(base)
"""

import numpy as np

from blockscope.evaluation.base_artifact import PREDICTION_FIELDS, BaseEvaluation
from blockscope.evaluation.kl import DEFAULT_TAIL_SAMPLES, DEFAULT_TOP_K, SAMPLING_SEED, kl_to_base, tail_samples
from blockscope.evaluation.scores import WindowScores


def next_token_logits(model, ids):
    """The logits of the window's first seq_len - 1 positions (those with a next token), float32.
    No KV cache: nothing is generated."""
    return model(ids, use_cache=False).logits[:, :-1].float()  # no copy when already float32


def next_token_scores(logits, targets):
    """(logsumexp, NLL, argmax, exp(z - max)) per prediction, in two passes over the vocabulary:
    max with its index, then exp and sum; NLL = logsumexp(z) - z_target. The last, a temporary
    the base reuses for its tail draws."""
    top, predicted = logits.max(dim=-1)
    exp = (logits - top[..., None]).exp_()
    lse = top + exp.sum(-1).log_()
    return lse, lse - logits.gather(-1, targets[..., None])[..., 0], predicted, exp


def _batches(windows, batch_size: int, device: str):
    """(first window index, the batch's ids on the device)."""
    import torch

    windows = torch.as_tensor(np.asarray(windows), dtype=torch.long)
    for start in range(0, len(windows), batch_size):
        yield start, windows[start:start + batch_size].to(device)


# On the CPU the vocabulary-wide work runs on chunks of positions this small: the allocator
# reuses their temporaries, where a fresh 50 MB tensor costs more in page faults than its
# arithmetic. A GPU takes each window whole (its allocator caches; fewer kernel launches).
CPU_CHUNK_BYTES = 8 * 2**20


def _pieces(logits, device):
    """(window in the batch, positions, their (rows, vocab) logits), in order."""
    windows, positions, vocab = logits.shape
    rows = positions if str(device).startswith("cuda") else max(1, CPU_CHUNK_BYTES // (4 * vocab))
    for window in range(windows):
        for start in range(0, positions, rows):
            where = slice(start, start + rows)
            yield window, where, logits[window, where]


def _per_prediction(parts: list, shape) -> dict:
    """The pieces' per-prediction tensors (name -> list, in order) as (windows, positions, ...)."""
    import torch

    return {name: torch.cat(values).reshape(*shape, *values[0].shape[1:]) for name, values in parts.items()}


def _per_window(values: list) -> list:
    """Per-window sums gathered on the device, moved to the CPU once (no sync per window)."""
    import torch

    return torch.cat(values).cpu().tolist()


def evaluate_base(model, windows, device: str = "cpu", batch_size: int = 1, top_k: int = DEFAULT_TOP_K,
                  settings: dict = None, tail_samples_per_token: int = DEFAULT_TAIL_SAMPLES) -> BaseEvaluation:
    """Score the base model on the windows ((n, seq_len) token ids) and keep, per prediction, its
    argmax, its top_k log-probabilities and tail_samples_per_token draws from the rest of its
    distribution: what evaluate_variant scores variants against. settings: how the windows were
    made, recorded with the result (seq_len, corpus_sha256, ...)."""
    import torch

    sums = {"nll": [], "correct": []}
    kept = {name: [] for name in PREDICTION_FIELDS if name != "windows"}
    generator = torch.Generator(device=device).manual_seed(SAMPLING_SEED)
    with torch.inference_mode():
        for _, ids in _batches(windows, batch_size, device):
            logits, targets = next_token_logits(model, ids), ids[:, 1:]
            parts = {name: [] for name in ("nll", *kept)}
            for window, where, z in _pieces(logits, device):
                lse, nll, predicted, exp = next_token_scores(z, targets[window, where])
                top_logits, top_ids = z.topk(min(top_k, z.shape[-1]), dim=-1)
                tail_ids = tail_samples(exp, top_ids, tail_samples_per_token, generator)
                for name, value in (("nll", nll), ("predicted", predicted.int()), ("top_ids", top_ids.int()),
                                    ("top_logprobs", top_logits - lse[..., None]), ("tail_ids", tail_ids.int()),
                                    ("tail_logprobs", z.gather(-1, tail_ids) - lse[..., None])):
                    parts[name].append(value)
            batch = _per_prediction(parts, targets.shape)
            sums["nll"].append(batch.pop("nll").double().sum(-1))
            sums["correct"].append((batch["predicted"] == targets).sum(-1))
            for name, value in batch.items():
                kept[name].append(value)
        kept = {name: torch.cat(parts).cpu() for name, parts in kept.items()}
        windows = torch.as_tensor(np.asarray(windows), dtype=torch.long)
        return BaseEvaluation(nll=_per_window(sums["nll"]), correct=_per_window(sums["correct"]),
                              tokens=[windows.shape[1] - 1] * len(windows), windows=windows, **kept,
                              settings={**(settings or {}), "top_k": int(kept["top_ids"].shape[-1]),
                                        "tail_samples": int(kept["tail_ids"].shape[-1])})


def evaluate_variant(model, base: BaseEvaluation, device: str = "cpu", batch_size: int = 1) -> WindowScores:
    """Score a variant of the base model (merged, quantised, pruned: same tokenizer) on the base's
    windows: per-window NLL, correct predictions, KL(base || variant) (kl_to_base: the base's top-k
    tokens exactly, the rest from its draws) and agreement with the base's argmax. One forward
    pass per batch of windows; the base is never run again."""
    import torch

    sums = {"nll": [], "correct": [], "kl": [], "agree": []}
    with torch.inference_mode():
        for start, ids in _batches(base.windows, batch_size, device):
            logits, targets = next_token_logits(model, ids), ids[:, 1:]
            parts = {"nll": [], "predicted": [], "kl": []}
            for window, where, z in _pieces(logits, device):
                row = start + window
                lse, nll, predicted, _ = next_token_scores(z, targets[window, where])
                top_ids, tail_ids = (ids_[row, where].to(device).long() for ids_ in (base.top_ids, base.tail_ids))
                kl = kl_to_base(base.top_logprobs[row, where].to(device), z.gather(-1, top_ids) - lse[..., None],
                                base.tail_logprobs[row, where].to(device), z.gather(-1, tail_ids) - lse[..., None])
                for name, value in (("nll", nll), ("predicted", predicted), ("kl", kl)):
                    parts[name].append(value)
            batch = _per_prediction(parts, targets.shape)
            stop = start + len(ids)
            sums["nll"].append(batch["nll"].double().sum(-1))
            sums["correct"].append((batch["predicted"] == targets).sum(-1))
            sums["kl"].append(batch["kl"].sum(-1))
            sums["agree"].append((batch["predicted"] == base.predicted[start:stop].to(device)).sum(-1))
    return WindowScores(**{name: _per_window(values) for name, values in sums.items()}, tokens=list(base.tokens))


class Evaluator:
    """Scores models on fixed windows against one base evaluation: score(model, base=True)
    evaluates the base (evaluate_base) and keeps it, score(model) scores a variant against it
    (evaluate_variant). Evaluator.of(base) starts from a loaded base (the head-merge sweep)."""

    def __init__(self, windows, device: str = "cpu", batch_size: int = 1, top_k: int = DEFAULT_TOP_K,
                 base: BaseEvaluation = None, tail_samples: int = DEFAULT_TAIL_SAMPLES):
        self.windows, self.device, self.batch_size, self.base = windows, device, batch_size, base
        self.top_k, self.tail_samples = top_k, tail_samples

    @classmethod
    def of(cls, base: BaseEvaluation, device: str = "cpu", batch_size: int = 1) -> "Evaluator":
        return cls(base.windows, device, batch_size, base=base)

    def score(self, model, base: bool = False) -> WindowScores:
        if base:
            self.base = evaluate_base(model, self.windows, self.device, self.batch_size, self.top_k,
                                      tail_samples_per_token=self.tail_samples)
            return self.base
        return evaluate_variant(model, self.base, self.device, self.batch_size)
