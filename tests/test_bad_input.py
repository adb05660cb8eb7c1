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


# --- issue 26: a key given twice, a config that is not UTF-8, typed --config values -------------

def _dry_run(workdir, *args):
    """snakemake --dry-run of the real Snakefile in workdir, on whatever config.yaml it holds."""
    import os
    import subprocess

    from conftest import SNAKEMAKE

    command = [str(SNAKEMAKE), "--dry-run", *args, "--snakefile", str(ROOT / "Snakefile"), "--directory",
               str(workdir), "--cores", "1"]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return result.returncode, (result.stdout + result.stderr).splitlines()


def _base_yaml():
    import yaml

    from conftest import WORKFLOW_BASE

    return yaml.safe_dump(WORKFLOW_BASE, sort_keys=False)


@pytest.mark.slow
def test_two_models_blocks_stop_the_run_with_one_line(tmp_path):
    text = _base_yaml()
    (tmp_path / "config.yaml").write_text(text + "models:\n  other:\n    source: hf\n    repo_id: x/y\n")
    second = len(text.splitlines()) + 1
    returncode, lines = _dry_run(tmp_path)
    assert returncode != 0
    assert (f"config.yaml: config key models is given twice (lines 1 and {second}); YAML keeps only the last, so "
            "what line 1 set is silently dropped. Fix: keep one models: entry at that level (merge the two if both "
            "hold settings you want).") in lines, lines


@pytest.mark.slow
def test_a_latin1_config_stops_the_run_with_one_line(tmp_path):
    text = _base_yaml()
    (tmp_path / "config.yaml").write_bytes((text + "# résumé of the run\n").encode("latin-1"))
    returncode, lines = _dry_run(tmp_path)
    assert returncode != 0
    assert (f"config.yaml: line {len(text.splitlines()) + 1}, column 4 is not UTF-8 (byte 0xe9); Snakemake reads "
            "config files as UTF-8. Fix: save it as UTF-8 (from latin-1: iconv -f latin1 -t utf-8 config.yaml > "
            "config.yaml.utf8 && mv config.yaml.utf8 config.yaml).") in lines, lines
    assert not any("UnicodeDecodeError" in line for line in lines), lines


@pytest.mark.slow
def test_nested_config_values_take_the_schema_types(finished_run, tmp_path):
    """--config 'embedding={k_max: 6}' is the run's own 6, not the text '6': it plans what the file alone plans
    (nothing, in a tree nobody edits); 'embedding={k_max: 5}' plans what k_max: 5 in the file plans."""
    import shutil

    import yaml

    from conftest import WORKFLOW_BASE

    def planned(*args):
        returncode, lines = _dry_run(work, *args)
        assert returncode == 0, lines
        return sorted(line for line in lines if line.startswith("rule "))

    def write_k_max(k_max):
        config = {**WORKFLOW_BASE, "embedding": {"k_max": k_max}}
        (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    work = tmp_path / "work"
    shutil.copytree(finished_run, work, symlinks=True)
    assert planned("--config", "embedding={k_max: 6}") == planned()
    write_k_max(5)
    five_in_file = planned()
    write_k_max(6)
    assert planned("--config", "embedding={k_max: 5}") == five_in_file
    assert five_in_file.count("rule embedding:") == 2  # params changed: one job per model
    returncode, lines = _dry_run(work, "--config", "embedding={k_max: 6x}")
    assert returncode != 0
    assert ("--config on the command line: config key embedding.k_max: '6x' is not an integer. Fix: give an integer "
            "in the --config value, e.g. --config 'embedding={k_max: 8}'.") in lines, lines


@pytest.mark.slow
def test_a_dotted_config_key_is_refused_by_snakemake_itself(tmp_path):
    """What docs/configuration.md says: Snakemake's parser refuses embedding.k_max=8 before blockscope runs."""
    (tmp_path / "config.yaml").write_text(_base_yaml())
    returncode, lines = _dry_run(tmp_path, "--config", "embedding.k_max=8")
    assert returncode != 0
    assert "ValueError: Invalid config definition: Config entry must start with a valid identifier." in lines, lines
