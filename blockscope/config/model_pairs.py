"""Config rules for a model against another, where a schema cannot reach: a model's `base`, peft
adapters (source peft), `compare` pairs and `series`; and the pairs the distance jobs run on.

An adapter-only model (source peft, merged false) has no checkpoint of its own weights: only its
deltas against its base. So it may be no base, no compare pair member and no series member.
"""

import re

from blockscope.config.origins import Origins, dotted, fail, nearest, short_repr

SLUG = re.compile(r"[a-z0-9][a-z0-9._-]*")  # the schema's pattern of model slugs (a series name names a folder)


# --- helpers the rules read ---------------------------------------------------------------------

def adapter_only(spec) -> bool:
    """A peft adapter without merged: true: its factors only, no weights (nor anatomy) of its own."""
    return spec.get("source") == "peft" and not spec.get("merged", False)


def compare_pairs(config) -> list[tuple[str, str]]:
    """Every (model, other) pair whose distances are computed, other the reference: the `compare`
    pairs, then each series' consecutive members, the later first; each pair once, in that order."""
    pairs = [(model, other) for model, other in config.get("compare") or []]
    for members in (config.get("series") or {}).values():
        pairs += [(members[i + 1], members[i]) for i in range(len(members) - 1)]
    return list(dict.fromkeys(pairs))


# --- the checks ---------------------------------------------------------------------------------

def _not_a_model(origins, keys, slug, models, fix):
    near = nearest(slug, models, n=1)
    guess = f" (did you mean {near[0]!r}?)" if near else ""
    candidates = [model for model in models if model not in keys]  # never the model the key belongs to
    fail(origins, keys, f"config key {dotted(keys)}: {short_repr(slug)} is not a model in this config{guess}",
         f"{fix} (one of: {', '.join(candidates)})")


def _adapter_has_no_weights(origins, keys, slug, models, role):
    """Refuse an adapter-only model where a model's own weights are needed (`role` says what for)."""
    base = models[slug].get("base")
    instead = f" instead, or set models.{slug}.merged: true" if base else ", or set merged: true"
    fail(origins, keys, f"config key {dotted(keys)}: {slug} is an adapter-only peft model (merged false), with no "
         f"weights of its own to {role}", f"name its base{f' {base}' if base else ''}{instead}",
         also=[("models", slug, "merged")])


def check_adapter_base(config: dict, origins: Origins):
    """Before the schema pass: a peft model without `base`, in one line that says what base is.
    (The schema requires it too, but its message names no fix; a misspelt base is left to the
    schema, whose message names the nearest key.)"""
    models = config.get("models")
    if not isinstance(models, dict):
        return
    for slug, spec in models.items():
        if not isinstance(spec, dict) or spec.get("source") != "peft" or "base" in spec:
            continue
        if any(nearest(key, ["base"]) for key in spec):
            continue
        others = [str(s) for s in models if s != slug]
        fix = f"add base: the slug of the model the adapter was trained on (one of: {', '.join(others)})" \
            if others else "add the model the adapter was trained on to models, and name it in base"
        fail(origins, ("models", slug), f"config key models.{slug}.base is not set: a peft adapter is analysed "
             "against the model it was trained on, and has no weights without it", fix)


def _check_base(slug, base, models, origins):
    keys = ("models", slug, "base")
    if base == slug:
        fail(origins, keys, f"config key {dotted(keys)} names the model itself",
             "name the model it was fine-tuned from (another model slug), or delete base")
    if base not in models:
        _not_a_model(origins, keys, base, models, "name the model it was fine-tuned from")
    if adapter_only(models[base]):
        _adapter_has_no_weights(origins, keys, base, models, "be a base")
    chain = [slug, base]  # a merged adapter needs its base's checkpoint first: no cycle among them
    while models[chain[-1]].get("source") == "peft" and models[chain[-1]].get("base") in models:
        chain.append(models[chain[-1]]["base"])
        if chain[-1] in chain[:-1]:
            fail(origins, keys, f"config key {dotted(keys)}: the base chain {' -> '.join(chain)} is a cycle",
                 "end the chain at a model with weights of its own (not source peft)")


def _check_peft(slug, spec, origins):
    if "path" in spec and "repo_id" in spec:
        fail(origins, ("models", slug), f"config key models.{slug}: a peft model takes either path (a local "
             "folder), or repo_id (a hub repo), not both", "keep path, or repo_id and revision")


def _check_like(slug, like, models, origins):
    """A synthetic model `like` an adapter-only model would copy a config.json that does not exist."""
    if like in models and adapter_only(models[like]):
        _adapter_has_no_weights(origins, ("models", slug, "like"), like, models, "copy the config of")


def _check_members(keys, members, models, origins, role):
    """Every member of a pair or series at key path `keys` is a model with weights of its own, each once."""
    for i, slug in enumerate(members):
        if slug not in models:
            _not_a_model(origins, keys + (i,), slug, models, "name a model slug")
        if adapter_only(models[slug]):
            _adapter_has_no_weights(origins, keys + (i,), slug, models, role)
        if slug in members[:i]:
            first = members.index(slug)
            fail(origins, keys, f"config key {dotted(keys)} lists {slug} twice (at {first} and {i})",
                 "name two different models" if len(members) == 2 else "list each member once, in series order")


def _check_compare(compare, models, origins):
    for i, pair in enumerate(compare):
        _check_members(("compare", i), list(pair), models, origins, "compare")
        if list(pair) in [list(p) for p in compare[:i]]:
            first = [list(p) for p in compare].index(list(pair))
            fail(origins, ("compare", i), f"config key compare.{i}: [{', '.join(pair)}] is listed twice (also "
                 f"compare.{first})", f"delete compare.{i}")


def _slug_like(name: str) -> str:
    """A name made into a slug: the fix a bad series name is offered."""
    return re.sub(r"[^a-z0-9._-]+", "-", str(name).lower()).lstrip("._-") or "series-1"


def _check_series(series, models, origins):
    for name, members in series.items():
        keys = ("series", name)
        if not (isinstance(name, str) and SLUG.fullmatch(name)):
            fail(origins, keys, f"config key series: the name {short_repr(name)} is not a slug (lowercase letters, "
                 "digits, '.', '_', '-'); it names the folder results/summary/series/{name}/",
                 f"rename it, e.g. {_slug_like(name)}" if isinstance(name, str) else f"quote it: '{_slug_like(name)}'")
        _check_members(keys, list(members), models, origins, "be a series member")


def check_model_pairs(config: dict, origins: Origins):
    """The rules of base, peft, compare and series, in this order; the first broken one raises."""
    models = config["models"]
    for slug, spec in models.items():
        if spec["source"] == "peft":
            _check_peft(slug, spec, origins)
        if "base" in spec:
            _check_base(slug, spec["base"], models, origins)
        if spec["source"] == "synthetic" and "like" in spec:
            _check_like(slug, spec["like"], models, origins)
    _check_compare(config["compare"], models, origins)
    _check_series(config["series"], models, origins)
