"""An encoder evaluated by the fidelity of its sentence embeddings to the base model's: the
embeddings as sentence-transformers computes them for the checkpoint, the base evaluation of an
encoder (EncoderBase) and a variant scored against it (the fields: encoder_base's docstring).
Names stable (the base evaluation, head merging and the compression experiments call them):

    embedding_settings(checkpoint) -> {"pooling", "normalize", "max_seq_length", "do_lower_case", "from"}
    encoder_base_from_corpus(model, tokenizer, rows, checkpoint, device, count, group, batch_size,
                             per_article, settings) -> EncoderBase        (what evaluate_base runs)
    evaluate_encoder_base(model, input_ids, attention_mask, articles, device, batch_size, group,
                          embedding, settings) -> EncoderBase
    evaluate_encoder_variant(model, base, device, batch_size) -> EncoderScores
    EncoderEvaluator.of(base, device, batch_size).score(model)           (as forward.Evaluator)

Embeddings (sentence-transformers' Transformer -> Pooling -> Normalize modules): the last hidden
state, pooled over the attention mask (mean, as all-MiniLM-L6-v2's 1_Pooling/config.json says,
or the CLS token, or the maximum), L2-normalised when modules.json lists a Normalize module;
sentences truncated at sentence_bert_config.json's max_seq_length. A checkpoint without those
files (an encoder from the hub) is mean-pooled, not normalised (cosines do not change),
truncated at its max_position_embeddings.
"""

import json
from pathlib import Path

import numpy as np

from blockscope.errors import BlockscopeError
from blockscope.evaluation.encoder_base import (
    ENCODER_KIND,
    EncoderBase,
    EncoderScores,
    group_articles,
    group_sizes,
    group_sums,
)
from blockscope.evaluation.sentences import MIN_WORDS, corpus_sentences

POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                 "pooling_mode_max_tokens": "max"}
DEFAULT_MAX_LENGTH = 512


def _json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def embedding_settings(checkpoint) -> dict:
    """How sentence-transformers embeds with this checkpoint, from its modules.json, the Pooling
    module's config.json and sentence_bert_config.json (the module docstring's defaults
    without them). BlockscopeError for a pooling this module does not compute."""
    folder = Path(checkpoint)
    modules = _json(folder / "modules.json") or []
    types = {m.get("type", "").rsplit(".", 1)[-1]: m for m in modules}
    bert = _json(folder / "sentence_bert_config.json") or {}
    config = _json(folder / "config.json") or {}
    pooling = "mean"
    if "Pooling" in types:
        pool = _json(folder / types["Pooling"].get("path", "") / "config.json") or {}
        modes = [name for key, name in POOLING_MODES.items() if pool.get(key)]
        others = [key for key, on in pool.items() if key.startswith("pooling_mode") and on and key not in POOLING_MODES]
        if len(modes) != 1 or others:
            raise BlockscopeError(f"sentence-transformers pooling {sorted(k for k, v in pool.items() if v is True)} "
                                  "is not one of mean, cls, max", path=folder / types["Pooling"].get("path", ""),
                                  fix="evaluate an encoder with one of those poolings")
        pooling = modes[0]
    return {"pooling": pooling, "normalize": "Normalize" in types,
            "max_seq_length": int(bert.get("max_seq_length") or config.get("max_position_embeddings")
                                  or DEFAULT_MAX_LENGTH),
            "do_lower_case": bool(bert.get("do_lower_case", False)),
            "from": "sentence-transformers config" if modules else "defaults"}


def tokenize_sentences(tokenizer, sentences, embedding: dict) -> tuple:
    """(input_ids, attention_mask), (n, length) int64 tensors padded to the longest sentence, each
    truncated at max_seq_length tokens (sentence-transformers' Transformer.tokenize)."""
    texts = [s.strip().lower() if embedding["do_lower_case"] else s.strip() for s in sentences]
    out = tokenizer(texts, padding=True, truncation="longest_first", max_length=embedding["max_seq_length"],
                    return_tensors="pt")
    return out["input_ids"].long(), out["attention_mask"].long()


def mean_pooling(hidden, mask):
    """Mean of the hidden states over the attended tokens: sum(h * m) / max(sum(m), 1e-9)."""
    weights = mask[..., None].to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)


def cls_pooling(hidden, mask):
    """The first token's hidden state."""
    return hidden[:, 0]


def max_pooling(hidden, mask):
    """Per dimension, the largest hidden state among the attended tokens (padding at -1e9)."""
    return hidden.masked_fill(mask[..., None] == 0, -1e9).max(1).values


POOLINGS = {"mean": mean_pooling, "cls": cls_pooling, "max": max_pooling}


def _length_batches(attention_mask, batch_size: int):
    """Indices of batch_size sentences at a time, longest first (each batch is cut to its longest
    sentence: less padding to compute), and that length."""
    lengths = attention_mask.sum(1)
    order = lengths.argsort(descending=True, stable=True)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        yield rows, int(lengths[rows].max())


