"""A model and its base must hold the same tensors: checked on the inventories of real checkpoints."""

import pytest
from safetensors.numpy import load_file, save_file

from blockscope.checkpoint.inventory import build_inventory
from blockscope.checkpoint.pairing import check_same_tensors
from blockscope.errors import BlockscopeError
from blockscope.io.tables import records

from conftest import TINY_LLAMA, save_tiny


@pytest.fixture(scope="module")
def base_rows(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    save_tiny("LlamaForCausalLM", TINY_LLAMA, folder)
    return records(build_inventory(folder))


def inventory_of(folder, config=TINY_LLAMA, rename=None):
    """A tiny llama's inventory; rename: (old, new) tensor name rewritten in its safetensors file."""
    save_tiny("LlamaForCausalLM", config, folder)
    if rename:
        weights = load_file(folder / "model.safetensors")
        weights[rename[1]] = weights.pop(rename[0])
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return records(build_inventory(folder))


def pairing_error(rows, base_rows) -> str:
    with pytest.raises(BlockscopeError) as info:
        check_same_tensors("tuned", "tiny", rows, base_rows)
    message = str(info.value)
    assert message.startswith("[tuned]") and "\n" not in message
    assert "Fix: set models.tuned.base to the checkpoint tuned was tuned from, or drop its base" in message
    return message


def test_same_tensors_pass(base_rows, tmp_path):
    rows = inventory_of(tmp_path / "twin", {**TINY_LLAMA})
    assert check_same_tensors("tuned", "tiny", rows, base_rows) == len(base_rows) == 2 * 9 + 3


def test_renamed_tensor_is_named(base_rows, tmp_path):
    old, new = "model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.upper_proj.weight"
    message = pairing_error(inventory_of(tmp_path / "renamed", rename=(old, new)), base_rows)
    assert f"tuned has tensor {new} [128, 64], which base tiny lacks (1 more tensors differ)" in message
    # seen from the other side, the base's tensor is the one named
    with pytest.raises(BlockscopeError, match=f"tiny has tensor {old} \\[128, 64\\], which base tuned lacks"):
        check_same_tensors("tiny", "tuned", base_rows, inventory_of(tmp_path / "again", rename=(old, new)))


def test_reshaped_tensor_is_named(base_rows, tmp_path):
    rows = inventory_of(tmp_path / "wider", {**TINY_LLAMA, "intermediate_size": 96})
    message = pairing_error(rows, base_rows)
    first = next(row["param_name"] for row in rows if "mlp" in row["param_name"])
    shape = "[96, 64]" if "down" not in first else "[64, 96]"
    assert f"tensor {first} is {shape} in tuned and " in message and "in base tiny" in message
    assert "(5 more tensors differ)" in message  # gate, up, down in two layers


def test_missing_in_model_is_named(base_rows):
    rows = [row for row in base_rows if row["param_name"] != "lm_head.weight"]  # a tied head, say
    message = pairing_error(rows, base_rows)
    assert "base tiny has tensor lm_head.weight [256, 64], which tuned lacks" in message
