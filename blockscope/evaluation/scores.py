"""A model's scores on the corpus windows, kept per window (so that totals and bootstrap
resamples are exact), and the perplexity change's confidence interval between two of them."""

from dataclasses import dataclass, field

import numpy as np


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
