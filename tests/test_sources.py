"""Model sources, on real files and real libraries (no network: the hub path must fail clearly)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from blockscope.errors import BlockscopeError
from blockscope.inventory import build_inventory
from blockscope.sources import fetch
from conftest import ROOT, TINY_LLAMA, save_tiny


def test_synthetic_is_seeded_and_like_copies_config(tmp_path):
    spec = {"source": "synthetic", "config": TINY_LLAMA, "seed": 3}
    fetch("tiny", spec, tmp_path / "a")
    fetch("tiny", spec, tmp_path / "b")
    a, b = load_file(tmp_path / "a/model.safetensors"), load_file(tmp_path / "b/model.safetensors")
    assert all(np.array_equal(a[k], b[k]) for k in a)  # same seed, same weights
    fetch("twin", {"source": "synthetic", "like": "tiny", "seed": 4}, tmp_path / "twin", like_checkpoint=tmp_path / "a")
    twin = load_file(tmp_path / "twin/model.safetensors")
    assert {k: v.shape for k, v in twin.items()} == {k: v.shape for k, v in a.items()}
    assert not np.array_equal(twin["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
    source = json.loads((tmp_path / "twin/source.json").read_text())
    assert source["source"] == "synthetic" and source["seed"] == 4 and source["like"] == "tiny"


def test_local_source_links_weights_and_keeps_provenance(tmp_path):
    save_tiny("LlamaForCausalLM", TINY_LLAMA, tmp_path / "ckpt")
    fetch("mine", {"source": "local", "path": str(tmp_path / "ckpt")}, tmp_path / "out")
    assert (tmp_path / "out/model.safetensors").is_symlink()
    source = json.loads((tmp_path / "out/source.json").read_text())
    assert source["source"] == "local" and "model.safetensors" in source["files"]


@pytest.mark.parametrize("spec, expected", [
    ({"source": "local", "path": "/nonexistent/ckpt"}, "does not exist"),
    ({"source": "gguf", "package": "no_such_package_xyz", "file": "m.gguf"}, "is not installed"),
    ({"source": "gguf", "path": "/nonexistent/m.gguf"}, "GGUF file not found"),
    ({"source": "ftp"}, "unknown source"),
])
def test_bad_sources_name_model_and_fix(tmp_path, spec, expected):
    with pytest.raises(BlockscopeError) as info:
        fetch("broken", spec, tmp_path / "out")
    message = str(info.value)
    assert "[broken]" in message and expected in message and "Fix:" in message and "\n" not in message
    assert not (tmp_path / "out").exists()


def test_local_without_safetensors_is_refused(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt/config.json").write_text("{}")
    (tmp_path / "ckpt/pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(BlockscopeError, match="no \\*.safetensors"):
        fetch("pickled", {"source": "local", "path": str(tmp_path / "ckpt")}, tmp_path / "out")


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "2"}])
def test_hub_unreachable_names_model_repo_and_remedy(tmp_path, env):
    """The real huggingface_hub code runs; with no hub it must end in one clear line."""
    code = ("from blockscope.sources import fetch\n"
            f"fetch('qwen', {{'source': 'hf', 'repo_id': 'Qwen/Qwen2.5-0.5B', 'revision': 'main'}}, {str(tmp_path / 'q')!r})")
    secret = "hf_THIS_IS_NOT_A_REAL_TOKEN"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, **env, "HF_TOKEN": secret}, timeout=120)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "[qwen]" in last and "Qwen/Qwen2.5-0.5B@main" in last and "source: local" in last
    assert secret not in result.stderr + result.stdout
    assert not (tmp_path / "q").exists()


@pytest.mark.slow
def test_gguf_is_dequantised_with_its_quant_types(tmp_path, smollm2_gguf):
    fetch("smol", {"source": "gguf", "path": str(smollm2_gguf)}, tmp_path / "smol")
    config = json.loads((tmp_path / "smol/config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert (tmp_path / "smol/tokenizer.json").exists()
    source = json.loads((tmp_path / "smol/source.json").read_text())
    assert len(source["sha256"]) == 64 and source["quant_types"]["Q4_1"] > 100
    inventory = build_inventory(tmp_path / "smol", source_dtypes=source["source_dtypes"]).set_index("param_name")
    assert inventory.loc["model.layers.0.self_attn.q_proj.weight", "source_dtype"] == "Q4_1"
    assert inventory.loc["model.layers.0.input_layernorm.weight", "source_dtype"] == "F32"
    assert inventory.loc["model.layers.0.self_attn.q_proj.weight", "dtype"] == "F32"
    # Q4_1 blocks of 32 weights hold at most 16 distinct values: the dequantisation is real
    q = load_file(tmp_path / "smol/model.safetensors")["model.layers.0.mlp.up_proj.weight"]
    assert len(np.unique(q.reshape(-1)[:32])) <= 16
