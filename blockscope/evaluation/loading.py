"""Which models the evaluation can score, and loading one: a causal LM with a tokenizer, and a
base that predicts better than chance (else no perturbation of it is worth scoring); or an
encoder with a tokenizer, scored by its sentence embeddings (blockscope.evaluation.encoder)."""

import json
from pathlib import Path

import numpy as np

from blockscope.errors import BlockscopeError


def is_causal(dims: dict) -> bool:
    """Whether the checkpoint's architecture predicts the next token (what the evaluation scores)."""
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in dims.get("architectures", []))


# Architectures that name a bare encoder or its masked-LM head: AutoModel loads the encoder of either.
ENCODER_ARCHITECTURES = ("Model", "ForMaskedLM")


def is_encoder(dims: dict, checkpoint=None) -> bool:
    """Whether the checkpoint is an encoder that the sentence-embedding evaluation scores: not a
    causal LM, an architecture named as a bare model or a masked-LM head (BertModel,
    BertForMaskedLM), and not an encoder-decoder or a composite (text + vision) model, which a
    sentence alone does not run (config.json's is_encoder_decoder, text_config / vision_config)."""
    architectures = dims.get("architectures") or []
    if is_causal(dims) or not any(a.endswith(ENCODER_ARCHITECTURES) for a in architectures):
        return False
    config = Path(checkpoint or "") / "config.json"
    config = json.loads(config.read_text()) if checkpoint is not None and config.is_file() else {}
    return not (config.get("is_encoder_decoder") or {"text_config", "vision_config"} & set(config))


# Files from which transformers builds a tokenizer (special tokens, added tokens and chat
# templates alone build none).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def has_tokenizer(checkpoint) -> bool:
    """Whether the checkpoint folder holds tokenizer files (a synthetic model built from a bare
    config holds none)."""
    return any((Path(checkpoint) / name).is_file() for name in TOKENIZER_FILES)


def skip_reason(dims: dict, checkpoint, encoders: bool = False) -> str | None:
    """Why the model cannot be evaluated (so neither merged nor compressed), or None: the
    evaluation scores next-token predictions of the corpus: it needs a causal LM and a tokenizer.
    encoders=True: an encoder (is_encoder) with a tokenizer is evaluated too, by its sentence
    embeddings (a caller that can score one passes it)."""
    if not is_causal(dims) and not (encoders and is_encoder(dims, checkpoint)):
        kinds, scored = ("not a causal LM nor an encoder", "next-token or sentence-embedding") if encoders else \
            ("not a causal LM", "next-token")
        return f"{kinds} ({', '.join(dims.get('architectures') or ['unknown'])}): no {scored} evaluation"
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


def load_tokenizer(model_name: str, checkpoint):
    """The checkpoint's tokenizer; BlockscopeError when transformers cannot build one."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(checkpoint)
    except Exception as exc:
        raise BlockscopeError(f"no usable tokenizer ({type(exc).__name__})", model=model_name, path=checkpoint,
                              fix="add tokenizer.json / tokenizer_config.json to the checkpoint") from None


def load_causal_lm(model_name: str, checkpoint, device: str, dtype: str):
    """(model in eval mode on device, tokenizer); BlockscopeError when transformers cannot load them."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=getattr(torch, dtype)).to(device).eval()
    except Exception as exc:
        raise BlockscopeError(f"transformers cannot load the model ({type(exc).__name__}: {exc})".replace("\n", " "),
                              model=model_name, path=checkpoint, fix="check config.json and the weights") from None
    return model, load_tokenizer(model_name, checkpoint)


def load_encoder(model_name: str, checkpoint, device: str, dtype: str):
    """(encoder in eval mode on device, tokenizer): transformers' AutoModel, the bare encoder (a
    masked-LM head is dropped); BlockscopeError when transformers cannot load them."""
    import torch
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(checkpoint, dtype=getattr(torch, dtype)).to(device).eval()
    except Exception as exc:
        raise BlockscopeError(f"transformers cannot load the encoder ({type(exc).__name__}: {exc})".replace("\n", " "),
                              model=model_name, path=checkpoint, fix="check config.json and the weights") from None
    return model, load_tokenizer(model_name, checkpoint)


def load_model(model_name: str, checkpoint, device: str, dtype: str, encoder: bool = False):
    """(model in eval mode on device, tokenizer): load_encoder for an encoder (a base evaluated by
    its sentence embeddings), else load_causal_lm."""
    return (load_encoder if encoder else load_causal_lm)(model_name, checkpoint, device, dtype)
