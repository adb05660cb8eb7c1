"""peft LoRA adapters, against peft itself: tiny real adapters built and saved with peft, our
scale * B @ A checked against peft's own merge (merge_and_unload minus the base)."""

import json
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file

from blockscope.checkpoint.adapter_fetch import adapter_fingerprint, fetch_adapter
from blockscope.checkpoint.adapters import ADAPTER_FOLDER, adapter_factors, adapter_replacements, base_shapes_of
from blockscope.checkpoint.inventory import build_inventory
from blockscope.errors import BlockscopeError

from conftest import ROOT, TINY_GPT2, TINY_LLAMA, save_tiny

pytest.importorskip("peft")


def build_adapter(cls, config, base_folder, folder, seed=1, safe=True, dtype=None, **lora):
    """Save a base with save_tiny, wrap it with peft's LoraConfig(**lora), give every adapter
    tensor (LoRA factors, modules_to_save copies) seeded values (peft starts B at zero), save the
    adapter; returns (base state, peft's merged state), float64 numpy, by parameter name."""
    import torch
    from peft import LoraConfig, get_peft_model

    base = save_tiny(cls, config, base_folder)
    if dtype is not None:
        base = base.to(getattr(torch, dtype))
        base.save_pretrained(base_folder, safe_serialization=True)
    base_state = {k: v.detach().double().numpy().copy() for k, v in base.state_dict().items()}
    wrapped = get_peft_model(base, LoraConfig(**lora))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    wrapped.save_pretrained(folder, safe_serialization=safe)
    merged = wrapped.merge_and_unload()
    return base_state, {k: v.detach().double().numpy() for k, v in merged.state_dict().items()}


