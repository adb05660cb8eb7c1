"""Config validation: schemas/config.schema.yaml with defaults filled in, then what a schema cannot say.

Three passes, each stopping at its first failure with one short BlockscopeError that names the
key, the file (or --config) that held it and the fix:

1. credentials: no key may hold a secret (Snakemake keeps config values in plain text); the
   value is never echoed;
2. the schema (draft 2020-12): unknown keys get the nearest valid name, long enums the nearest
   values, never the whole list;
3. rules across keys: like references, synthetic model types, k_min <= k_max, one more
   format than thresholds, windows that fit in max_tokens, ...

It runs on every snakemake invocation, so the valid path reads no file but the schema and
imports nothing heavy (transformers' model types are read from its source, not imported).
"""

import copy
import difflib
import functools
import importlib.util
import re
import reprlib
from collections.abc import Mapping
from pathlib import Path

import jsonschema
import yaml

from blockscope.errors import BlockscopeError
from blockscope.checkpoint.selection import parse_layers, pattern_error
from blockscope.compression.presets import missing_rule_keys, resolve_quantization

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"
COMMAND_LINE = "--config on the command line"
DESCRIBED = "every key is described in schemas/config.schema.yaml"
MAX_WHAT, MAX_FIX = 300, 200  # characters: a message stays one readable line
MAX_LISTED = 8  # an enum longer than this is answered with its nearest values

# A credential key: one of these words anywhere, `api key`, or ending in `token` unless the word
# before names a vocabulary token or a rate (cls_token, n_token, num_experts_per_token are settings).
SECRET_WORDS = {"secret", "secrets", "password", "passwd", "passphrase", "credential", "credentials", "apikey"}
TOKEN_ROLES = {"cls", "mask", "pad", "bos", "eos", "unk", "sep", "class", "n", "image", "audio", "video",
               "vision", "boi", "eoi", "boa", "eoa", "start", "end", "special", "per"}

_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict, _short.maxlevel = 40, 40, 4, 3, 2


# --- where a key came from ----------------------------------------------------------------------

def _display(path) -> str:
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve())) if path.is_absolute() else str(path)
    except ValueError:
        return str(path)


def _holds(data, keys) -> bool:
    for key in keys:
        if isinstance(data, Mapping) and key in data:
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and key < len(data):
            data = data[key]
        else:
            return False
    return True


class Origins:
    """The config's sources, lowest precedence first: files, then --config values. Files are
    read only when an error has to name one."""

    def __init__(self, configfiles=("config.yaml",), cli_configfiles=(), command_line=None):
        cli = [Path(f) for f in cli_configfiles or ()]
        cli_resolved = {f.resolve() for f in cli}
        first = [Path(f) for f in configfiles or () if Path(f).resolve() not in cli_resolved]
        self.files = list(dict.fromkeys(first + cli)) or [Path("config.yaml")]
        self.command_line = dict(command_line or {})

    def _load(self, path):
        try:
            return yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError):
            return {}

    def of(self, *key_paths) -> str:
        """The label of the source that set the first of key_paths that any source sets (the one
        read last wins, as in Snakemake): the file's path, or COMMAND_LINE."""
        if not self.command_line and len(self.files) == 1:
            return _display(self.files[0])
        sources = [(COMMAND_LINE, self.command_line)] + [(_display(f), f) for f in reversed(self.files)]
        loaded = {}
        for keys in key_paths:
            for label, data in sources:
                if isinstance(data, Path):
                    data = loaded[label] = loaded[label] if label in loaded else self._load(data)
                if _holds(data, keys):
                    return label
        return _display(self.files[-1])


# --- failures -----------------------------------------------------------------------------------

def _dotted(keys) -> str:
    return ".".join(str(k) for k in keys) or "(top level)"


