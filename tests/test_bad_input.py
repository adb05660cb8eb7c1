"""Bad checkpoints and configs: one-line errors naming the model, the file and the fix."""

import json

import pytest

from blockscope.checkpoint.inventory import build_inventory, model_dims, read_config
from blockscope.config.validation import validate_config
from blockscope.errors import BlockscopeError

from conftest import ROOT, TINY_LLAMA, save_tiny

SCHEMA = ROOT / "schemas" / "config.schema.yaml"


@pytest.fixture
def checkpoint(tmp_path):
    save_tiny("LlamaForCausalLM", TINY_LLAMA, tmp_path)
    return tmp_path


def _one_line(exc, *fragments):
    message = str(exc)
    assert "\n" not in message and "Fix:" in message
    for fragment in fragments:
        assert fragment in message, message


def test_truncated_safetensors(checkpoint):
    path = checkpoint / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(BlockscopeError) as info:
        build_inventory(checkpoint, model="tiny")
    _one_line(info.value, "[tiny]", "model.safetensors", "truncated")


@pytest.mark.parametrize("payload", [b"", b"\xff" * 8 + b"garbage",
                                     (20).to_bytes(8, "little") + b"{not json" + b" " * 11])
def test_corrupt_safetensors(checkpoint, payload):
    (checkpoint / "model.safetensors").write_bytes(payload)
    with pytest.raises(BlockscopeError) as info:
        build_inventory(checkpoint, model="tiny")
    _one_line(info.value, "[tiny]", "model.safetensors")


def test_config_without_needed_fields(checkpoint):
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 256}))
    inventory = build_inventory(checkpoint, model="tiny")
    with pytest.raises(BlockscopeError) as info:
        model_dims(read_config(checkpoint, "tiny"), inventory, model="tiny", path=checkpoint / "config.json")
    _one_line(info.value, "[tiny]", "config.json", "num_hidden_layers")


def test_missing_config_json(checkpoint):
    (checkpoint / "config.json").unlink()
    with pytest.raises(BlockscopeError) as info:
        build_inventory(checkpoint, model="tiny")
    _one_line(info.value, "[tiny]", "config.json is missing")


@pytest.mark.parametrize("config, fragment", [
    ({"models": {"a": {"source": "ftp"}}},
     "models.a.source: 'ftp' is not allowed; allowed: hf, local, gguf, synthetic"),
    ({"models": {"Bad Slug": {"source": "hf", "repo_id": "x/y"}}}, "does not match"),
    ({"models": {"a": {"source": "hf"}}}, "'repo_id' is a required property"),
    ({"models": {"a": {"source": "gguf", "file": "x.gguf"}}}, "'path' is a required property"),
    ({"models": {"a": {"source": "synthetic", "like": "b"}}}, "models.a.like: 'b' is not a model"),
    ({"models": {"a": {"source": "synthetic", "config": {}}}, "device": "tpu"}, "device: 'tpu' is not allowed"),
    ({"models": {"a": {"source": "synthetic", "config": {}}}, "colour": 1}, "colour"),
    ({}, "'models' is a required property"),
])
def test_schema_errors_name_key_and_allowed(config, fragment):
    with pytest.raises(BlockscopeError) as info:
        validate_config(config, SCHEMA)
    _one_line(info.value, fragment, "config.yaml")


def test_defaults_are_filled_per_source():
    config = validate_config({"models": {"a": {"source": "hf", "repo_id": "x/y"},
                                         "b": {"source": "synthetic", "like": "a"}}}, SCHEMA)
    assert config["device"] == "auto" and config["precision"]["precisions"] == ["fp32", "fp16", "bf16"]
    assert config["models"]["a"] == {"source": "hf", "repo_id": "x/y", "revision": "main"}
    assert config["models"]["b"]["seed"] == 0 and "revision" not in config["models"]["b"]