CASES = {
    "q_v": ("LlamaForCausalLM", TINY_LLAMA, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}),
    "rslora_patterns": ("LlamaForCausalLM", TINY_LLAMA, {
        "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"], "use_rslora": True,
        "rank_pattern": {"model.layers.1.self_attn.q_proj": 2, "down_proj": 6}, "alpha_pattern": {"v_proj": 3}}),
    "embedding": ("LlamaForCausalLM", TINY_LLAMA, {"r": 4, "lora_alpha": 16, "target_modules": ["embed_tokens",
                                                                                                "q_proj"]}),
    "gpt2_conv1d": ("GPT2LMHeadModel", TINY_GPT2, {"r": 3, "lora_alpha": 6, "target_modules": ["c_attn", "c_fc"],
                                                   "fan_in_fan_out": True}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_factors_equal_peft_merge(tmp_path, case):
    cls, config, lora = CASES[case]
    base_state, merged = build_adapter(cls, config, tmp_path / "base", tmp_path / "adapter", **lora)
    shapes = base_shapes_of(tmp_path / "base")
    factors = adapter_factors(tmp_path / "adapter", shapes, model="tuned")
    changed = {name for name in shapes if not np.array_equal(merged[name], base_state[name])}
    assert set(factors) == changed and len(changed) >= 2  # every update found, and only those
    for name, (B, A, scale, _) in factors.items():
        assert B.dtype == A.dtype == np.float64 and B.shape[1] == A.shape[0]
        np.testing.assert_allclose(scale * B @ A, merged[name] - base_state[name], rtol=0, atol=1e-6)
        assert np.linalg.matrix_rank(B @ A) == B.shape[1]  # a rank-r update, not a zero B
    if case == "rslora_patterns":  # rank and alpha per module, rsLoRA's alpha / sqrt(r)
        ranks = {name: f.A.shape[0] for name, f in factors.items()}
        assert ranks["model.layers.1.self_attn.q_proj.weight"] == 2
        assert ranks["model.layers.0.mlp.down_proj.weight"] == 6
        assert factors["model.layers.0.self_attn.v_proj.weight"].scale == pytest.approx(3 / 4 ** 0.5)
        assert factors["model.layers.0.mlp.down_proj.weight"].scale == pytest.approx(8 / 6 ** 0.5)
        assert factors["model.layers.0.self_attn.q_proj.weight"].scale == pytest.approx(4.0)
    if case == "embedding":  # peft saves the embedding beside its LoRA, unchanged
        replaced = adapter_replacements(tmp_path / "adapter", shapes)
        assert list(replaced) == ["model.embed_tokens.weight"]
        assert np.array_equal(replaced["model.embed_tokens.weight"], base_state["model.embed_tokens.weight"])


def peft_spec(path, merged=False, **more):
    return {"source": "peft", "path": str(path), "base": "tiny", "merged": merged, **more}


@pytest.fixture(scope="module")
def q_v_adapter(tmp_path_factory):
    root = tmp_path_factory.mktemp("qv")
    cls, config, lora = CASES["q_v"]
    base_state, merged = build_adapter(cls, config, root / "base", root / "adapter",
                                       modules_to_save=["lm_head"], **lora)
    return root, base_state, merged


def test_fetch_adapter_only(q_v_adapter, tmp_path):
    root, base_state, merged = q_v_adapter
    dest = tmp_path / "models/tuned"
    fetch_adapter("tuned", peft_spec(root / "adapter"), dest, root / "base")
    assert sorted(p.name for p in dest.iterdir()) == [ADAPTER_FOLDER, "source.json"]  # no weights of its own
    assert not (dest / ADAPTER_FOLDER / "adapter_model.safetensors").is_symlink()  # a copy of the user's file
    source = json.loads((dest / "source.json").read_text())
    assert source["source"] == "peft" and source["base"] == "tiny" and source["merged"] is False
    assert source["r"] == 4 and source["lora_alpha"] == 8 and source["scaling"] == "lora_alpha / r"
    assert len(source["adapter_sha256"]) == 64 and len(source["target_modules"]) == 4
    assert source["replaced"] == {"lm_head.weight": "changed"}  # modules_to_save: the head replaced whole
    factors = adapter_factors(dest, base_shapes_of(root / "base"), model="tuned")  # the checkpoint folder reads too
    assert set(factors) == set(source["target_modules"])
    for name, (B, A, scale, _) in factors.items():
        np.testing.assert_allclose(scale * B @ A, merged[name] - base_state[name], rtol=0, atol=1e-6)


def test_fetch_merged_is_peft_merge(q_v_adapter, tmp_path):
    root, base_state, merged = q_v_adapter
    dest = tmp_path / "models/tuned"
    fetch_adapter("tuned", peft_spec(root / "adapter", merged=True), dest, root / "base")
    assert (dest / "config.json").read_text() == (root / "base/config.json").read_text()
    weights = load_file(dest / "model.safetensors")
    assert set(weights) == set(load_file(root / "base/model.safetensors"))
    for name, value in weights.items():
        assert value.dtype == np.float32
        np.testing.assert_allclose(value, merged[name], rtol=0, atol=1e-6)  # lm_head: the modules_to_save copy
    inventory = build_inventory(dest, model="tuned")  # the normal anatomy reads the merged checkpoint
    assert len(inventory) == len(weights) and "adapter_model" not in " ".join(inventory["param_name"])
    source = json.loads((dest / "source.json").read_text())
    assert source["merged"] is True and len(source["merged_tensors"]) == 5


def test_merged_keeps_the_base_dtype(tmp_path):
    cls, config, lora = CASES["q_v"]
    base_state, merged = build_adapter(cls, config, tmp_path / "base", tmp_path / "adapter", dtype="bfloat16", **lora)
    fetch_adapter("tuned", peft_spec(tmp_path / "adapter", merged=True), tmp_path / "tuned", tmp_path / "base")
    header_dtypes = set(build_inventory(tmp_path / "tuned")["dtype"])
    assert header_dtypes == {"BF16"}
    factors = adapter_factors(tmp_path / "adapter", base_shapes_of(tmp_path / "base"))
    name = "model.layers.0.self_attn.q_proj.weight"
    B, A, scale, _ = factors[name]
    expected = (base_state[name] + scale * B @ A).astype(ml_dtypes.bfloat16)  # one rounding, from float64
    stored = load_file(tmp_path / "tuned/model.safetensors")  # numpy reads BF16 as ml_dtypes' bfloat16
    assert np.array_equal(stored[name].astype(np.float64), expected.astype(np.float64))


def fetch_error(tmp_path, adapter, base, merged=False) -> str:
    dest = tmp_path / "models/broken"
    with pytest.raises(BlockscopeError) as info:
        fetch_adapter("broken", peft_spec(adapter, merged=merged), dest, base)
    assert not dest.exists()  # nothing half-done
    message = str(info.value)
    assert message.startswith("[broken]") and "Fix:" in message and "\n" not in message
    return message


def test_pickle_adapter_is_refused(tmp_path):
    cls, config, lora = CASES["q_v"]
    build_adapter(cls, config, tmp_path / "base", tmp_path / "adapter", safe=False, **lora)
    assert (tmp_path / "adapter/adapter_model.bin").is_file()
    assert not (tmp_path / "adapter/adapter_model.safetensors").exists()
    message = fetch_error(tmp_path, tmp_path / "adapter", tmp_path / "base")
    assert "pickle (adapter_model.bin)" in message and "safe_serialization=True" in message


def test_adapter_without_config_is_refused(q_v_adapter, tmp_path):
    root = q_v_adapter[0]
    (tmp_path / "weights_only").mkdir()
    (tmp_path / "weights_only/adapter_model.safetensors").write_bytes(
        (root / "adapter/adapter_model.safetensors").read_bytes())
    message = fetch_error(tmp_path, tmp_path / "weights_only", root / "base")
    assert "no adapter_config.json" in message and "save_pretrained" in message


def test_adapter_for_other_modules_is_refused(q_v_adapter, tmp_path):
    """A GPT-2 adapter fetched against a llama base: its first module is named, with the base's nearest."""
    build_adapter("GPT2LMHeadModel", TINY_GPT2, tmp_path / "gpt2", tmp_path / "adapter", r=2,
                  target_modules=["c_attn"], fan_in_fan_out=True)
    message = fetch_error(tmp_path, tmp_path / "adapter", q_v_adapter[0] / "base")
    assert "the adapter changes transformer.h.0.attn.c_attn.weight, which the base checkpoint does not hold" in message
    assert "nearest: " in message and "models.broken.base" in message


def test_adapter_of_another_shape_is_refused(q_v_adapter, tmp_path):
    cls, config, lora = CASES["q_v"]
    build_adapter(cls, {**config, "hidden_size": 32}, tmp_path / "small", tmp_path / "adapter", **lora)
    message = fetch_error(tmp_path, tmp_path / "adapter", q_v_adapter[0] / "base", merged=True)
    assert "the update of model.layers.0.self_attn.q_proj.weight is 32 x 32, the base's matrix is 64 x 64" in message


@pytest.mark.parametrize("lora, expected, fix", [
    ({"use_dora": True}, "uses DoRA (a learned magnitude rescales W + dW per column), whose update is not scale * B",
     "merge_and_unload"),
    ({"lora_bias": True}, "uses a trained LoRA bias (lora_bias), whose update is not scale * B @ A",
     "merge_and_unload"),
    ({"init_lora_weights": "pissa"}, "init_lora_weights 'pissa', which rewrites the base weights",
     "path_initial_model_for_weight_conversion"),
])
def test_lora_variants_are_refused(tmp_path, lora, expected, fix):
    build_adapter("LlamaForCausalLM", {**TINY_LLAMA, "attention_bias": True}, tmp_path / "base", tmp_path / "adapter",
                  r=4, target_modules=["q_proj"], **lora)
    message = fetch_error(tmp_path, tmp_path / "adapter", tmp_path / "base")
    assert "adapter_config.json: the adapter" in message and expected in message and fix in message


def test_other_peft_types_are_refused(tmp_path):
    from peft import IA3Config, get_peft_model

    base = save_tiny("LlamaForCausalLM", TINY_LLAMA, tmp_path / "base")
    get_peft_model(base, IA3Config(target_modules=["q_proj", "down_proj"], feedforward_modules=["down_proj"])) \
        .save_pretrained(tmp_path / "adapter")
    message = fetch_error(tmp_path, tmp_path / "adapter", tmp_path / "base")
    assert "peft_type is 'IA3'" in message and "LoRA adapters only" in message


def test_fingerprint_follows_the_adapter(q_v_adapter, tmp_path):
    import shutil

    shutil.copytree(q_v_adapter[0] / "adapter", tmp_path / "adapter")
    spec = peft_spec(tmp_path / "adapter")
    before = adapter_fingerprint(spec)
    assert before not in ("", "missing") and adapter_fingerprint(spec) == before
    config = tmp_path / "adapter/adapter_config.json"
    config.write_text(config.read_text().replace('"lora_alpha": 8', '"lora_alpha": 16'))
    assert adapter_fingerprint(spec) != before
    assert adapter_fingerprint(peft_spec(tmp_path / "absent")) == "missing"
    assert adapter_fingerprint({"source": "peft", "repo_id": "Org/adapter", "base": "tiny"}) == ""


# --- from the hub, through the shared Hugging Face cache, offline ----------------------------------

def fetch_offline(cache, spec, dest, base):
    code = (f"from blockscope.checkpoint.adapter_fetch import fetch_adapter\n"
            f"fetch_adapter('tuned', {spec!r}, {str(dest)!r}, {str(base)!r})")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def test_hub_adapter_is_linked_from_the_cache(q_v_adapter, tmp_path):
    from test_sources import COMMIT, hub_cache_repo

    root = q_v_adapter[0]
    cache = (tmp_path / "cache").resolve()
    hub_cache_repo(cache, "Org/adapter", {p.name: p for p in (root / "adapter").iterdir()}, COMMIT)
    spec = {"source": "peft", "repo_id": "Org/adapter", "revision": "main", "base": "tiny"}
    result = fetch_offline(cache, spec, tmp_path / "tuned", root / "base")
    assert result.returncode == 0, result.stderr
    snapshot = cache / "models--Org--adapter/snapshots" / COMMIT
    link = tmp_path / "tuned" / ADAPTER_FOLDER / "adapter_model.safetensors"
    assert link.is_symlink() and os.readlink(link) == str(snapshot / "adapter_model.safetensors")
    assert not (tmp_path / "tuned" / ADAPTER_FOLDER / "README.md").exists()
    source = json.loads((tmp_path / "tuned/source.json").read_text())
    assert source["repo_id"] == "Org/adapter" and source["commit"] == COMMIT and "huggingface_hub" in source["tools"]

    result = fetch_offline(cache, {**spec, "repo_id": "Org/absent"}, tmp_path / "absent", root / "base")
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0 and "[tuned]" in last and "Org/absent@main" in last and "`path:`" in last
    assert not (tmp_path / "absent").exists()


def test_factors_keep_their_stored_format_for_the_rounding_level(q_v_adapter, tmp_path):
    """A bf16 adapter's factors say BF16 (an F32 one's F32), and with that format a rank-4 adapter whose
    B holds only 2 independent columns has a numerical rank of 2 (its bf16 rounding is not rank)."""
    import shutil

    from safetensors.numpy import save_file

    from blockscope.analysis.delta_unit import factored_delta

    root = q_v_adapter[0]
    shapes = base_shapes_of(root / "base")
    assert {lora.dtype for lora in adapter_factors(root / "adapter", shapes).values()} == {"F32"}
    bf16 = tmp_path / "bf16"
    shutil.copytree(root / "adapter", bf16)
    tensors = load_file(bf16 / "adapter_model.safetensors")
    save_file({k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}, bf16 / "adapter_model.safetensors")
    factors = adapter_factors(bf16, shapes)
    assert {lora.dtype for lora in factors.values()} == {"BF16"}

    rng = np.random.default_rng(0)
    lora = next(iter(factors.values()))
    two = rng.standard_normal((lora.B.shape[0], 2))
    B = np.hstack([two, two @ rng.standard_normal((2, 2))]).astype(ml_dtypes.bfloat16).astype(np.float64)
    A = rng.standard_normal(lora.A.shape).astype(ml_dtypes.bfloat16).astype(np.float64)
    w_base = rng.standard_normal((B.shape[0], A.shape[1]))
    settings = {"subspace_k": 4, "hill_fraction": 0.1}
    assert factored_delta(B, A, 2.0, w_base, settings, dtype="BF16")["delta_numerical_rank"] == 2
    assert factored_delta(B, A, 2.0, w_base, settings, dtype="F64")["delta_numerical_rank"] == 4  # rounding as rank
