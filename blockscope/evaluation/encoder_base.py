"""An encoder's base evaluation and its variants' scores, as data (blockscope.evaluation.encoder
computes them; base_artifact saves and loads the base beside a causal LM's, settings "kind":
"encoder").

An encoder predicts no tokens, so its variants are scored by the fidelity of their sentence
embeddings to the base model's, per group of consecutive sentences (the "windows" the paired
tests of paired_tests.py resample), in WindowScores' fields:
    nll     sum over the group's sentences of 1 - cosine(base embedding, variant embedding):
            the embedding loss, 0 for the base itself; lower is better, like an NLL
    kl      the same sums (code that reads a variant's KL to its base reads this loss)
    tokens  the group's sentences
    correct sentences whose top-1 retrieval neighbour (the most cosine-similar other sentence
    agree   among all the base's sentences) is the same under the variant's embeddings as under
            the base's (both fields hold it)
"""

from dataclasses import dataclass, field

import numpy as np

from blockscope.evaluation.scores import WindowScores

ENCODER_KIND = "encoder"
# What EncoderBase keeps per sentence in its file (beside WindowScores' per-group sums).
ENCODER_FIELDS = ("input_ids", "attention_mask", "embeddings", "neighbours", "articles")


def encoder_summary(scores: WindowScores) -> dict:
    """embedding_cosine (mean cosine to the base's embedding), retrieval_agreement (share of
    sentences whose top-1 neighbour is the base's), embedding_loss (1 - embedding_cosine), and
    sentences_evaluated."""
    sentences = sum(scores.tokens)
    loss = sum(scores.nll) / sentences
    same = scores.agree if scores.agree else scores.correct
    return {"embedding_cosine": 1.0 - loss, "retrieval_agreement": sum(same) / sentences, "embedding_loss": loss,
            "sentences_evaluated": int(sentences)}


@dataclass
class EncoderScores(WindowScores):
    """A variant of an encoder scored against its base (the module docstring's fields); summary()
    gives encoder_summary's keys, not perplexity."""

    def summary(self) -> dict:
        return encoder_summary(self)


@dataclass
class EncoderBase(EncoderScores):
    """An encoder's base evaluation: its per-group scores against itself (loss 0, every neighbour
    its own) and, per sentence, what scoring a variant needs, as CPU tensors:

    input_ids      (n, length) int64, the sentences tokenised (padded to the longest, truncated
                   at the model's max_seq_length)
    attention_mask (n, length) int64
    embeddings     (n, d) float32, the base's sentence embeddings
    neighbours     (n,) int64, each sentence's top-1 retrieval neighbour under the base
    articles       (n,) int64, the WikiText article of each sentence
    settings       kind "encoder", group, pooling, normalize, max_seq_length, window_articles, ...
    skipped        None (a skipped model's base is base_artifact.skipped_base)
    """
    input_ids: object = None
    attention_mask: object = None
    embeddings: object = None
    neighbours: object = None
    articles: object = None
    settings: dict = field(default_factory=dict)
    skipped: str | None = None

    @property
    def group(self) -> int:
        return int(self.settings["group"])

    def group_starts(self) -> list:
        """The index of each group's first sentence."""
        return list(range(0, len(self.neighbours), self.group))

    def spread_windows(self, max_tokens: int | None) -> "EncoderBase":
        """Every group: retrieval ranks each sentence among all of the base's, so a variant is
        scored on them all (eval.encoder_sentences is the encoder's budget, not max_tokens)."""
        return self


def group_sizes(count: int, group: int) -> list:
    """Sentences per consecutive group of `group` (the last may be smaller)."""
    return [min(group, count - start) for start in range(0, count, group)]


def group_sums(values, group: int) -> list:
    """Per-sentence values summed per consecutive group of `group`, in float64."""
    values = np.asarray(values, dtype=np.float64)
    return [float(values[start:start + group].sum()) for start in range(0, len(values), group)]


def group_articles(articles, group: int) -> list:
    """[first, last] article index of each group (settings "window_articles", as a causal LM's windows)."""
    articles = [int(a) for a in articles]
    return [[articles[start], articles[min(start + group, len(articles)) - 1]]
            for start in range(0, len(articles), group)]
