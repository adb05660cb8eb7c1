"""A variant scored against its base evaluation, whichever kind the base is: a causal LM's
(blockscope.evaluation.forward: next-token loss, KL, agreement) or an encoder's
(blockscope.evaluation.encoder: the fidelity of its sentence embeddings). Head merging, the
compression experiments and the per-matrix sensitivity call these, so that none of them
branches on the kind:

    is_encoder_base(base) -> bool
    comparison_metric(base) -> "nll" | "embedding_loss"   (the comparisons table's `metric`)
    score_variant(model, base, device, batch_size) -> WindowScores
    variant_evaluator(base, device, batch_size) -> Evaluator | EncoderEvaluator
    score_fields(scores) -> the summary tables' score columns
    reported_metrics(scores) -> the two numbers a threshold's record keeps of base and merged

In both kinds the field `nll` holds a loss per window that is lower for a better variant (nats
for a causal LM; the sum of 1 - cosine to the base's embeddings for an encoder), so the paired
tests compare the field `nll` of either; `metric` names what it holds.
"""

import math

from blockscope.evaluation.encoder import EncoderEvaluator, evaluate_encoder_variant
from blockscope.evaluation.encoder_base import EncoderScores
from blockscope.evaluation.forward import Evaluator, evaluate_variant
from blockscope.evaluation.scores import WindowScores

NLL, EMBEDDING_LOSS = "nll", "embedding_loss"
# The score columns of the summary tables (layout.COMPRESS_SCORE_COLUMNS less the perplexity change
# and its interval, which the experiments compute beside them): next-token ones, then the encoder's.
NEXT_TOKEN_FIELDS = ("perplexity", "accuracy", "top1_agreement")
ENCODER_FIELDS = ("embedding_cosine", "retrieval_agreement")
# What a head-merge threshold's record keeps of the base and of the merged model, per kind.
REPORTED = {NLL: ("perplexity", "accuracy"), EMBEDDING_LOSS: ENCODER_FIELDS}


def is_encoder_base(scores) -> bool:
    """Whether the scores (a base evaluation or a variant's) are an encoder's: sentence-embedding fidelity."""
    return isinstance(scores, EncoderScores)


def comparison_metric(scores) -> str:
    """What the field `nll` of these scores holds, as the comparisons table names it: "nll" (mean
    NLL per token, nats) for a causal LM, "embedding_loss" (mean 1 - cosine to the base's
    sentence embeddings, per sentence) for an encoder."""
    return EMBEDDING_LOSS if is_encoder_base(scores) else NLL


def score_variant(model, base, device: str = "cpu", batch_size: int = 1) -> WindowScores:
    """The model as it is now scored against the base on the base's windows (sentences). An
    encoder is run at the base's own batch size (eval.encoder_batch_size, sentences per pass);
    batch_size is a causal LM's windows per pass."""
    if is_encoder_base(base):
        return evaluate_encoder_variant(model, base, device, int(base.settings.get("batch_size", 32)))
    return evaluate_variant(model, base, device, batch_size)


def variant_evaluator(base, device: str = "cpu", batch_size: int = 1):
    """forward.Evaluator.of(base) for a causal LM, encoder.EncoderEvaluator for an encoder (at
    its base's batch size): .score(model) scores a variant against the base."""
    if is_encoder_base(base):
        return EncoderEvaluator.of(base, device, int(base.settings.get("batch_size", 32)))
    return Evaluator.of(base, device=device, batch_size=batch_size)


def score_fields(scores: WindowScores) -> dict:
    """A variant's (or the base's) columns in the summary tables: perplexity, accuracy,
    kl_divergence, top1_agreement, embedding_cosine, retrieval_agreement, tokens_evaluated. A
    causal LM fills the next-token ones (embedding columns NaN); an encoder fills
    embedding_cosine and retrieval_agreement, kl_divergence with its embedding loss (1 -
    embedding_cosine: what the per-matrix sensitivities measure and the additive model sums) and
    tokens_evaluated with its sentences (next-token columns NaN). A base has KL 0 and agreement 1."""
    summary = scores.summary()
    if is_encoder_base(scores):
        return {**dict.fromkeys(NEXT_TOKEN_FIELDS, math.nan), **{k: summary[k] for k in ENCODER_FIELDS},
                "kl_divergence": summary["embedding_loss"], "tokens_evaluated": summary["sentences_evaluated"]}
    return {"perplexity": summary["perplexity"], "accuracy": summary["accuracy"],
            "kl_divergence": summary.get("kl_divergence", 0.0), "top1_agreement": summary.get("top1_agreement", 1.0),
            **dict.fromkeys(ENCODER_FIELDS, math.nan), "tokens_evaluated": summary["tokens_evaluated"]}


def reported_metrics(scores: WindowScores) -> dict:
    """The two numbers a head-merge threshold's record keeps of the base and of the merged model:
    perplexity and accuracy, or for an encoder embedding_cosine and retrieval_agreement."""
    summary = scores.summary()
    return {key: summary[key] for key in REPORTED[comparison_metric(scores)]}
