"""blockscope.checkpoint.selection: the layer-range parser, name matching, per-model resolution, units chosen."""

import pandas as pd
import pytest

from blockscope.checkpoint.selection import (
    embedding_tensors,
    is_everything,
    name_selected,
    parse_layers,
    resolve,
    selected_units,
    unselected_attention,
)
from blockscope.errors import BlockscopeError


@pytest.mark.parametrize("spec, layers", [
    ("0-5,20,30-31", [0, 1, 2, 3, 4, 5, 20, 30, 31]),
    (" 3 , 1-2 ", [1, 2, 3]),
    ("7", [7]),
    ([4, 1, 1], [1, 4]),
    (2, [2]),
    (None, None), ("", None), ([], None),
])
def test_parse_layers(spec, layers):
    assert parse_layers(spec) == layers


@pytest.mark.parametrize("spec", ["5-3", "a", "1,,2", "1-", "-1", [1.5], [-1], [True], {"a": 1}, True])
def test_parse_layers_refuses(spec):
    with pytest.raises(ValueError):
        parse_layers(spec)


def test_names_are_searched_not_fullmatched():
    qkv = resolve({"include": ["q_proj|k_proj|v_proj"]}, None)
    assert name_selected("model.layers.1.self_attn.q_proj.weight", 1, qkv)
    assert not name_selected("model.layers.1.self_attn.o_proj.weight", 1, qkv)
    anchored = resolve({"include": ["^lm_head\\.weight$"]}, None)
    assert name_selected("lm_head.weight", None, anchored) and not name_selected("x.lm_head.weight", None, anchored)
    # the original --filter-layers patterns work unchanged
    assert name_selected("model.layers.0.self_attn.k_proj.weight", 0,
                         resolve({"include": [".*(q_proj|k_proj).*"]}, None))


def test_exclude_after_include_and_layers_only_restrict_layers():
    spec = resolve({"exclude": ["norm"], "layers": "1"}, None)
    assert not name_selected("model.layers.1.input_layernorm.weight", 1, spec)
    assert name_selected("model.layers.1.mlp.up_proj.weight", 1, spec)
    assert not name_selected("model.layers.0.mlp.up_proj.weight", 0, spec)
    assert name_selected("model.embed_tokens.weight", None, spec)  # layers alone keeps non-layer units
    assert name_selected("model.embed_tokens.weight", pd.NA, spec)
    assert not name_selected("model.norm.weight", None, spec)


def test_a_model_overrides_the_global_selection_key_by_key():
    spec = resolve({"include": ["proj"], "layers": "0-3"}, {"layers": [2]})
    assert spec == {"include": ["proj"], "exclude": [], "layers": [2]}
    assert is_everything(resolve(None, None)) and is_everything(resolve({}, {}))
    assert resolve({"layers": "0-1"}, {"layers": None})["layers"] is None  # null: every layer again


INVENTORY = pd.DataFrame({
    "param_name": ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                   "model.layers.0.self_attn.k_proj.weight", "model.layers.1.self_attn.q_proj.weight",
                   "model.layers.1.mlp.up_proj.weight", "model.norm.weight"],
    "unit": ["embed", "layer_000", "layer_000", "layer_001", "layer_001", "other"],
    "layer_index": pd.array([None, 0, 0, 1, 1, None], dtype="Int64"),
    "shape": [[256, 64], [64, 64], [32, 64], [64, 64], [128, 64], [64]],
})


def test_no_selection_is_every_unit_of_the_model():
    units = selected_units(INVENTORY, resolve(None, None), 2)
    assert list(units) == ["embed", "layer_000", "layer_001", "lm_head", "other"]
    assert units["lm_head"] == [] and len(units["layer_001"]) == 2


def test_a_selection_keeps_units_with_a_selected_tensor_only():
    units = selected_units(INVENTORY, resolve({"include": ["q_proj"], "layers": "1"}, None), 2)
    assert units == {"layer_001": ["model.layers.1.self_attn.q_proj.weight"]}


def test_a_selection_of_nothing_or_a_missing_layer_is_one_line():
    with pytest.raises(BlockscopeError) as info:
        selected_units(INVENTORY, resolve({"include": ["nothing_like_this"]}, None), 2, model="m", path="config.yaml")
    assert str(info.value).startswith("[m] config.yaml: select matches no tensor") and "\n" not in str(info.value)
    with pytest.raises(BlockscopeError) as info:
        selected_units(INVENTORY, resolve({"layers": "0-5"}, None), 2, model="m", path="config.yaml")
    assert "config key select.layers names layer 2, but the model has 2 layers (0-1)" in str(info.value)


