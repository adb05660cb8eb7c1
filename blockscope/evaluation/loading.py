"""Which models the evaluation can score, and loading one: a causal LM with a tokenizer, and a
base that predicts better than chance (else no perturbation of it is worth scoring)."""

from pathlib import Path

import numpy as np

from blockscope.errors import BlockscopeError


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
