"""Model sources, on real files and real libraries (no network: the hub path must fail clearly)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from blockscope.checkpoint.inventory import build_inventory
from blockscope.checkpoint.sources import fetch
from blockscope.errors import BlockscopeError

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


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"},
                                 {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "2"}])
def test_hub_unreachable_names_model_repo_and_remedy(tmp_path, env):
    """The real huggingface_hub code runs; with no hub it must end in one clear line."""
    code = ("from blockscope.checkpoint.sources import fetch\n"
            f"fetch('qwen', {{'source': 'hf', 'repo_id': 'Qwen/Qwen2.5-0.5B', 'revision': 'main'}}, "
            f"{str(tmp_path / 'q')!r})")
    secret = "hf_THIS_IS_NOT_A_REAL_TOKEN"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, **env, "HF_TOKEN": secret, "HF_HUB_CACHE": str(tmp_path / "cache")},
                            timeout=120)
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


# --- hf through the shared Hugging Face cache, offline ------------------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OLD_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def hub_cache_repo(cache, repo_id, files: dict, commit, ref="main"):
    """The layout the hub client writes: models--Org--name/{blobs/<hash>, snapshots/<commit>/<file>
    (a relative link to its blob), refs/<ref> (the commit)}. files: name -> path of the bytes."""
    import hashlib

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "snapshots" / commit).mkdir(parents=True)
    for name, src in files.items():
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, repo / "snapshots" / commit), repo / "snapshots" / commit / name)
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return repo


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A tmp HF_HUB_CACHE holding Org/tiny at two commits (main -> COMMIT): a tiny real llama, a
    real tokenizer, and a pickle the user's own download brought along."""
    from tokenizers import Tokenizer, models

    root = tmp_path_factory.mktemp("hub")
    ckpt = root / "ckpt"
    save_tiny("LlamaForCausalLM", TINY_LLAMA, ckpt)
    Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(str(ckpt / "tokenizer.json"))
    (ckpt / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}')
    (ckpt / "pytorch_model.bin").write_bytes(b"a pickle blockscope must never link")
    files = {p.name: p for p in ckpt.iterdir()}
    cache = (root / "cache").resolve()
    hub_cache_repo(cache, "Org/tiny", files, COMMIT)
    hub_cache_repo(cache, "Org/tiny",
                   {"config.json": ckpt / "config.json", "model.safetensors": ckpt / "model.safetensors"},
                   OLD_COMMIT, ref=None)
    return cache


def fetch_offline(cache, model, spec, dest, secret=None):
    """fetch in a fresh process with HF_HUB_CACHE=cache and HF_HUB_OFFLINE=1 (the hub client reads
    both at import): the real huggingface_hub resolves everything from the cache."""
    code = f"from blockscope.checkpoint.sources import fetch\nfetch({model!r}, {spec!r}, {str(dest)!r})"
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_TOKEN", None)
    if secret:
        env["HF_TOKEN"] = secret
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def cache_state(cache):
    return sorted((str(p.relative_to(cache)), p.lstat().st_ino, p.lstat().st_size) for p in cache.rglob("*"))


def test_hf_offline_links_the_cached_snapshot(hub_cache, tmp_path):
    before = cache_state(hub_cache)
    dest = tmp_path / "models/tiny"
    result = fetch_offline(hub_cache, "tiny", {"source": "hf", "repo_id": "Org/tiny", "revision": "main"}, dest)
    assert result.returncode == 0, result.stderr
    snapshot = hub_cache / "models--Org--tiny/snapshots" / COMMIT
    names = {p.name for p in dest.iterdir()}
    assert names == {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json", "source.json"}  # never the pickle
    assert dest.is_dir() and not dest.is_symlink()
    for name in names - {"source.json"}:
        link = dest / name
        assert link.is_symlink() and os.readlink(link) == str(snapshot / name)
        real = Path(os.path.realpath(link))
        assert real.parent == hub_cache / "models--Org--tiny/blobs"  # the cache's bytes, not a copy
        assert real.stat().st_ino == (snapshot / name).stat().st_ino
    assert not (dest / "source.json").is_symlink()
    source = json.loads((dest / "source.json").read_text())
    assert source["source"] == "hf" and source["repo_id"] == "Org/tiny" and source["revision"] == "main"
    assert source["commit"] == COMMIT and source["snapshot"] == str(snapshot)
    assert source["files"] == {"model.safetensors": (snapshot / "model.safetensors").stat().st_size}
    assert build_inventory(dest)["param_name"].str.contains("q_proj").any()  # the workflow reads through the links

    # a second fetch replaces the links; the cache is untouched and nothing is duplicated
    result = fetch_offline(hub_cache, "tiny", {"source": "hf", "repo_id": "Org/tiny", "revision": "main"}, dest)
    assert result.returncode == 0, result.stderr
    assert cache_state(hub_cache) == before
    assert sorted(p.name for p in dest.parent.iterdir()) == ["tiny"]  # no temporary left beside it
    assert all((dest / n).is_symlink() for n in names - {"source.json"})


def test_hf_offline_pinned_commit(hub_cache, tmp_path):
    dest = tmp_path / "old"
    result = fetch_offline(hub_cache, "old", {"source": "hf", "repo_id": "Org/tiny", "revision": OLD_COMMIT}, dest)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "model.safetensors", "source.json"]
    snapshot = hub_cache / "models--Org--tiny/snapshots" / OLD_COMMIT
    assert os.readlink(dest / "model.safetensors").startswith(str(snapshot))
    source = json.loads((dest / "source.json").read_text())
    assert source["commit"] == OLD_COMMIT and source["revision"] == OLD_COMMIT


@pytest.mark.parametrize("spec", [{"repo_id": "Org/absent", "revision": "main"},
                                  {"repo_id": "Org/tiny", "revision": "v9"}])
def test_hf_offline_not_in_cache_is_one_line(hub_cache, tmp_path, spec):
    secret = "hf_THIS_IS_NOT_A_REAL_TOKEN"
    result = fetch_offline(hub_cache, "gone", {"source": "hf", **spec}, tmp_path / "gone", secret=secret)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "[gone]" in last and f"{spec['repo_id']}@{spec['revision']}" in last and "source: local" in last
    assert f"Hugging Face cache {hub_cache} does not hold it" in last and "hf download" in last
    assert secret not in result.stderr + result.stdout
    assert not (tmp_path / "gone").exists()


def test_hf_broken_cached_file_is_named_in_the_cache(tmp_path):
    ckpt, cache = tmp_path / "ckpt", (tmp_path / "cache").resolve()
    save_tiny("LlamaForCausalLM", TINY_LLAMA, ckpt)
    hub_cache_repo(cache, "Org/tiny", {p.name: p for p in ckpt.iterdir()}, COMMIT)
    dest = tmp_path / "models/tiny"
    assert fetch_offline(cache, "tiny", {"source": "hf", "repo_id": "Org/tiny"}, dest).returncode == 0
    blob = Path(os.path.realpath(dest / "model.safetensors"))
    blob.write_bytes(blob.read_bytes()[:-100])  # the cache's copy is damaged
    with pytest.raises(BlockscopeError) as info:
        build_inventory(dest, model="tiny")
    message = str(info.value)
    cached = cache / "models--Org--tiny/snapshots" / COMMIT / "model.safetensors"
    assert message.startswith(f"[tiny] {cached}:") and f"hf cache rm {COMMIT}" in message and str(dest) in message
