"""From a checkpoint parameter name to its unit (embed, layer_NNN, lm_head, other) and block_type.

Rules are ordered patterns on the dotted name, most specific first; they cover the
checkpoint names of Llama, Mistral, Qwen2, Gemma, GPT-2, GPT-NeoX, Phi-3, BERT, OPT and
Mixtral-style MoE (per-expert 2-D and fused 3-D expert tensors). Anything unmatched is
`other`, never an error.
"""

import re

from blockscope.layout import EMBED, LM_HEAD, OTHER, layer_unit

# A transformer block: a container name followed by the block index.
LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")

# (block_type, pattern on the full name). First match wins; every type is one of layout.BLOCK_TYPES.
BLOCK_TYPE_RULES = [
    ("moe_router", r"(?:block_sparse_moe|mlp|moe|feed_forward)\.(?:gate|router)(?:\.weight|\.bias|$)"),
    ("moe_expert", r"\.experts?\."),
    ("norm", r"(?:norm|ln_\w+|ln_f|LayerNorm)(?:\.weight|\.bias|$)"),
    ("position_embedding", r"(?:wpe|position_embeddings|embed_positions)(?:\.weight|$)"),
    ("embedding", r"(?:embed_tokens|wte|embed_in|word_embeddings|token_type_embeddings|tok_embeddings)(?:\.weight|$)"),
    ("output", r"(?:^|\.)(?:lm_head|embed_out|output|predictions\.decoder)(?:\.weight|\.bias|$)"),
    ("qkv_fused", r"(?:c_attn|query_key_value|qkv_proj|Wqkv|qkv)(?:\.weight|\.bias|$)"),
    ("gate_up_fused", r"gate_up_proj(?:\.weight|\.bias|$)"),
    ("q_proj", r"(?:q_proj|\.query|\.wq)(?:\.weight|\.bias|$)"),
    ("k_proj", r"(?:k_proj|\.key|\.wk)(?:\.weight|\.bias|$)"),
    ("v_proj", r"(?:v_proj|\.value|\.wv)(?:\.weight|\.bias|$)"),
    ("o_proj", r"(?:o_proj|out_proj|(?:attn|attention|self_attn)\.(?:c_proj|dense)|attention\.output\.dense|\.wo)"
               r"(?:\.weight|\.bias|$)"),
    ("gate_proj", r"(?:gate_proj|\.w1)(?:\.weight|\.bias|$)"),
    ("up_proj", r"(?:up_proj|c_fc|fc1|dense_h_to_4h|intermediate\.dense|\.w3)(?:\.weight|\.bias|$)"),
    ("down_proj", r"(?:down_proj|mlp\.c_proj|fc2|dense_4h_to_h|output\.dense|\.w2)(?:\.weight|\.bias|$)"),
]
_COMPILED = [(kind, re.compile(pattern)) for kind, pattern in BLOCK_TYPE_RULES]

# GPT-2 style Conv1D stores weights as (in, out); everything else as (out, in).
CONV1D_MODEL_TYPES = {"gpt2", "gpt_bigcode", "imagegpt", "decision_transformer"}
CONV1D_NAMES = re.compile(r"(?:c_attn|c_proj|c_fc|q_attn)\.weight$")


def layer_index(name: str):
    """The transformer block index in a parameter name, or None."""
    match = LAYER_INDEX.search(name)
    return int(match.group(1)) if match else None


def block_type(name: str) -> str:
    for kind, pattern in _COMPILED:
        if pattern.search(name):
            return kind
    return "other"


def unit_of(name: str) -> str:
    """embed, layer_NNN, lm_head or other."""
    index = layer_index(name)
    if index is not None:
        return layer_unit(index)
    kind = block_type(name)
    if kind in ("embedding", "position_embedding") or ".embeddings." in name:
        return EMBED
    if kind == "output":
        return LM_HEAD
    return OTHER


def is_conv1d(name: str, model_type: str) -> bool:
    """True when the stored 2-D weight is (in, out) and must be transposed to out x in."""
    return model_type in CONV1D_MODEL_TYPES and bool(CONV1D_NAMES.search(name))
