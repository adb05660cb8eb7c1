"""block_type and unit classification on checkpoints saved by the real transformers classes."""

import collections

import pytest

from blockscope.checkpoint.block_types import block_type, unit_of
from blockscope.checkpoint.inventory import build_inventory, model_dims, read_config

from conftest import save_tiny

SMALL = dict(vocab_size=128, num_hidden_layers=2)
ATTN = dict(hidden_size=32, num_attention_heads=4)

# family -> (model class, config, expected per-layer counts of 2-D block types, expected
# counts of block types over the embed/head/other units).
FAMILIES = {
    "llama": ("LlamaForCausalLM", dict(model_type="llama", intermediate_size=64, num_key_value_heads=2,
                                       tie_word_embeddings=False, **ATTN, **SMALL),
              dict(q_proj=1, k_proj=1, v_proj=1, o_proj=1, gate_proj=1, up_proj=1, down_proj=1),
              dict(embedding=1, output=1)),
    "mistral": ("MistralForCausalLM", dict(model_type="mistral", intermediate_size=64, num_key_value_heads=2,
                                           **ATTN, **SMALL),
                dict(q_proj=1, k_proj=1, v_proj=1, o_proj=1, gate_proj=1, up_proj=1, down_proj=1),
                dict(embedding=1, output=1)),
    "qwen2": ("Qwen2ForCausalLM", dict(model_type="qwen2", intermediate_size=64, num_key_value_heads=2,
                                       tie_word_embeddings=True, **ATTN, **SMALL),
              dict(q_proj=1, k_proj=1, v_proj=1, o_proj=1, gate_proj=1, up_proj=1, down_proj=1),
              dict(embedding=1)),
    "gemma": ("GemmaForCausalLM", dict(model_type="gemma", intermediate_size=64, num_key_value_heads=1,
                                       head_dim=8, **ATTN, **SMALL),
              dict(q_proj=1, k_proj=1, v_proj=1, o_proj=1, gate_proj=1, up_proj=1, down_proj=1),
              dict(embedding=1)),
    "gpt2": ("GPT2LMHeadModel", dict(model_type="gpt2", n_embd=32, n_head=4, n_layer=2, vocab_size=128),
             dict(qkv_fused=1, o_proj=1, up_proj=1, down_proj=1),
             dict(embedding=1, position_embedding=1)),
    "gpt_neox": ("GPTNeoXForCausalLM", dict(model_type="gpt_neox", intermediate_size=64, **ATTN, **SMALL),
                 dict(qkv_fused=1, o_proj=1, up_proj=1, down_proj=1),
                 dict(embedding=1, output=1)),
    "phi3": ("Phi3ForCausalLM", dict(model_type="phi3", intermediate_size=64, num_key_value_heads=2,
                                     pad_token_id=0, **ATTN, **SMALL),
             dict(qkv_fused=1, o_proj=1, gate_up_fused=1, down_proj=1),
             dict(embedding=1, output=1)),
    "bert": ("BertForMaskedLM", dict(model_type="bert", intermediate_size=64, **ATTN, **SMALL),
             dict(q_proj=1, k_proj=1, v_proj=1, o_proj=1, up_proj=1, down_proj=1),
             dict(embedding=2, position_embedding=1, other=1)),
    "opt": ("OPTForCausalLM", dict(model_type="opt", ffn_dim=64, word_embed_proj_dim=32, **ATTN, **SMALL),
            dict(q_proj=1, k_proj=1, v_proj=1, o_proj=1, up_proj=1, down_proj=1),
            dict(embedding=1, position_embedding=1)),
    "mixtral": ("MixtralForCausalLM", dict(model_type="mixtral", intermediate_size=64, num_key_value_heads=2,
                                           num_local_experts=3, num_experts_per_tok=2, **ATTN, **SMALL),
                dict(q_proj=1, k_proj=1, v_proj=1, o_proj=1, moe_router=1, moe_expert=9),
                dict(embedding=1, output=1)),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_block_types_of_real_checkpoints(family, tmp_path):
    class_name, config, per_layer, outside = FAMILIES[family]
    save_tiny(class_name, config, tmp_path)
    inventory = build_inventory(tmp_path, model=family)
    matrices = inventory[inventory["shape"].map(len) >= 2]
    layers = sorted(inventory["layer_index"].dropna().unique())
    assert layers == [0, 1]
    for index in layers:
        counts = collections.Counter(matrices.loc[matrices["layer_index"] == index, "block_type"])
        assert dict(counts) == per_layer, f"{family} layer {index}"
    non_layer = matrices[matrices["layer_index"].isna()]
    assert dict(collections.Counter(non_layer["block_type"])) == outside
    # every 1-D weight of a norm module is a norm, wherever it sits
    assert (inventory.loc[inventory["param_name"].str.contains("norm|ln_|LayerNorm"), "block_type"] == "norm").all()
    dims = model_dims(read_config(tmp_path), inventory, model=family)
    assert dims["layers"] == 2 and dims["heads"] == 4
    assert set(inventory["unit"]) <= set(dims["units"])


def test_gpt2_conv1d_weights_are_marked_for_transposition(tmp_path):
    save_tiny(*FAMILIES["gpt2"][:2], tmp_path)
    inventory = build_inventory(tmp_path).set_index("param_name")
    c_fc = inventory.loc["transformer.h.0.mlp.c_fc.weight"]
    assert c_fc["layout"] == "in_out" and list(c_fc["shape"]) == [32, 128]  # stored in x out
    assert inventory.loc["transformer.wte.weight", "layout"] == "out_in"


def test_fused_3d_expert_tensors_are_moe_experts(tmp_path):
    """transformers 5 keeps experts fused in memory (E x out x in); such checkpoints exist too."""
    import json

    import torch
    import transformers
    from safetensors.torch import save_file

    class_name, config = FAMILIES["mixtral"][:2]
    cfg = transformers.AutoConfig.for_model(**config)
    model = getattr(transformers, class_name)(cfg)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    inventory = build_inventory(tmp_path)
    fused = inventory[inventory["shape"].map(len) == 3]
    assert len(fused) == 4 and set(fused["block_type"]) == {"moe_expert"}
    assert {s[0] for s in fused["shape"]} == {3}
    assert torch.is_tensor(model.model.layers[0].mlp.experts.gate_up_proj)


@pytest.mark.parametrize("name", ["", "weird", "model.frobnicator.7", "x.layers.notanumber.y", "a..b"])
def test_unknown_names_land_in_other(name):
    assert block_type(name) == "other"
    assert unit_of(name) in ("other",) or unit_of(name).startswith("layer_")


def test_figure_files_put_the_embedded_format_first():
    from blockscope.layout import embedded_format, figure_files
    assert figure_files("x/sweep", ["pdf", "png"]) == ["x/sweep.png", "x/sweep.pdf"]
    assert figure_files("x/sweep", ["pdf", "svg"]) == ["x/sweep.svg", "x/sweep.pdf"]
    assert embedded_format(["pdf"]) == "pdf"


def test_a_figure_is_written_in_the_format_of_each_suffix(tmp_path):
    import matplotlib.pyplot as plt

    from blockscope.reporting.figures.canvas import save
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    targets = [tmp_path / "f.png", tmp_path / "f.pdf", tmp_path / "f.svg"]
    save(fig, [str(t) for t in targets])
    assert targets[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert targets[1].read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in targets[2].read_bytes()[:2000]
