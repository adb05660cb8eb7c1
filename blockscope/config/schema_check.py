"""The JSON-schema pass (draft 2020-12) with the schema's defaults written into the config.

Its messages stay short: an unknown key gets the nearest valid name, a long enum the nearest
values, never the whole list. The caller names the schema file.
"""

import copy
import functools
from pathlib import Path

import jsonschema
import yaml

from blockscope.config.origins import DESCRIBED, Origins, dotted, fail, nearest, short_repr

MAX_LISTED = 8  # an enum longer than this is answered with its nearest values


def _fill_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


FillingValidator = _fill_defaults(jsonschema.Draft202012Validator)


@functools.lru_cache(maxsize=4)
def _validator(schema_path: str, mtime: float):
    return FillingValidator(yaml.safe_load(Path(schema_path).read_text()))


def _unknown_key(error, origins):
    known = list(error.schema.get("properties", {}))
    unknown = [k for k in error.instance if k not in known]
    keys = tuple(error.absolute_path) + (unknown[0],)
    what = f"config key {dotted(keys)} is not known"
    guess = nearest(unknown[0], known, n=1)
    if guess:
        what += f"; did you mean {guess[0]!r}?"
    if len(keys) == 3 and keys[0] == "models":
        source = error.instance.get("source")
        what += f" ({'an' if source == 'hf' else 'a'} {source} model takes: {', '.join(known)})"
    elif len(known) <= 16:
        what += f" (known here: {', '.join(known)})"
    else:
        what += f" ({len(known)} keys known here)"
    if len(unknown) > 1:
        what += f"; also unknown: {', '.join(map(str, unknown[1:]))}"
    fix = f"rename it to {guess[0]}" if guess else f"delete it or correct its name ({DESCRIBED})"
    fail(origins, keys, what, fix)


def _duplicate(items):
    for i, item in enumerate(items):
        if any(item == other for other in items[:i]):
            return item
    return None


def _schema_message(error) -> str:
    instance = error.instance
    if error.validator == "enum":
        allowed = error.validator_value
        if len(allowed) <= MAX_LISTED:
            return f"{short_repr(instance)} is not allowed; allowed: {', '.join(map(str, allowed))}"
        near = nearest(instance, allowed)
        hint = f"nearest: {', '.join(near)}" if near else "nothing close"
        return f"{short_repr(instance)} is not allowed ({hint}; {len(allowed)} allowed values in the schema)"
    if error.validator == "uniqueItems":
        return f"{short_repr(_duplicate(instance))} is listed more than once; each entry must be unique"
    if error.validator == "pattern" and "propertyNames" in error.schema_path:
        return f"model slug {short_repr(instance)} does not match {error.validator_value} " \
               "(lowercase letters, digits, '.', '_', '-')"
    if error.validator in ("anyOf", "oneOf") and error.context:
        return "; or ".join(sorted({_schema_message(e) for e in error.context}))
    message = error.message
    full = repr(instance)
    if len(full) > 60 and full in message:
        message = message.replace(full, short_repr(instance))
    return message


def _validator_of(schema_path):
    path = Path(schema_path)
    return _validator(str(path), path.stat().st_mtime)


def load_schema(schema_path) -> dict:
    """The schema at schema_path, read once per change of the file."""
    return _validator_of(schema_path).schema


def check_schema(config: dict, schema_path, origins: Origins):
    """Validate against the schema at schema_path, filling its defaults into config in place."""
    validator = _validator_of(schema_path)
    errors = list(validator.iter_errors(config))
    if not errors:
        return
    error = jsonschema.exceptions.best_match(errors)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        _unknown_key(error, origins)
    keys = tuple(error.absolute_path)
    fail(origins, keys, f"config key {dotted(keys)}: {_schema_message(error)}")
