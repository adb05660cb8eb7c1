"""Config validation against schemas/config.schema.yaml, with defaults filled in."""

import copy
from pathlib import Path

import jsonschema
import yaml

from .errors import BlockscopeError

# Model keys default per source (as the schema's descriptions say), so a slice holds only
# what its source uses and an unrelated default never reruns a model.
PER_SOURCE_DEFAULTS = {"hf": {"revision": "main"}, "synthetic": {"seed": 0, "dtype": "float32"}}
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"


def _fill_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _where(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def _message(error) -> str:
    if error.validator == "enum":
        return f"{error.instance!r} is not allowed; allowed: {', '.join(map(str, error.validator_value))}"
    if error.validator == "additionalProperties":
        return f"{error.message}; see schemas/config.schema.yaml for the known keys"
    if error.validator in ("anyOf", "oneOf") and error.context:
        return "; or ".join(sorted({e.message for e in error.context}))
    return error.message


def validate_config(config: dict, schema_path=SCHEMA_PATH) -> dict:
    """Validate in place, fill defaults, and check cross-model references. Returns config."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = _fill_defaults(jsonschema.Draft202012Validator)(schema)
    for model_spec in (config.get("models") or {}).values():
        if isinstance(model_spec, dict):
            for key, value in PER_SOURCE_DEFAULTS.get(model_spec.get("source"), {}).items():
                model_spec.setdefault(key, value)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        raise BlockscopeError(f"config key {_where(error)}: {_message(error)}", path="config.yaml",
                              fix="edit config.yaml (every key is described in schemas/config.schema.yaml)")
    for slug, spec in config["models"].items():
        like = spec.get("like")
        if like is not None and like not in config["models"]:
            raise BlockscopeError(f"config key models.{slug}.like: {like!r} is not a model in this config",
                                  path="config.yaml", model=slug, fix="name another model slug")
        if like == slug:
            raise BlockscopeError(f"config key models.{slug}.like names itself", path="config.yaml", model=slug,
                                  fix="name another model slug")
    return config


