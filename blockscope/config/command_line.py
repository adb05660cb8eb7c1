"""--config values, read as the types the schema gives their keys.

Snakemake reads a nested --config value (`--config 'embedding={k_max: 8}'`) with YAML's
BaseLoader, so every scalar in it arrives as text, and a top-level `true` too (only True and
False become booleans there). Where the schema's types for a key leave out string, the text is
read as one of them ("8" -> 8, "0.5" -> 0.5, "true" -> True); YAML's null ("null", "~") is None
wherever the schema takes null; text that is none of the types is refused in one line. Values
the schema does not type (a synthetic model's `config:` mapping) stay text. A dotted key
(`embedding.k_max=8`) never gets here: Snakemake's own parser refuses it.
"""

import re
from collections.abc import Mapping

from blockscope.config.origins import Origins, dotted, fail, short_repr

INTEGER = re.compile(r"[-+]?\d+")
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
KINDS = {"integer": ("an integer", "8"), "number": ("a number", "0.5"), "boolean": ("true or false", "true"),
         "null": ("null", "null")}  # the types text can spell: what they are called, an example
NULL_WORDS = ("", "~", "null", "Null", "NULL")  # YAML's null, where a text key takes null too (select.layers)
MAX_DEPTH = 32  # $ref / allOf nesting followed: a guard against a schema that refers to itself


def _branches(schema, root, depth=0) -> list:
    """schema and every schema that also applies at its place: $ref targets (local), allOf /
    anyOf / oneOf members, then / else (whichever condition holds: a type any of them gives counts)."""
    if not isinstance(schema, Mapping) or depth > MAX_DEPTH:
        return []
    found = [schema]
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target = root
        for part in ref[2:].split("/"):
            target = target.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(target, Mapping) else {}
        found += _branches(target, root, depth + 1)
    for key in ("allOf", "anyOf", "oneOf"):
        for member in schema.get(key) or []:
            found += _branches(member, root, depth + 1)
    for key in ("then", "else"):
        found += _branches(schema.get(key), root, depth + 1)
    return found


def _child(schemas, key, root) -> list:
    """The schemas of member `key` (a mapping key, or a list index) of a value that `schemas` describe."""
    found = []
    for schema in schemas:
        if isinstance(key, int):
            prefix = schema.get("prefixItems") or []
            found += _branches(prefix[key] if key < len(prefix) else schema.get("items"), root)
            continue
        matched = False
        if key in (schema.get("properties") or {}):
            found += _branches(schema["properties"][key], root)
            matched = True
        for pattern, sub in (schema.get("patternProperties") or {}).items():
            if re.search(pattern, key):
                found += _branches(sub, root)
                matched = True
        if not matched:
            found += _branches(schema.get("additionalProperties"), root)
    return found


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {int: "integer", float: "number", str: "string"}.get(type(value), "object")


def _types(schemas) -> set:
    """The JSON types that schemas allow here (from type, const and enum); empty when none says."""
    types = set()
    for schema in schemas:
        given = schema.get("type")
        types.update([given] if isinstance(given, str) else given or [])
        if "const" in schema:
            types.add(_json_type(schema["const"]))
        types.update(_json_type(value) for value in schema.get("enum") or [])
    return types


def _typed(text: str, types: set):
    """(True, value) for text read as the first of types it spells, else (False, None)."""
    word = text.strip()
    if "boolean" in types and word.lower() in ("true", "false"):
        return True, word.lower() == "true"
    if types & {"integer", "number"} and INTEGER.fullmatch(word):
        return True, int(word)
    if "number" in types and NUMBER.fullmatch(word):
        return True, float(word)
    return False, None


def _example(keys, text) -> str:
    """The --config form that sets key path `keys` to text: embedding={k_max: 8}, headmerge={thresholds: [0.5]}."""
    nested = text
    for key in reversed(keys[1:]):
        nested = f"[{nested}]" if isinstance(key, int) else f"{{{key}: {nested}}}"
    return f"{keys[0]}={nested}"


def _coerced(value, given, keys, schemas, root, origins):
    """value (the config's, at keys) with the text that --config gave (`given`) read as its schema type."""
    if isinstance(given, Mapping) and isinstance(value, dict):
        for key, sub in given.items():
            if key in value:
                value[key] = _coerced(value[key], sub, keys + (key,), _child(schemas, key, root), root, origins)
        return value
    if isinstance(given, list) and isinstance(value, list) and len(given) == len(value):
        # a new list: Snakemake's --config record shares this one
        return [_coerced(item, sub, keys + (i,), _child(schemas, i, root), root, origins)
                for i, (item, sub) in enumerate(zip(value, given))]
    if not (isinstance(given, str) and value == given):
        return value
    types = _types(schemas)
    if "null" in types and value.strip() in NULL_WORDS:
        return None
    if "string" in types or not types & set(KINDS):
        return value  # text is allowed here, or the schema says nothing a string could spell
    ok, typed = _typed(value, types)
    if not ok:
        kinds = [KINDS[kind] for kind in KINDS if kind in types]
        names = " or ".join(name for name, _ in kinds)
        fail(origins, keys, f"config key {dotted(keys)}: {short_repr(value)} is not {names}",
             f"give {names} in the --config value, e.g. --config '{_example(keys, kinds[0][1])}'")
    return typed


def coerce_command_line(config: dict, command_line, schema: dict, origins: Origins) -> dict:
    """Read the --config text in config (in place) as the types that `schema` gives its keys."""
    return _coerced(config, command_line or {}, (), [schema], schema, origins)
