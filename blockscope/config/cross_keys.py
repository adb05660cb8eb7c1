"""Config rules that run across keys, where a schema cannot reach: model slugs and `like`
references, synthetic model types, `select` regexes and layers (within a synthetic model's
blocks), embedding k bounds, quantization bands, the findings' alpha range (a model against
another, base, peft, compare and series: model_pairs.py; the evaluation windows: evaluation_keys.py)."""

from blockscope.checkpoint.selection import parse_layers, pattern_error
from blockscope.compression.presets import missing_rule_keys, resolve_quantization
from blockscope.config.model_pairs import check_model_pairs
from blockscope.config.model_types import known_model_type, model_types_imported
from blockscope.config.origins import Origins, dotted, fail, nearest, short_repr


def _check_like(slug, like, models, origins):
    keys = ("models", slug, "like")
    if like == slug:
        fail(origins, keys, f"config key {dotted(keys)} names itself", "name another model slug")
    if like not in models:
        near = nearest(like, models, n=1)
        guess = f" (did you mean {near[0]!r}?)" if near else ""
        fail(origins, keys, f"config key {dotted(keys)}: {short_repr(like)} is not a model in this config{guess}",
             f"name another model slug (one of: {', '.join(models)})")
    chain = [slug, like]
    while models[chain[-1]].get("source") == "synthetic" and models[chain[-1]].get("like"):
        chain.append(models[chain[-1]]["like"])
        if chain[-1] in chain[:-1]:
            fail(origins, keys, f"config key {dotted(keys)}: the like chain {' -> '.join(chain)} is a cycle",
                 "end the chain at a model that is not `like` another")
        if chain[-1] not in models:
            return  # that model's own check names it


def _check_model_type(slug, config, origins):
    keys = ("models", slug, "config", "model_type")
    model_type = config["model_type"]
    if not isinstance(model_type, str):
        fail(origins, keys, f"config key {dotted(keys)}: {short_repr(model_type)} is not a string",
             "set it to a transformers model type such as llama")
    if known_model_type(model_type) is False:
        types = model_types_imported()
        near = nearest(model_type, types, n=5)
        hint = f"nearest: {', '.join(near)}" if near else "nothing close"
        fail(origins, keys, f"config key {dotted(keys)}: {short_repr(model_type)} is not a transformers model "
             f"type ({hint}; {len(types)} known to the installed transformers)",
             "set it to one of those (transformers.models.auto.configuration_auto.CONFIG_MAPPING_NAMES lists all)")


def _check_model(slug, spec, models, origins):
    if slug == "summary":
        fail(origins, ("models", slug), "config key models.summary: the name summary is taken, results/summary/ "
             "holds the cross-model tables and report", "rename the model, e.g. summary-model")
    if spec["source"] == "gguf" and "path" in spec and {"package", "file"} & set(spec):
        fail(origins, ("models", slug), f"config key models.{slug}: a gguf model takes either path, or "
             "package + file, not both", "keep path, or package and file")
    if spec["source"] == "local" and "path" in spec and "package" in spec:
        fail(origins, ("models", slug), f"config key models.{slug}: a local model takes either path, or "
             "package, not both", "keep path, or package")
    if spec["source"] == "synthetic":
        if "like" in spec:
            _check_like(slug, spec["like"], models, origins)
        if "model_type" in spec.get("config", {}):
            _check_model_type(slug, spec["config"], origins)


def _check_layers(origins, keys, value) -> list | None:
    try:
        return parse_layers(value)
    except ValueError as exc:
        fail(origins, keys, f"config key {dotted(keys)}: {exc}",
             'give layer indices and ranges such as "0-5,20,30-31", or a list of integers')


def _check_select(origins, keys, select):
    """Regexes that compile and layers that parse, for `select` at key path `keys`."""
    for key in ("include", "exclude"):
        for i, pattern in enumerate(select.get(key) or []):
            problem = pattern_error(pattern)
            if problem:
                fail(origins, keys + (key, i), f"config key {dotted(keys + (key, i))}: {short_repr(pattern)} is "
                     f"not a valid regex ({problem})", "fix the regex (Python re syntax, matched with re.search)")
    return _check_layers(origins, keys + ("layers",), select.get("layers"))