def _cap(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _fail(origins: Origins, keys, what: str, fix: str | None = None, also=()):
    """Raise the one-line error for key path `keys` (and `also`, key paths that share the blame)."""
    keys = tuple(keys)
    source = origins.of(keys, *also)
    model = _cap(keys[1], 60) if len(keys) > 1 and keys[0] == "models" else None
    if fix is None:
        where = "the --config value" if source == COMMAND_LINE else source
        fix = f"edit {where} ({DESCRIBED})"
    raise BlockscopeError(_cap(what, MAX_WHAT), model=model, path=source, fix=_cap(fix, MAX_FIX))


def _nearest(word, choices, n=3) -> list:
    return difflib.get_close_matches(str(word), [str(c) for c in choices], n=n, cutoff=0.6)


# --- 1. credentials -----------------------------------------------------------------------------

def is_credential_key(key) -> bool:
    """True for token, hf_token, api_key, password, client_secret, ...; False for pad_token_id,
    max_tokens, cls_token, max_position_embeddings."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(key)).lower()
    words = re.findall(r"[a-z0-9]+", text)
    if not words:
        return False
    if SECRET_WORDS.intersection(words) or any(a == "api" and b == "key" for a, b in zip(words, words[1:])):
        return True
    return words[-1] == "token" and (len(words) == 1 or words[-2] not in TOKEN_ROLES)


def _credential_keys(node, keys=()):
    if isinstance(node, Mapping):
        for key, value in node.items():
            here = keys + (key,)
            if keys != ("models",) and is_credential_key(key):  # model slugs are names, not keys
                yield here
            yield from _credential_keys(value, here)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _credential_keys(value, keys + (index,))


def check_no_credentials(config: dict, origins: Origins):
    for keys in _credential_keys(config):
        _fail(origins, keys,
              f"config key {_dotted(keys)} looks like a credential; blockscope takes none from the config "
              f"(Snakemake stores config values in plain text under .snakemake/metadata)",
              "delete the key (its value is not shown here) and export HF_TOKEN in the environment instead")


# --- 2. the schema ------------------------------------------------------------------------------

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


def _short_repr(value) -> str:
    return _short.repr(value)


def _unknown_key(error, origins):
    known = list(error.schema.get("properties", {}))
    unknown = [k for k in error.instance if k not in known]
    keys = tuple(error.absolute_path) + (unknown[0],)
    what = f"config key {_dotted(keys)} is not known"
    guess = _nearest(unknown[0], known, n=1)
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
    _fail(origins, keys, what, fix)


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
            return f"{_short_repr(instance)} is not allowed; allowed: {', '.join(map(str, allowed))}"
        near = _nearest(instance, allowed)
        hint = f"nearest: {', '.join(near)}" if near else "nothing close"
        return f"{_short_repr(instance)} is not allowed ({hint}; {len(allowed)} allowed values in the schema)"
    if error.validator == "uniqueItems":
        return f"{_short_repr(_duplicate(instance))} is listed more than once; each entry must be unique"
    if error.validator == "pattern" and "propertyNames" in error.schema_path:
        return f"model slug {_short_repr(instance)} does not match {error.validator_value} " \
               "(lowercase letters, digits, '.', '_', '-')"
    if error.validator in ("anyOf", "oneOf") and error.context:
        return "; or ".join(sorted({_schema_message(e) for e in error.context}))
    message = error.message
    full = repr(instance)
    if len(full) > 60 and full in message:
        message = message.replace(full, _short_repr(instance))
    return message


def check_schema(config: dict, schema_path, origins: Origins):
    path = Path(schema_path)
    validator = _validator(str(path), path.stat().st_mtime)
    errors = list(validator.iter_errors(config))
    if not errors:
        return
    error = jsonschema.exceptions.best_match(errors)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        _unknown_key(error, origins)
    keys = tuple(error.absolute_path)
    _fail(origins, keys, f"config key {_dotted(keys)}: {_schema_message(error)}")


# --- 3. rules across keys -----------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _model_types_from_source() -> frozenset:
    """transformers' model types read from its auto-mapping source files, without importing it
    (the import costs seconds). May miss a few; a miss is confirmed by the import."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    auto = Path(list(spec.submodule_search_locations)[0]) / "models" / "auto"
    names = set()
    for name in ("auto_mappings.py", "configuration_auto.py"):
        try:
            names.update(re.findall(r'"([\w.-]+)"\s*[,:]\s*"\w*Config"(?<!"AutoConfig")', (auto / name).read_text()))
        except OSError:
            pass
    return frozenset(names)


@functools.lru_cache(maxsize=1)
def _model_types_imported():
    """transformers' CONFIG_MAPPING_NAMES keys, or None without transformers (slow: imports it)."""
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    except Exception:
        return None
    return tuple(CONFIG_MAPPING_NAMES)


def known_model_type(model_type: str):
    """True / False, or None when transformers is not installed here (the fetch job will say)."""
    if model_type in _model_types_from_source():
        return True
    exact = _model_types_imported()
    return None if exact is None else model_type in exact


def _check_like(slug, like, models, origins):
    keys = ("models", slug, "like")
    if like == slug:
        _fail(origins, keys, f"config key {_dotted(keys)} names itself", "name another model slug")
    if like not in models:
        near = _nearest(like, models, n=1)
        guess = f" (did you mean {near[0]!r}?)" if near else ""
        _fail(origins, keys, f"config key {_dotted(keys)}: {_short_repr(like)} is not a model in this config{guess}",
              f"name another model slug (one of: {', '.join(models)})")
    chain = [slug, like]
    while models[chain[-1]].get("source") == "synthetic" and models[chain[-1]].get("like"):
        chain.append(models[chain[-1]]["like"])
        if chain[-1] in chain[:-1]:
            _fail(origins, keys, f"config key {_dotted(keys)}: the like chain {' -> '.join(chain)} is a cycle",
                  "end the chain at a model that is not `like` another")
        if chain[-1] not in models:
            return  # that model's own check names it


def _check_model_type(slug, config, origins):
    keys = ("models", slug, "config", "model_type")
    model_type = config["model_type"]
    if not isinstance(model_type, str):
        _fail(origins, keys, f"config key {_dotted(keys)}: {_short_repr(model_type)} is not a string",
              "set it to a transformers model type such as llama")
    if known_model_type(model_type) is False:
        types = _model_types_imported()
        near = _nearest(model_type, types, n=5)
        hint = f"nearest: {', '.join(near)}" if near else "nothing close"
        _fail(origins, keys, f"config key {_dotted(keys)}: {_short_repr(model_type)} is not a transformers model "
              f"type ({hint}; {len(types)} known to the installed transformers)",
              "set it to one of those (transformers.models.auto.configuration_auto.CONFIG_MAPPING_NAMES lists all)")


def _check_model(slug, spec, models, origins):
    if slug == "summary":
        _fail(origins, ("models", slug), "config key models.summary: the name summary is taken, results/summary/ "
              "holds the cross-model tables and report", "rename the model, e.g. summary-model")
    if spec["source"] == "gguf" and "path" in spec and {"package", "file"} & set(spec):
        _fail(origins, ("models", slug), f"config key models.{slug}: a gguf model takes either path, or "
              "package + file, not both", "keep path, or package and file")
    if spec["source"] == "synthetic":
        if "like" in spec:
            _check_like(slug, spec["like"], models, origins)
        if "model_type" in spec.get("config", {}):
            _check_model_type(slug, spec["config"], origins)


def _check_layers(origins, keys, value) -> list | None:
    try:
        return parse_layers(value)
    except ValueError as exc:
        _fail(origins, keys, f"config key {_dotted(keys)}: {exc}",
              'give layer indices and ranges such as "0-5,20,30-31", or a list of integers')


def _check_select(origins, keys, select):
    """Regexes that compile and layers that parse, for `select` at key path `keys`."""
    for key in ("include", "exclude"):
        for i, pattern in enumerate(select.get(key) or []):
            problem = pattern_error(pattern)
            if problem:
                _fail(origins, keys + (key, i), f"config key {_dotted(keys + (key, i))}: {_short_repr(pattern)} is "
                      f"not a valid regex ({problem})", "fix the regex (Python re syntax, matched with re.search)")
    return _check_layers(origins, keys + ("layers",), select.get("layers"))


def _synthetic_layers(spec):
    """The block count a synthetic model's own config gives, None when it does not say."""
    config = spec.get("config") or {}
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def check_cross_keys(config: dict, origins: Origins):
    models = config["models"]
    for slug, spec in models.items():
        _check_model(slug, spec, models, origins)

    global_layers = _check_select(origins, ("select",), config.get("select") or {})
    for slug, spec in models.items():
        own = spec.get("select") or {}
        own_layers = _check_select(origins, ("models", slug, "select"), own)
        layers = own_layers if "layers" in own else global_layers
        count = _synthetic_layers(spec) if spec["source"] == "synthetic" else None
        if layers and count is not None and layers[-1] >= count:
            keys = ("models", slug, "select", "layers") if "layers" in own else ("select", "layers")
            _fail(origins, keys, f"config key {_dotted(keys)} names layer {layers[-1]}, but model {slug} has "
                  f"{count} layers (0-{count - 1})", f"keep the layers of {slug} within 0-{count - 1}",
                  also=[("select", "layers")])
    _check_layers(origins, ("headmerge", "layers"), config["headmerge"].get("layers"))
    _check_layers(origins, ("headmerge", "plot_layers"), config["headmerge"].get("plot_layers"))

    emb = config["embedding"]
    if emb["k_min"] > emb["k_max"]:
        _fail(origins, ("embedding", "k_min"), f"config key embedding.k_min ({emb['k_min']}) is above "
              f"embedding.k_max ({emb['k_max']})", "make k_min <= k_max", also=[("embedding", "k_max")])
    if emb["k_max"] > emb["sample"]:
        _fail(origins, ("embedding", "k_max"), f"config key embedding.k_max ({emb['k_max']}) is above "
              f"embedding.sample ({emb['sample']}): k-means needs a row per cluster",
              "lower k_max or raise sample", also=[("embedding", "sample")])
    if emb["k_max"] >= emb["silhouette_sample"]:
        _fail(origins, ("embedding", "k_max"), f"config key embedding.k_max ({emb['k_max']}) is not below "
              f"embedding.silhouette_sample ({emb['silhouette_sample']}): silhouette needs more rows than clusters",
              "lower k_max or raise silhouette_sample", also=[("embedding", "silhouette_sample")])

    quant = config["quantization"]
    if missing := missing_rule_keys(quant):
        _fail(origins, ("quantization", missing[0]), f"config key quantization.preset is custom "
              f"but quantization.{', quantization.'.join(missing)} not set",
              "set metric, direction, alpha_thresholds and formats, or choose preset alpha_pruning or "
              "original_script", also=[("quantization", "preset")])
    resolve_quantization(quant)
    thresholds, formats = quant["alpha_thresholds"], quant["formats"]
    if len(formats) != len(thresholds) + 1:
        _fail(origins, ("quantization", "formats"), f"config key quantization.formats has {len(formats)} entries "
              f"for {len(thresholds)} alpha_thresholds; the bands need exactly one more format than thresholds",
              f"give {len(thresholds) + 1} formats for these {len(thresholds)} thresholds, most bits first",
              also=[("quantization", "alpha_thresholds")])
    for i in range(1, len(thresholds)):
        if not thresholds[i] > thresholds[i - 1]:
            _fail(origins, ("quantization", "alpha_thresholds", i), f"config key quantization.alpha_thresholds "
                  f"must ascend strictly, but {thresholds[i]} follows {thresholds[i - 1]}",
                  f"sort them: {sorted(set(thresholds))}", also=[("quantization", "alpha_thresholds")])

    low, high = config["report"]["findings"]["alpha_range"]
    if not low < high:
        _fail(origins, ("report", "findings", "alpha_range"), f"config key report.findings.alpha_range is "
              f"[{low}, {high}]: its low end must be below its high end", "give [low, high], e.g. [2, 6]")

    merge = config["headmerge"]
    for length, budget in (("seq_len", "max_tokens"), ("gpu_seq_len", "gpu_max_tokens")):
        if merge[budget] is not None and merge[budget] < merge[length]:
            _fail(origins, ("headmerge", budget), f"config key headmerge.{budget} ({merge[budget]}) is below "
                  f"headmerge.{length} ({merge[length]}): not one window fits",
                  f"make {budget} at least {length}, or null for the whole split", also=[("headmerge", length)])
    corpus = merge["corpus"]
    if corpus["source"] == "file" and not corpus["path"]:
        _fail(origins, ("headmerge", "corpus", "path"), "config key headmerge.corpus.source is file but "
              "headmerge.corpus.path is not set", "set headmerge.corpus.path to a raw text file, or source: datasets",
              also=[("headmerge", "corpus", "source")])


# --- the entry point ----------------------------------------------------------------------------

def validate_config(config: dict, schema_path=SCHEMA_PATH, *, configfiles=("config.yaml",), cli_configfiles=(),
                    command_line=None) -> dict:
    """Validate `config` in place, fill defaults, check rules across keys. Returns config.

    configfiles: every file the config was read from (Snakemake's workflow.configfiles);
    cli_configfiles: those given with --configfile (workflow.overwrite_configfiles), which
    take precedence; command_line: the --config values. They only serve to name, in an
    error, the file (or the command line) that held the bad key.
    """
    origins = Origins(configfiles, cli_configfiles, command_line)
    check_no_credentials(config, origins)
    check_schema(config, schema_path, origins)
    check_cross_keys(config, origins)
    return config