def sentence_embeddings(model, input_ids, attention_mask, embedding: dict, device: str = "cpu", batch_size: int = 32):
    """(n, d) float32 CPU tensor: each sentence's embedding, pooled and (per embedding["normalize"])
    L2-normalised, in the sentences' order."""
    import torch

    pool, out = POOLINGS[embedding["pooling"]], None
    with torch.inference_mode():
        for rows, length in _length_batches(attention_mask, batch_size):
            ids, mask = input_ids[rows, :length].to(device), attention_mask[rows, :length].to(device)
            pooled = pool(model(input_ids=ids, attention_mask=mask).last_hidden_state.float(), mask)
            if embedding["normalize"]:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            if out is None:
                out = torch.empty((len(input_ids), pooled.shape[1]), dtype=torch.float32)
            out[rows] = pooled.cpu()
    return out


def cosines(a, b) -> np.ndarray:
    """Per row, cosine(a_i, b_i), in float64."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def top1_neighbours(embeddings) -> np.ndarray:
    """Per sentence, the index of the most cosine-similar other sentence (itself excluded; the
    lowest index among exact ties)."""
    unit = np.asarray(embeddings, dtype=np.float64)
    unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(1)


def encoder_scores(base_embeddings, base_neighbours, embeddings, group: int) -> EncoderScores:
    """Per group of `group` consecutive sentences: the embedding loss sum(1 - cosine) (as nll and
    kl), its sentences (tokens) and those whose top-1 neighbour is the base's (correct, agree)."""
    loss = 1.0 - cosines(base_embeddings, embeddings)
    same = (top1_neighbours(embeddings) == np.asarray(base_neighbours)).astype(np.int64)
    sums, agree = group_sums(loss, group), [int(s) for s in group_sums(same, group)]
    return EncoderScores(nll=sums, correct=agree, tokens=group_sizes(len(loss), group), kl=list(sums), agree=agree)


def evaluate_encoder_base(model, input_ids, attention_mask, articles, device: str = "cpu", batch_size: int = 32,
                          group: int = 16, embedding: dict = None, settings: dict = None) -> EncoderBase:
    """The base encoder's evaluation on the tokenised sentences: its embeddings and neighbours,
    kept for its variants, and its (trivial) scores against itself per group."""
    import torch

    embedding = embedding or {"pooling": "mean", "normalize": False, "max_seq_length": DEFAULT_MAX_LENGTH,
                              "do_lower_case": False}
    embeddings = sentence_embeddings(model, input_ids, attention_mask, embedding, device, batch_size)
    neighbours = top1_neighbours(embeddings.numpy())
    sizes = group_sizes(len(neighbours), group)
    return EncoderBase(nll=[0.0] * len(sizes), correct=list(sizes), tokens=list(sizes), input_ids=input_ids,
                       attention_mask=attention_mask, embeddings=embeddings,
                       neighbours=torch.as_tensor(neighbours, dtype=torch.int64),
                       articles=torch.as_tensor(np.asarray(articles), dtype=torch.int64),
                       settings={**(settings or {}), **embedding, "kind": ENCODER_KIND, "group": group,
                                 "sentences": len(neighbours), "batch_size": batch_size,
                                 "window_articles": group_articles(articles, group)})


def encoder_base_from_corpus(model, tokenizer, rows, checkpoint, device: str = "cpu", count: int = 512,
                             group: int = 16, batch_size: int = 32, per_article: int | None = None,
                             settings: dict = None, model_name=None) -> EncoderBase:
    """The base evaluation of an encoder on the corpus rows (corpus.raw_file_rows): the first
    `count` sentences (sentences.corpus_sentences), embedded the way embedding_settings(checkpoint)
    says. What rule evaluate_base runs for an encoder."""
    sentences, articles = corpus_sentences(rows, count, per_article=per_article, model=model_name)
    embedding = embedding_settings(checkpoint)
    input_ids, attention_mask = tokenize_sentences(tokenizer, sentences, embedding)
    made = {**(settings or {}), "min_words": MIN_WORDS, "per_article": per_article,
            "truncated": int((attention_mask.sum(1) >= embedding["max_seq_length"]).sum())}
    return evaluate_encoder_base(model, input_ids, attention_mask, articles, device, batch_size, group, embedding,
                                 made)


def evaluate_encoder_variant(model, base: EncoderBase, device: str = "cpu", batch_size: int = 32) -> EncoderScores:
    """Score a variant of the base encoder (merged, quantised, pruned: same tokenizer) on the base's
    sentences: per group, the embedding loss, the sentences and the retrieval agreement."""
    embeddings = sentence_embeddings(model, base.input_ids, base.attention_mask, base.settings, device, batch_size)
    return encoder_scores(base.embeddings.numpy(), base.neighbours.numpy(), embeddings.numpy(), base.group)


class EncoderEvaluator:
    """forward.Evaluator's interface for an encoder: Evaluator.of(base).score(model) scores a
    variant against the base (the head-merge sweep's and the compression experiments' call)."""

    def __init__(self, base: EncoderBase, device: str = "cpu", batch_size: int = 32):
        self.base, self.device, self.batch_size = base, device, batch_size

    @classmethod
    def of(cls, base: EncoderBase, device: str = "cpu", batch_size: int = 32) -> "EncoderEvaluator":
        return cls(base, device, batch_size)

    def score(self, model, base: bool = False) -> EncoderScores:
        if base:
            raise ValueError("an encoder's base is made by evaluate_encoder_base, from its sentences")
        return evaluate_encoder_variant(model, self.base, self.device, self.batch_size)
