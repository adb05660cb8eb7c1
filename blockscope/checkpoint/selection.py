"""Choose what to analyse: the `select` key of the config, resolved and applied to an inventory.

A selection has three keys, each optional; the top-level `select` applies to every model and a
model's own `select` overrides it key by key:

- include: regexes; a tensor is kept when any of them is found in its parameter name
  (re.search: "q_proj" matches "model.layers.0.self_attn.q_proj.weight"; anchor with ^ and $
  for a whole-name match). Empty or absent keeps every name.
- exclude: regexes; a tensor is dropped when any of them is found in its name (after include).
- layers: transformer blocks to keep, "0-5,20,30-31" or a list of ints. It restricts layer
  units only: embed, lm_head and other are chosen by include / exclude alone (so `layers`
  alone keeps them; add an exclude such as "embed|lm_head|norm" to drop them).

An empty selection selects everything, including units that hold no tensor, exactly as before.
The per-model embedding analysis reads its tensors whatever the selection (embedding_tensors).
"""

import re

from blockscope.errors import BlockscopeError
from blockscope.layout import EMBED, LM_HEAD, all_units, unit_order

KEYS = ("include", "exclude", "layers")
EMBEDDING_BLOCK_TYPES = ("embedding", "output")  # the token embedding and an output head


def parse_layers(spec) -> list | None:
    """Sorted layer indices of "0-5,20,30-31", a list of ints (or a single int); None for None / "".
    ValueError (one line) on anything else."""
    if spec is None or spec == "" or spec == []:
        return None
    if isinstance(spec, bool):
        raise ValueError(f"{spec!r} is not a layer list")
    if isinstance(spec, int):
        spec = [spec]
    layers = set()
    if isinstance(spec, str):
        for part in spec.split(","):
            part = part.strip()
            match = re.fullmatch(r"(\d+)\s*(?:-\s*(\d+))?", part)
            if not match:
                raise ValueError(f"{part!r} in {spec!r} is neither a layer index nor a range a-b")
            first, last = int(match.group(1)), int(match.group(2) or match.group(1))
            if last < first:
                raise ValueError(f"range {part!r} runs backwards")
            layers.update(range(first, last + 1))
    elif isinstance(spec, (list, tuple)):
        for item in spec:
            if isinstance(item, bool) or not isinstance(item, int) or item < 0:
                raise ValueError(f"{item!r} in {list(spec)!r} is not a layer index (an integer >= 0)")
            layers.add(item)
    else:
        raise ValueError(f"{spec!r} is not a layer list: give \"0-5,20\" or a list of integers")
    return sorted(layers)


def pattern_error(pattern) -> str | None:
    """Why `pattern` is not a usable regex, None when it is."""
    try:
        re.compile(pattern)
    except (re.error, TypeError) as exc:
        return str(exc)
    return None


def resolve(global_select: dict | None, model_select: dict | None) -> dict:
    """The model's selection: its own keys over the global ones, layers parsed to a list.
    Always the three keys: {"include": [...], "exclude": [...], "layers": [...] | None}."""
    merged = {**(global_select or {}), **(model_select or {})}
    return {"include": list(merged.get("include") or []), "exclude": list(merged.get("exclude") or []),
            "layers": parse_layers(merged.get("layers"))}


def is_everything(selection: dict) -> bool:
    return not selection["include"] and not selection["exclude"] and selection["layers"] is None


def name_selected(name: str, layer_index, selection: dict) -> bool:
    """Whether a tensor (its parameter name and block index, None outside the blocks) is selected."""
    if selection["include"] and not any(re.search(p, name) for p in selection["include"]):
        return False
    if any(re.search(p, name) for p in selection["exclude"]):
        return False
    layers, layer_index = selection["layers"], _index(layer_index)
    if layers is not None and layer_index is not None:
        return layer_index in layers
    return True


def _index(value):
    """A block index as int; None for None, NaN and NA (tensors outside the blocks)."""
    try:
        return None if value is None or value != value else int(value)
    except TypeError:  # pandas.NA
        return None


def selected_params(inventory, selection: dict) -> dict:
    """unit -> sorted selected parameter names, for units with at least one (inventory rows:
    param_name, unit, layer_index)."""
    chosen = {}
    for name, unit, layer in zip(inventory["param_name"], inventory["unit"], inventory["layer_index"]):
        if name_selected(name, layer, selection):
            chosen.setdefault(unit, []).append(name)
    return {unit: sorted(names) for unit, names in sorted(chosen.items(), key=lambda kv: unit_order(kv[0]))}