def test_unselected_attention():
    assert unselected_attention(["a.q", "a.k", "a.v", "a.o"], ["a.q", "a.k", "a.v"]) == ["a.o"]
    assert unselected_attention(["a.q"], ["a.q", "b"]) == []


NORMS = pd.DataFrame({
    "param_name": ["model.layers.0.input_layernorm.weight", "model.layers.0.self_attn.q_proj.weight",
                   "model.layers.0.self_attn.q_proj.bias", "model.layers.1.input_layernorm.weight",
                   "model.layers.1.self_attn.q_proj.weight", "model.norm.weight"],
    "unit": ["layer_000", "layer_000", "layer_000", "layer_001", "layer_001", "other"],
    "layer_index": pd.array([0, 0, 0, 1, 1, None], dtype="Int64"),
    "shape": [[64], [64, 64], [64], [64], [64, 64], [64]],
})


def test_a_selection_of_only_1d_parameters_is_refused_in_one_line_naming_a_matrix_to_keep():
    with pytest.raises(BlockscopeError) as info:
        selected_units(NORMS, resolve({"include": ["norm"]}, None), 2, model="m", path="config.yaml")
    assert str(info.value) == (
        "[m] config.yaml: select keeps only 1-D parameters (3, e.g. model.layers.0.input_layernorm.weight): "
        "norm weights and biases have no spectrum, so no weight matrix is left to analyse (include=['norm']). "
        "Fix: widen select to keep a weight matrix (a 2-D tensor such as model.layers.0.self_attn.q_proj.weight), "
        "or remove select for this model.")
    # norms and biases of layer 1 only: the matrix named is one of layer 1
    with pytest.raises(BlockscopeError) as info:
        selected_units(NORMS, resolve({"include": ["norm|bias"], "layers": "1"}, None), 2, model="m")
    assert "(include=['norm|bias'], layers=[1])" in str(info.value)
    assert "such as model.layers.1.self_attn.q_proj.weight" in str(info.value)
    # one matrix beside the norms is enough
    assert selected_units(NORMS, resolve({"include": ["norm|q_proj.weight"], "layers": "1"}, None), 2) == {
        "layer_001": ["model.layers.1.input_layernorm.weight", "model.layers.1.self_attn.q_proj.weight"],
        "other": ["model.norm.weight"]}
    # no selection is never refused, whatever the model holds
    assert len(selected_units(NORMS[NORMS["param_name"].str.contains("norm")], resolve(None, None), 2)) == 5


def _embedding_inventory(rows):
    return pd.DataFrame(rows, columns=["param_name", "unit", "block_type", "shape", "nbytes"])


def test_the_embedding_analysis_reads_the_token_embedding_and_an_untied_head_only():
    # a BERT encoder: no lm_head at all; position and token-type tables beside the word embedding
    bert = _embedding_inventory([
        ("embeddings.position_embeddings.weight", "embed", "position_embedding", [512, 32], 512 * 32 * 4),
        ("embeddings.token_type_embeddings.weight", "embed", "embedding", [2, 32], 2 * 32 * 4),
        ("embeddings.word_embeddings.weight", "embed", "embedding", [128, 32], 128 * 32 * 4),
        ("embeddings.LayerNorm.weight", "other", "norm", [32], 32 * 4),
        ("pooler.dense.weight", "other", "other", [32, 32], 32 * 32 * 4)])
    assert embedding_tensors(bert) == {"embed": "embeddings.word_embeddings.weight"}
    untied = _embedding_inventory([("model.embed_tokens.weight", "embed", "embedding", [256, 64], 65536),
                                   ("lm_head.weight", "lm_head", "output", [256, 64], 65536)])
    assert embedding_tensors(untied) == {"embed": "model.embed_tokens.weight", "lm_head": "lm_head.weight"}
    # a unit of no embedding or output matrix (an unknown architecture): nothing to read there
    assert embedding_tensors(_embedding_inventory([("w", "embed", "other", [4, 4], 64),
                                                   ("b", "lm_head", "output", [4], 16)])) == {}

