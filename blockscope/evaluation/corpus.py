"""The evaluation corpus, its windows and the WikiText articles they cover.

Convention (GPTQ and its successors): the corpus rows are joined with "\\n\\n", tokenised once,
and cut into non-overlapping windows of seq_len tokens (the tail that does not fill a window is
dropped); each window is scored on its seq_len - 1 next-token predictions. Perplexity is
exp(sum NLL / number of predictions). GPTQ computes exp(mean over windows of each window's mean
loss) (it multiplies each mean by seq_len, sums, and divides by windows x seq_len); every window
holds the same number of predictions, so the two are the same number.

Windows of one article are not independent samples of text: the article count of the windows
(article_starts, window_articles) says how much text a comparison rests on.
"""

import re
from pathlib import Path

import numpy as np

from blockscope.errors import BlockscopeError


def corpus_text(rows) -> str:
    """WikiText rows joined the GPTQ way."""
    return "\n\n".join(rows)


def raw_file_rows(path) -> list:
    """A raw text file as rows: its lines, newlines normalised to \\n and kept (as `datasets`
    keeps them in WikiText's rows)."""
    return Path(path).read_text(encoding="utf-8").replace("\r\n", "\n").splitlines(keepends=True)


def window_offsets(total_tokens: int, seq_len: int, max_tokens: int | None, model=None) -> np.ndarray:
    """The first token of each window. The corpus holds total_tokens // seq_len non-overlapping
    slots of seq_len tokens; all of them when max_tokens is None or allows it, else
    max_tokens // seq_len slots spread evenly from the first to the last (so a CPU sample of the
    split reads many articles, not the first one or two, and neighbouring windows, which share an
    article, are rarely both in it)."""
    slots = total_tokens // seq_len
    count = min(slots, max_tokens // seq_len) if max_tokens else slots
    if count < 1:
        raise BlockscopeError(f"the corpus has {total_tokens} tokens, fewer than one window of {seq_len} "
                              f"(or max_tokens < seq_len)", model=model, path="eval.corpus",
                              fix="use a longer corpus, a smaller eval.seq_len or a larger eval.max_tokens")
    return spread_indices(slots, count) * seq_len


def spread_indices(available: int, count: int) -> np.ndarray:
    """count distinct indices of 0 .. available - 1, evenly spaced, first and last included
    (steps of at least 1 round to distinct integers)."""
    return np.linspace(0, available - 1, count).round().astype(np.int64)


def windows(token_ids: np.ndarray, seq_len: int, max_tokens: int | None, model=None) -> np.ndarray:
    """(n, seq_len) non-overlapping windows at window_offsets, at most max_tokens tokens in all."""
    token_ids = np.asarray(token_ids)
    offsets = window_offsets(len(token_ids), seq_len, max_tokens, model)
    return token_ids[offsets[:, None] + np.arange(seq_len)]


def window_settings(settings: dict, device: str) -> tuple:
    """(seq_len, max_tokens) for this device: a GPU may take longer windows and more tokens."""
    seq_len, max_tokens = settings["seq_len"], settings["max_tokens"]
    if device == "cuda":
        return settings.get("gpu_seq_len", seq_len), settings.get("gpu_max_tokens", max_tokens)
    return seq_len, max_tokens


# A WikiText article starts at its title line " = Title = ": one "=" each side; sections are
# " = = Section = = " and deeper.
ARTICLE_HEADING = re.compile(r"\s*= (?!=).*(?<!=) =\s*")


def article_starts(rows) -> list:
    """The character offsets in corpus_text(rows) at which WikiText articles start: the rows that
    are a title line " = Title = " (exactly one "=" each side). On wikitext-2-raw-v1 test this
    finds the 60 articles and two equation fragments of "Constant k filter" that look like titles
    (" = 1 henry and capacitance C = "): a count of articles can be 2 too high there."""
    starts, offset = [], 0
    for row in rows:
        if ARTICLE_HEADING.fullmatch(row):
            starts.append(offset)
        offset += len(row) + 2  # the "\n\n" that corpus_text puts between rows
    return starts


def token_ids_and_starts(tokenizer, text: str) -> tuple:
    """(token ids, each token's first character offset in text), the offsets from a fast
    tokenizer's offset_mapping; (ids, None) for a slow tokenizer, which has no offsets."""
    if not getattr(tokenizer, "is_fast", False):
        return np.asarray(tokenizer(text)["input_ids"]), None
    encoded = tokenizer(text, return_offsets_mapping=True)
    return np.asarray(encoded["input_ids"]), np.asarray([start for start, _ in encoded["offset_mapping"]])


def token_articles(token_starts, starts) -> np.ndarray:
    """Per token, the index of the article its first character lies in: the last article start at
    or before it (text before the first title, and special tokens at offset 0, count as article 0)."""
    if len(starts) == 0:
        return np.zeros(len(token_starts), dtype=np.int64)
    return np.maximum(np.searchsorted(np.asarray(starts), np.asarray(token_starts), side="right") - 1, 0)


def window_articles(token_starts, starts, seq_len: int, offsets) -> list:
    """Per window (seq_len tokens from each of `offsets`, window_offsets), [first, last]: the
    indices of the first and the last article its tokens lie in (token_articles); articles are
    contiguous, so a window covers every article between them."""
    offsets = np.asarray(offsets, dtype=np.int64)
    articles = token_articles(np.asarray(token_starts)[offsets[:, None] + np.arange(seq_len)].ravel(), starts)
    articles = articles.reshape(len(offsets), seq_len)
    return [[int(first), int(last)] for first, last in zip(articles[:, 0], articles[:, -1])]


def articles_in(window_ranges) -> int:
    """The distinct articles a list of [first, last] windows covers: |union of first..last|."""
    return len({a for first, last in window_ranges for a in range(first, last + 1)})