def check_layers(chosen, layers: int, key: str = "select.layers", model: str = None, path=None):
    """BlockscopeError when `chosen` (indices or None) names a block the model (of `layers`
    blocks) does not have; `key` is the config key named in the message."""
    outside = [i for i in chosen or () if i >= layers]
    if outside:
        raise BlockscopeError(f"config key {key} names layer {outside[0]}, but the model has {layers} layers "
                              f"(0-{layers - 1})", model=model, path=path,
                              fix=f"keep {key} within 0-{layers - 1}")


def unselected_attention(attention_names, selected) -> list:
    """The attention projections of a layer the selection leaves out (heads need all of them)."""
    return sorted(set(attention_names) - set(selected))


def selected_units(inventory, selection: dict, layers: int, model: str = None, path=None) -> dict:
    """unit -> selected parameter names. Every unit of the model (empty ones too: the full DAG)
    when the selection is empty; else the units with a selected tensor. BlockscopeError when a
    selection keeps no tensor, or no weight matrix (check_keeps_a_matrix). inventory rows:
    param_name, unit, layer_index, shape."""
    check_layers(selection["layers"], layers, "select.layers", model, path)
    chosen = selected_params(inventory, selection)
    if is_everything(selection):
        return {unit: chosen.get(unit, []) for unit in all_units(layers, present=set(inventory["unit"]))}
    if not chosen:
        raise BlockscopeError(f"select matches no tensor of the model ({describe(selection)})", model=model,
                              path=path, fix="widen select (include, exclude, layers) for this model")
    check_keeps_a_matrix(inventory, chosen, selection, model, path)
    return chosen


def check_keeps_a_matrix(inventory, chosen: dict, selection: dict, model: str = None, path=None):
    """BlockscopeError when the selected tensors (chosen: unit -> names) are all 1-D parameters
    (norm weights, biases) or scalars: they have statistics but no spectrum, so the model would
    have no matrix to measure, compare or report on. The fix names a matrix of the model."""
    shapes = dict(zip(inventory["param_name"], inventory["shape"]))
    names = [name for unit_names in chosen.values() for name in unit_names]
    if any(len(shapes[name]) >= 2 for name in names):
        return
    kinds = "1-D parameters" if all(len(shapes[name]) == 1 for name in names) else "1-D parameters and scalars"
    raise BlockscopeError(
        f"select keeps only {kinds} ({len(names)}, e.g. {names[0]}): norm weights and biases have no spectrum, "
        f"so no weight matrix is left to analyse ({describe(selection)})", model=model, path=path,
        fix=f"widen select to keep a weight matrix ({example_matrix(inventory, selection)}), "
            "or remove select for this model")


def example_matrix(inventory, selection: dict) -> str:
    """A 2-D tensor of the model to name in a fix: of a selected layer (else any block) when there is one."""
    matrices = [(name, _index(layer)) for name, layer, shape in
                zip(inventory["param_name"], inventory["layer_index"], inventory["shape"]) if len(shape) == 2]
    in_layers = [name for name, layer in matrices if layer is not None and
                 (selection["layers"] is None or layer in selection["layers"])]
    found = in_layers or [name for name, _ in matrices]
    return f"a 2-D tensor such as {found[0]}" if found else "a 2-D tensor"


def describe(selection: dict) -> str:
    parts = [f"{key}={selection[key]}" for key in KEYS if selection[key]]
    return ", ".join(parts) or "everything"


def first_middle_last(layers) -> list:
    """The default layers to draw: first, middle and last of `layers` (sorted, each once)."""
    layers = sorted(layers)
    return sorted({layers[0], layers[len(layers) // 2], layers[-1]}) if layers else []


def chosen_layers(requested, available) -> list:
    """The requested layers that exist (sorted); with none requested, first / middle / last."""
    available = sorted(set(available))
    return sorted(set(requested) & set(available)) if requested else first_middle_last(available)


def embedding_tensors(inventory) -> dict:
    """unit -> the tensor the per-model embedding analysis reads there, whatever the selection:
    the largest 2-D tensor of block type embedding or output, in embed (the token embedding) and
    in lm_head (an untied output head). A unit without one is left out, so that nothing asks for
    its tensors: an encoder has no lm_head, a tied head no tensor of its own. inventory rows:
    param_name, unit, block_type, shape, nbytes."""
    found = {}
    for unit in (EMBED, LM_HEAD):
        rows = inventory[(inventory["unit"] == unit) & inventory["block_type"].isin(EMBEDDING_BLOCK_TYPES)
                         & (inventory["shape"].map(len) == 2)]
        if len(rows):
            found[unit] = rows.loc[rows["nbytes"].idxmax(), "param_name"]
    return found
