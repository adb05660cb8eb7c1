"""The evaluation corpus and its windows.

Convention (GPTQ and its successors): the corpus rows are joined with "\\n\\n", tokenised once,
and cut into non-overlapping windows of seq_len tokens (the tail that does not fill a window is
dropped); each window is scored on its seq_len - 1 next-token predictions. Perplexity is
exp(sum NLL / number of predictions), exact at token level (GPTQ multiplies each window's mean
loss by seq_len, a 1/seq_len difference).
"""

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


def windows(token_ids: np.ndarray, seq_len: int, max_tokens: int | None, model=None) -> np.ndarray:
    """(n, seq_len) non-overlapping windows, at most max_tokens tokens in all."""
    count = len(token_ids) // seq_len
    if max_tokens:
        count = min(count, max_tokens // seq_len)
    if count < 1:
        raise BlockscopeError(f"the corpus has {len(token_ids)} tokens, fewer than one window of {seq_len} "
                              f"(or max_tokens < seq_len)", model=model, path="eval.corpus",
                              fix="use a longer corpus, a smaller eval.seq_len or a larger eval.max_tokens")
    return np.asarray(token_ids[: count * seq_len]).reshape(count, seq_len)


def window_settings(settings: dict, device: str) -> tuple:
    """(seq_len, max_tokens) for this device: a GPU may take longer windows and more tokens."""
    seq_len, max_tokens = settings["seq_len"], settings["max_tokens"]
    if device == "cuda":
        return settings.get("gpu_seq_len", seq_len), settings.get("gpu_max_tokens", max_tokens)
    return seq_len, max_tokens