def _synthetic_layers(spec):
    """The block count a synthetic model's own config gives, None when it does not say."""
    config = spec.get("config") or {}
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def _check_selections(config, origins):
    """Every `select` (global and per model), and head-merge layers; a synthetic model's blocks bound its layers."""
    models = config["models"]
    global_layers = _check_select(origins, ("select",), config.get("select") or {})
    for slug, spec in models.items():
        own = spec.get("select") or {}
        own_layers = _check_select(origins, ("models", slug, "select"), own)
        layers = own_layers if "layers" in own else global_layers
        count = _synthetic_layers(spec) if spec["source"] == "synthetic" else None
        if layers and count is not None and layers[-1] >= count:
            keys = ("models", slug, "select", "layers") if "layers" in own else ("select", "layers")
            fail(origins, keys, f"config key {dotted(keys)} names layer {layers[-1]}, but model {slug} has "
                 f"{count} layers (0-{count - 1})", f"keep the layers of {slug} within 0-{count - 1}",
                 also=[("select", "layers")])
    _check_layers(origins, ("headmerge", "layers"), config["headmerge"].get("layers"))
    _check_layers(origins, ("headmerge", "plot_layers"), config["headmerge"].get("plot_layers"))


def _check_embedding(emb, origins):
    """k-means needs k_min <= k_max, a sampled row per cluster, and more silhouette rows than clusters."""
    if emb["k_min"] > emb["k_max"]:
        fail(origins, ("embedding", "k_min"), f"config key embedding.k_min ({emb['k_min']}) is above "
             f"embedding.k_max ({emb['k_max']})", "make k_min <= k_max", also=[("embedding", "k_max")])
    if emb["k_max"] > emb["sample"]:
        fail(origins, ("embedding", "k_max"), f"config key embedding.k_max ({emb['k_max']}) is above "
             f"embedding.sample ({emb['sample']}): k-means needs a row per cluster",
             "lower k_max or raise sample", also=[("embedding", "sample")])
    if emb["k_max"] >= emb["silhouette_sample"]:
        fail(origins, ("embedding", "k_max"), f"config key embedding.k_max ({emb['k_max']}) is not below "
             f"embedding.silhouette_sample ({emb['silhouette_sample']}): silhouette needs more rows than clusters",
             "lower k_max or raise silhouette_sample", also=[("embedding", "silhouette_sample")])


def _check_quantization(quant, origins):
    """A custom preset sets its rule; the alpha bands need ascending thresholds and one format more."""
    if missing := missing_rule_keys(quant):
        fail(origins, ("quantization", missing[0]), f"config key quantization.preset is custom "
             f"but quantization.{', quantization.'.join(missing)} not set",
             "set metric, direction, alpha_thresholds and formats, or choose preset alpha_pruning or "
             "original_script", also=[("quantization", "preset")])
    resolve_quantization(quant)
    thresholds, formats = quant["alpha_thresholds"], quant["formats"]
    if len(formats) != len(thresholds) + 1:
        fail(origins, ("quantization", "formats"), f"config key quantization.formats has {len(formats)} entries "
             f"for {len(thresholds)} alpha_thresholds; the bands need exactly one more format than thresholds",
             f"give {len(thresholds) + 1} formats for these {len(thresholds)} thresholds, most bits first",
             also=[("quantization", "alpha_thresholds")])
    for i in range(1, len(thresholds)):
        if not thresholds[i] > thresholds[i - 1]:
            fail(origins, ("quantization", "alpha_thresholds", i), f"config key quantization.alpha_thresholds "
                 f"must ascend strictly, but {thresholds[i]} follows {thresholds[i - 1]}",
                 f"sort them: {sorted(set(thresholds))}", also=[("quantization", "alpha_thresholds")])


def _check_alpha_range(findings, origins):
    """The findings' normal alpha band [low, high] runs upward."""
    low, high = findings["alpha_range"]
    if not low < high:
        fail(origins, ("report", "findings", "alpha_range"), f"config key report.findings.alpha_range is "
             f"[{low}, {high}]: its low end must be below its high end", "give [low, high], e.g. [2, 6]")


def check_cross_keys(config: dict, origins: Origins):
    """The rules across keys, in this order; the first broken one raises."""
    models = config["models"]
    for slug, spec in models.items():
        _check_model(slug, spec, models, origins)
    check_model_pairs(config, origins)  # base, peft, compare, series (model_pairs.py)
    _check_selections(config, origins)
    _check_embedding(config["embedding"], origins)
    _check_quantization(config["quantization"], origins)
    _check_alpha_range(config["report"]["findings"], origins)
