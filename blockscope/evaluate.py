"""Next-token evaluation on a corpus: perplexity, accuracy, KL and agreement with a base model.

Convention (GPTQ and its successors): the corpus rows are joined with "\\n\\n", tokenised once,
and cut into non-overlapping windows of seq_len tokens (the tail that does not fill a window is
dropped); each window is scored on its seq_len - 1 next-token predictions. Perplexity is
exp(sum NLL / number of predictions), exact at token level (GPTQ multiplies each window's mean
loss by seq_len, a 1/seq_len difference).
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import BlockscopeError


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


@dataclass
class WindowScores:
    """Per-window sums, so that totals and bootstrap resamples are exact."""
    nll: list = field(default_factory=list)
    correct: list = field(default_factory=list)
    tokens: list = field(default_factory=list)
    kl: list = field(default_factory=list)
    agree: list = field(default_factory=list)

    def add(self, **values):
        for name, value in values.items():
            getattr(self, name).append(float(value))

    def summary(self) -> dict:
        tokens = sum(self.tokens)
        out = {"perplexity": float(np.exp(sum(self.nll) / tokens)), "accuracy": sum(self.correct) / tokens,
               "tokens_evaluated": int(tokens)}
        if self.kl:
            out["kl_divergence"] = sum(self.kl) / tokens
            out["top1_agreement"] = sum(self.agree) / tokens
        return out


def perplexity_change_ci(base: WindowScores, merged: WindowScores, samples=1000, seed=0, level=0.95):
    """Paired bootstrap over windows of perplexity(merged) - perplexity(base): (low, high)."""
    rng = np.random.default_rng(seed)
    nll_b, nll_m, tokens = (np.asarray(x) for x in (base.nll, merged.nll, base.tokens))
    pick = rng.integers(0, len(tokens), size=(samples, len(tokens)))
    n = tokens[pick].sum(1)
    change = np.exp(nll_m[pick].sum(1) / n) - np.exp(nll_b[pick].sum(1) / n)
    tail = (1 - level) / 2
    return float(np.quantile(change, tail)), float(np.quantile(change, 1 - tail))


class Evaluator:
    """Scores models on fixed windows; caches the base model's log-probabilities for KL."""

    def __init__(self, windows: np.ndarray, device: str = "cpu", batch_size: int = 1, cache_mb: int = 2048):
        import torch

        self.torch = torch
        self.windows = torch.as_tensor(windows, dtype=torch.long)
        self.device, self.batch_size, self.cache_mb = device, batch_size, cache_mb
        self.base_model, self.base_cache = None, {}

    def _batches(self):
        for start in range(0, len(self.windows), self.batch_size):
            yield start, self.windows[start:start + self.batch_size].to(self.device)

    def _logits(self, model, ids):
        with self.torch.inference_mode():
            return model(ids).logits[:, :-1].float()

    def _dot(self, p, logits):
        """Per token p . z over the vocabulary, as one fused batched product."""
        return self.torch.matmul(p.unsqueeze(-2), logits.unsqueeze(-1))[..., 0, 0]

    def _base_terms(self, logits, lse):
        """What KL against this base needs: p_base and sum p log p = p . z - logsumexp(z)."""
        with self.torch.inference_mode():
            p = self.torch.softmax(logits, dim=-1)
            return p, self._dot(p, logits) - lse

    def score(self, model, base: bool = False) -> WindowScores:
        """Score every window; with base=True remember the model and what KL needs.

        Per token, from the logits z: NLL = logsumexp(z) - z[target]; KL(base || model) =
        sum p_b log p_b - p_b . z + logsumexp(z) (sum p_b = 1), so a merged model costs one
        logsumexp, one dot product and one argmax over the vocabulary per token.
        """
        torch = self.torch
        scores = WindowScores()
        if base:
            self.base_model, self.base_cache = model, {}
            budget = self.cache_mb * 2**20
        for start, ids in self._batches():
            logits = self._logits(model, ids)
            with torch.inference_mode():
                targets = ids[:, 1:]
                lse = torch.logsumexp(logits, dim=-1)
                nll = lse - logits.gather(-1, targets[..., None])[..., 0]
                predicted = logits.argmax(-1)
                if base:
                    if (len(self.base_cache) + 1) * logits.numel() * 4 <= budget:
                        self.base_cache[start] = (*self._base_terms(logits, lse), predicted)
                else:
                    cached = self.base_cache.get(start)
                    if cached is None:  # beyond the cache: recompute the base for this window
                        base_logits = self._logits(self.base_model, ids)
                        base_lse = torch.logsumexp(base_logits, dim=-1)
                        cached = (*self._base_terms(base_logits, base_lse), base_logits.argmax(-1))
                    p_base, neg_entropy, base_predicted = cached
                    kl = neg_entropy - self._dot(p_base, logits) + lse
                    agree = predicted == base_predicted
            for row in range(ids.shape[0]):
                extra = {} if base else {"kl": kl[row].sum().item(), "agree": agree[row].sum().item()}
                scores.add(nll=nll[row].sum().item(), correct=(predicted[row] == targets[row]).sum().item(),
                           tokens=targets.shape[1], **extra)
        return scores
