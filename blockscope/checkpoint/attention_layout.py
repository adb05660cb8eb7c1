"""Where a checkpoint keeps one layer's attention: projection names, fused layouts, shapes.

Layouts handled: separate q/k/v/o projections (Llama, Mistral, Qwen2, Gemma, BERT, OPT, ...),
GPT-2's fused c_attn (Conv1D, [Q; K; V] along the output after transposition), GPT-NeoX's
query_key_value (per-head interleaved: rows are heads x (q, k, v) x head_dim) and Phi-3's
qkv_proj ([Q; K; V] with grouped K/V). Arrays are out x in: q (H*d, D), k and v (G*d, D),
o (D, H*d); biases q_bias (H*d), k_bias, v_bias (G*d) or None. Inconsistent shapes raise a
BlockscopeError that names the model; "no attention here" is None, never an error.
"""

import numpy as np

from blockscope.errors import BlockscopeError
from blockscope.io.tables import records
from blockscope.layout import ATTENTION_PARTS

_FIX = "check num_attention_heads, num_key_value_heads and head_dim in config.json"


def _shape_error(what: str, model) -> BlockscopeError:
    return BlockscopeError(what, model=model, path="config.json", fix=_FIX)


def qkv_sizes(dims: dict) -> list:
    """Rows of Q, K and V in a fused projection: H*d, G*d, G*d."""
    return [dims["heads"] * dims["head_dim"], dims["kv_heads"] * dims["head_dim"], dims["kv_heads"] * dims["head_dim"]]


def split_qkv(fused: np.ndarray, dims: dict, model=None):
    """q, k, v rows of a fused projection (weight rows or bias entries), out-major."""
    sizes = qkv_sizes(dims)
    if fused.shape[0] != sum(sizes):
        raise _shape_error(f"fused qkv has {fused.shape[0]} rows, expected {sum(sizes)} for {dims['heads']} heads, "
                           f"{dims['kv_heads']} kv heads of size {dims['head_dim']}", model)
    if dims.get("model_type") == "gpt_neox":  # rows: heads x (q, k, v) x head_dim
        per_head = fused.reshape(dims["heads"], 3, dims["head_dim"], *fused.shape[1:])
        return tuple(per_head[:, i].reshape(sizes[0], *fused.shape[1:]) for i in range(3))
    return tuple(np.split(fused, np.cumsum(sizes)[:2]))


def join_qkv(q, k, v, dims: dict) -> np.ndarray:
    """The inverse of split_qkv."""
    if dims.get("model_type") == "gpt_neox":
        per_head = np.stack([m.reshape(dims["heads"], dims["head_dim"], *m.shape[1:]) for m in (q, k, v)], axis=1)
        return per_head.reshape(q.shape[0] * 3, *q.shape[1:])
    return np.concatenate([q, k, v])


def projection_names(inventory) -> dict:
    """(q|k|v|o|qkv, weight|bias) -> (parameter name, layout) for one layer's attention (inventory:
    a DataFrame or row dicts)."""
    names = {}
    for row in records(inventory):
        if row["block_type"] in ATTENTION_PARTS:
            name = row["param_name"]
            part = "weight" if len(row["shape"]) == 2 else "bias" if name.endswith("bias") else None
            if part:
                names.setdefault((ATTENTION_PARTS[row["block_type"]], part), (name, row["layout"]))
    return names


def has_attention(names: dict) -> bool:
    """Whether projection_names found a complete attention (q, k, v, o or fused qkv + o)."""
    return ("o", "weight") in names and (("qkv", "weight") in names or all((k, "weight") in names for k in "qkv"))


def check_shapes(arrays: dict, dims: dict, model=None):
    """Raise a BlockscopeError unless the projections fit heads, kv_heads and head_dim."""
    heads, kv_heads, head_dim = dims["heads"], dims["kv_heads"], dims["head_dim"]
    if heads % kv_heads:
        raise _shape_error(f"{heads} query heads do not divide into {kv_heads} key/value heads", model)
    for name, count in (("q", heads), ("k", kv_heads), ("v", kv_heads)):
        if arrays[name].shape[0] != count * head_dim:
            raise _shape_error(f"{name} projection has {arrays[name].shape[0]} outputs, "
                               f"not {count} heads x {head_dim}", model)
    if arrays["o"].shape[1] != heads * head_dim:
        raise _shape_error(f"o projection has {arrays['o'].shape[1]} inputs, not {heads} x {head_dim}", model)


def read_projections(tensors: dict, names: dict, dims: dict, model=None) -> dict | None:
    """q, k, v, o weights (out x in, float32) and q/k/v biases of one layer, shapes checked;
    None when the layer has no attention."""
    def get(kind, part):
        if (kind, part) not in names:
            return None
        name, layout = names[(kind, part)]
        array = np.asarray(tensors[name], dtype=np.float32)
        return array.T if (layout == "in_out" and array.ndim == 2) else array

    if not has_attention(names):
        return None
    arrays = {}
    if ("qkv", "weight") in names:
        arrays["q"], arrays["k"], arrays["v"] = split_qkv(get("qkv", "weight"), dims, model)
        bias = get("qkv", "bias")
        biases = split_qkv(bias, dims, model) if bias is not None else (None,) * 3
        arrays["q_bias"], arrays["k_bias"], arrays["v_bias"] = biases
    else:
        for kind in "qkv":
            arrays[kind], arrays[f"{kind}_bias"] = get(kind, "weight"), get(kind, "bias")
    arrays["o"] = get("o", "weight")
    check_shapes(arrays, dims, model)
    return arrays


def write_projections(arrays: dict, names: dict, dims: dict) -> dict:
    """Parameter name -> array in the checkpoint's layout: the inverse of read_projections."""
    out = {}

    def put(kind, part, array):
        name, layout = names[(kind, part)]
        out[name] = array.T if (layout == "in_out" and array.ndim == 2) else array

    if ("qkv", "weight") in names:
        put("qkv", "weight", join_qkv(arrays["q"], arrays["k"], arrays["v"], dims))
        if ("qkv", "bias") in names:
            put("qkv", "bias", join_qkv(arrays["q_bias"], arrays["k_bias"], arrays["v_bias"], dims))
    else:
        for kind in "qkv":
            put(kind, "weight", arrays[kind])
            if (kind, "bias") in names:
                put(kind, "bias", arrays[f"{kind}_bias"])
    put("o", "weight", arrays["o"])
    return out
