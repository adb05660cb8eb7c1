"""Next-token evaluation on a corpus: perplexity, accuracy, KL and top-1 agreement with a base model.

Convention (GPTQ and its successors): the corpus rows are joined with "\\n\\n", tokenised once,
and cut into non-overlapping windows of seq_len tokens (the tail that does not fill a window is
dropped); each window is scored on its seq_len - 1 next-token predictions. Perplexity is
exp(sum NLL / number of predictions), exact at token level (GPTQ multiplies each window's mean
loss by seq_len, a 1/seq_len difference).

The base model is evaluated once (rule evaluate_base) into a BaseEvaluation: its windows, its
per-window scores and, per predicted token, what KL and agreement need: the base's argmax, its
top-k log-probabilities with their token ids, and draws from the rest of its distribution. Every
variant (merged heads, a quantised or pruned model) is then scored against it with one forward
pass per window; the base is never run again. Public API, names stable (the head-merge sweep
and the compression experiments call it):

    evaluate_base(model, windows, device, batch_size, top_k, settings, tail_samples_per_token) -> BaseEvaluation
    save_base(base, path) / load_base(path) -> BaseEvaluation     (results/{model}/eval/base.safetensors)
    evaluate_variant(model, base, device, batch_size) -> WindowScores   (loss, accuracy, KL, agreement)
    perplexity_change_ci(base, variant) -> (low, high)             (paired bootstrap over windows)
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from blockscope import layout
from blockscope.io.atomic import atomic_path
from blockscope.errors import BlockscopeError


def corpus_text(rows) -> str:
    """WikiText rows joined the GPTQ way."""
    return "\n\n".join(rows)


def raw_file_rows(path) -> list:
    """A raw text file as rows: its lines, newlines normalised to \\n and kept (as `datasets`
    keeps them in WikiText's rows)."""
    return Path(path).read_text(encoding="utf-8").replace("\r\n", "\n").splitlines(keepends=True)


def windows(token_ids: np.ndarray, seq_len: int, max_tokens: int | None, model=None) -> np.ndarray:
    """(n, seq_len) non-overlapping windows, at most max_tokens tokens in all."""
    count = len(token_ids) // seq_len
    if max_tokens:
        count = min(count, max_tokens // seq_len)
    if count < 1:
        raise BlockscopeError(f"the corpus has {len(token_ids)} tokens, fewer than one window of {seq_len} "
                              f"(or max_tokens < seq_len)", model=model, path="headmerge.corpus",
                              fix="use a longer corpus, a smaller headmerge.seq_len or a larger max_tokens")
    return np.asarray(token_ids[: count * seq_len]).reshape(count, seq_len)


# --- which models, which windows ----------------------------------------------------------------

def is_causal(dims: dict) -> bool:
    """Whether the checkpoint's architecture predicts the next token (what the evaluation scores)."""
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in dims.get("architectures", []))


# Files from which transformers builds a tokenizer (special tokens, added tokens and chat
# templates alone build none).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def has_tokenizer(checkpoint) -> bool:
    """Whether the checkpoint folder holds tokenizer files (a synthetic model built from a bare
    config holds none)."""
    return any((Path(checkpoint) / name).is_file() for name in TOKENIZER_FILES)


def skip_reason(dims: dict, checkpoint) -> str | None:
    """Why the model cannot be evaluated (so neither merged nor compressed), or None: the
    evaluation scores next-token predictions of the corpus: it needs a causal LM and a tokenizer."""
    if not is_causal(dims):
        return f"not a causal LM ({', '.join(dims.get('architectures') or ['unknown'])}): no next-token evaluation"
    if not has_tokenizer(checkpoint):
        return (f"no tokenizer in the checkpoint (none of {', '.join(TOKENIZER_FILES)}): the corpus cannot be "
                "tokenised; a synthetic model gets one with `like:` a model that has one")
    return None


def bits_over_chance(perplexity: float, vocab: int) -> float:
    """Bits per token a model gains over guessing uniformly among its vocabulary (whose
    perplexity is the vocabulary size): log2(vocab / perplexity). A random init scores about 0."""
    return float(np.log2(vocab / perplexity))


def chance_reason(model_name: str, perplexity: float, vocab: int | None, min_bits: float) -> str | None:
    """Why a model that predicts within min_bits of chance is not worth perturbing, or None."""
    if not vocab or not min_bits:
        return None
    gain = bits_over_chance(perplexity, vocab)
    if gain >= min_bits:
        return None
    return (f"{model_name} predicts at chance: base perplexity {perplexity:.0f} against a vocabulary of {vocab}, "
            f"{gain:+.2f} bits per token over uniform guessing (compress.min_bits_over_chance: {min_bits:g}); "
            "no plan can change what it has not learnt")


def window_settings(settings: dict, device: str) -> tuple:
    """(seq_len, max_tokens) for this device: a GPU may take longer windows and more tokens."""
    seq_len, max_tokens = settings["seq_len"], settings["max_tokens"]
    if device == "cuda":
        return settings.get("gpu_seq_len", seq_len), settings.get("gpu_max_tokens", max_tokens)
    return seq_len, max_tokens


def load_causal_lm(model_name: str, checkpoint, device: str, dtype: str):
    """(model in eval mode on device, tokenizer); BlockscopeError when transformers cannot load them."""
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


# --- the scores -----------------------------------------------------------------------------------

# KL to the base (docs/metrics.md, "KL to the base"): per prediction the base's top-k tokens are
# kept exactly (headmerge.kl_top_k) and the rest of its distribution by samples drawn from it
# (headmerge.kl_tail_samples): an unbiased estimate of the full KL at a fraction of its bytes.
DEFAULT_TOP_K = 64
DEFAULT_TAIL_SAMPLES = 32
SAMPLING_SEED = 0
# Probability outside the top k is floored here, in base and variant alike: below it, 1 - the
# top-k mass is float32 rounding of the logsumexp, not mass (and a zero would make KL infinite).
REST_FLOOR = 1e-12
# What BaseEvaluation keeps per window, and per prediction, in its file.
WINDOW_FIELDS = ("nll", "correct", "tokens")
PREDICTION_FIELDS = ("windows", "predicted", "top_ids", "top_logprobs", "tail_ids", "tail_logprobs")


@dataclass
class WindowScores:
    """Per-window sums, so that totals and bootstrap resamples are exact: `nll` (nats), `correct`
    (argmax = next token), `tokens` (predictions); scored against a base also `kl` (nats,
    KL(base || model)) and `agree` (argmax = the base's argmax)."""
    nll: list = field(default_factory=list)
    correct: list = field(default_factory=list)
    tokens: list = field(default_factory=list)
    kl: list = field(default_factory=list)
    agree: list = field(default_factory=list)

    def summary(self) -> dict:
        tokens = sum(self.tokens)
        out = {"perplexity": float(np.exp(sum(self.nll) / tokens)), "accuracy": sum(self.correct) / tokens,
               "tokens_evaluated": int(tokens)}
        if self.kl:
            out["kl_divergence"] = sum(self.kl) / tokens
            out["top1_agreement"] = sum(self.agree) / tokens
        return out


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
    settings      how it was made: seq_len, top_k, device, dtype, corpus_sha256, ...
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

    def first_windows(self, max_tokens: int | None) -> "BaseEvaluation":
        """The evaluation restricted to its first windows, at most max_tokens tokens (at least one
        window; None: all): variants scored against it see only those windows."""
        if self.skipped or not max_tokens:
            return self
        count = max(1, max_tokens // self.windows.shape[1])
        if count >= len(self.nll):
            return self
        return BaseEvaluation(**{name: getattr(self, name)[:count] for name in (*WINDOW_FIELDS, *PREDICTION_FIELDS)},
                              settings={**self.settings, "windows_scored": count})


def perplexity_change_ci(base: WindowScores, variant: WindowScores, samples=1000, seed=0, level=0.95):
    """Paired bootstrap over windows of perplexity(variant) - perplexity(base): (low, high).
    base may be a BaseEvaluation."""
    rng = np.random.default_rng(seed)
    nll_b, nll_m, tokens = (np.asarray(x) for x in (base.nll, variant.nll, base.tokens))
    pick = rng.integers(0, len(tokens), size=(samples, len(tokens)))
    n = tokens[pick].sum(1)
    change = np.exp(nll_m[pick].sum(1) / n) - np.exp(nll_b[pick].sum(1) / n)
    tail = (1 - level) / 2
    return float(np.quantile(change, tail)), float(np.quantile(change, 1 - tail))


# --- the formulas (docs/metrics.md) ----------------------------------------------------------------

def rest_mass(top_logprobs):
    """Probability outside the top-k ids: 1 - sum exp(top-k log-probs), in float64, floored at
    REST_FLOOR."""
    import torch

    return (-torch.expm1(torch.logsumexp(top_logprobs.double(), -1))).clamp_min(REST_FLOOR)


def kl_to_base(base_top, variant_top, base_tail, variant_tail):
    """Per prediction KL(base || variant) = sum_v p_b(v) (log p_b(v) - log p_m(v)), from the
    log-probabilities of the base's top-k tokens (..., k) and of s draws from its distribution
    outside them (..., s): exact over the top k and the rest's mass (R = 1 - top-k mass),
        sum_top p_b (log p_b - log p_m) + R_b log(R_b / R_m),
    plus R_b KL(tail_b || tail_m) of the renormalised tails, estimated without bias and >= 0
    per draw by mean_s(d + exp(-d) - 1), d = log tail_b - log tail_m at the draw (Schulman's k3;
    exact in expectation because the variant's tail sums to one). docs/metrics.md."""
    import torch

    base_top, variant_top = base_top.double(), variant_top.double()
    rest_b, rest_v = rest_mass(base_top), rest_mass(variant_top)
    kl = (base_top.exp() * (base_top - variant_top)).sum(-1) + rest_b * (rest_b.log() - rest_v.log())
    if base_tail.shape[-1]:  # none when the top k is the whole vocabulary
        d = (base_tail.double() - rest_b.log()[..., None]) - (variant_tail.double() - rest_v.log()[..., None])
        kl = kl + rest_b * (d + torch.expm1(-d)).mean(-1)
    return kl


def tail_samples(exp, top_ids, count: int, generator):
    """(..., count) token ids drawn from the distribution proportional to `exp` (exp(z - max),
    consumed: worked in place) outside `top_ids`, by systematic sampling (one uniform offset per
    prediction, `count` evenly spaced points of the tail's CDF): each draw follows the tail
    distribution, with less spread than independent ones."""
    import torch

    if count == 0 or top_ids.shape[-1] >= exp.shape[-1]:
        return top_ids.new_empty((*top_ids.shape[:-1], 0))
    cdf = exp.scatter_(-1, top_ids, 0.0).cumsum_(-1)
    offset = torch.rand((*cdf.shape[:-1], 1), generator=generator, device=cdf.device)
    points = (torch.arange(count, device=cdf.device) + offset).clamp_min_(1e-6) / count * cdf[..., -1:]
    return torch.searchsorted(cdf, points).clamp_max_(cdf.shape[-1] - 1)


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


# --- evaluation ------------------------------------------------------------------------------------

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


# --- the artifact: results/{model}/eval/ ----------------------------------------------------------

def skipped_base(reason: str, settings: dict = None) -> BaseEvaluation:
    """The base evaluation of a model that cannot be evaluated, with the reason."""
    return BaseEvaluation(settings=settings or {}, skipped=reason)


def save_base(base: BaseEvaluation, path):
    """Write a BaseEvaluation as one safetensors file (atomically): the per-window sums and the
    per-prediction tensors, settings and skip reason as JSON metadata."""
    import torch
    from safetensors.torch import save_file

    tensors = {}
    if not base.skipped:
        tensors = {name: torch.as_tensor(getattr(base, name)).contiguous() for name in PREDICTION_FIELDS}
        tensors |= {name: torch.tensor(getattr(base, name), dtype=torch.float64 if name == "nll" else torch.int64)
                    for name in WINDOW_FIELDS}
    metadata = {"blockscope": json.dumps({"settings": base.settings, "skipped": base.skipped})}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_base(path) -> BaseEvaluation:
    """The BaseEvaluation that save_base wrote (results/{model}/eval/base.safetensors); a skipped
    model's has `skipped` set and nothing else. BlockscopeError for a file that is not one."""
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
    return BaseEvaluation(**sums, **tensors, settings=meta["settings"])


def base_windows_table(base: BaseEvaluation):
    """One row per window (layout.EVAL_WINDOW_COLUMNS): its sums, loss and accuracy."""
    import pandas as pd

    table = pd.DataFrame({name: getattr(base, name) for name in WINDOW_FIELDS})
    seq_len = base.windows.shape[1] if base.windows is not None else 0
    table.insert(0, "window", range(len(table)))
    table.insert(1, "first_token", table["window"] * seq_len)
    table["loss"] = table["nll"] / table["tokens"]
    table["accuracy"] = table["correct"] / table["tokens"]
    return table[layout.EVAL_WINDOW_COLUMNS]


def base_record(base: BaseEvaluation, path=None) -> dict:
    """base.json: the summary, the settings, the KL truncation's weight and the artifact's size."""
    if base.skipped:
        return {"skipped": base.skipped, **base.settings}
    rest = base.rest_mass()
    return {**base.summary(), "windows": len(base.nll), **base.settings,
            "rest_mass_mean": float(rest.mean()), "rest_mass_max": float(rest.max()),
            **({"bytes": Path(path).stat().st_size} if path else {})}
