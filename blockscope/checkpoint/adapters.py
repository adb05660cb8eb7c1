"""peft LoRA adapters: their updates dW = scale * B @ A read from the saved factors, and fetched
beside (or merged into) the base's checkpoint.

What peft 0.21 saves (peft/utils/save_and_load.py, peft/tuners/lora/layer.py): adapter_config.json
and adapter_model.safetensors, whose keys are the wrapped model's, prefixed `base_model.model.`,
with the adapter's name stripped: `<module>.lora_A.weight` (r x in) and `<module>.lora_B.weight`
(out x r) for a linear layer, dW = scaling * B @ A, transposed when fan_in_fan_out (GPT-2's Conv1D
stores its weight in x out); `<module>.lora_embedding_A` (r x vocab) and `lora_embedding_B`
(dim x r) for an embedding, dW = scaling * (B @ A)^T. scaling = lora_alpha / r, or
lora_alpha / sqrt(r) with use_rslora, r and alpha per module from rank_pattern / alpha_pattern.

Every other key is a tensor the adapter stores whole (modules_to_save copies, biases trained with
`bias: all | lora_only`, the embedding peft saves beside an embedding LoRA as `base_layer.weight`):
adapter_replacements returns them; adapter_factors leaves them out; a merged checkpoint holds them.

Numbers are read with blockscope.io (no torch, no peft) and returned in float64.
"""

import difflib
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np

from blockscope.errors import BlockscopeError
from blockscope.io.dtypes import NUMPY_TO_SAFETENSORS
from blockscope.io.safetensors_file import checkpoint_files, read_header, tensor_view

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"
ADAPTER_FILES = [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
# A fetched peft model keeps its adapter files in this subfolder of its checkpoint folder, so that
# the merged checkpoint's *.safetensors (merged: true) are the model's weights only.
ADAPTER_FOLDER = "adapter"
PEFT_PREFIX = "base_model.model."
# LoraConfig keys whose update is not scale * B @ A (peft marks most `is_lora_variant`), or that
# change more than the targeted weights: any of them set refuses the adapter.
NOT_PLAIN_LORA = {
    "use_dora": "DoRA (a learned magnitude rescales W + dW per column)",
    "velora_config": "VeLoRA", "alora_invocation_tokens": "activated LoRA (applied after invocation tokens only)",
    "use_qalora": "QA-LoRA (pooled input groups)", "monteclora_config": "MonteCLoRA", "use_bdlora": "BD-LoRA",
    "arrow_config": "Arrow routing", "kasa_config": "KaSA", "lora_bias": "a trained LoRA bias (lora_bias)",
    "target_parameters": "LoRA on bare parameters (target_parameters)", "layer_replication": "layer replication",
    "trainable_token_indices": "trainable tokens (trainable_token_indices)",
}
# init_lora_weights that rewrite the base weights when the adapter is made (PiSSA, CorDA, OLoRA and
# LoRA-GA keep W - B0 A0, LoftQ a quantised W): such factors update that residual, not the base.
RESIDUAL_INITS = ("pissa", "corda", "olora", "lora_ga", "loftq")
MERGE_CHUNK_BYTES = 256 * 2**20  # float64 rows of a matrix merged at a time


class LoraFactors(NamedTuple):
    """dW = scale * B @ A in the base weight's stored orientation: B (rows x r), A (r x cols), float64;
    dtype: the coarser of the two factors' stored formats (safetensors name), whose rounding the
    numerical rank of dW must not count."""
    B: np.ndarray
    A: np.ndarray
    scale: float
    dtype: str = "F64"


# Floating formats from the coarsest: the stored format of a pair of factors is the coarser one's.
FORMAT_ORDER = ("float8_e4m3fn", "bfloat16", "float16", "float32", "float64")


def stored_format(*arrays) -> str:
    """The safetensors name of the coarsest stored floating format among `arrays`."""
    names = [array.dtype.name for array in arrays]
    coarsest = min(names, key=lambda name: FORMAT_ORDER.index(name) if name in FORMAT_ORDER else len(FORMAT_ORDER))
    return NUMPY_TO_SAFETENSORS.get(coarsest, coarsest)


def lora_scale(lora_alpha: float, r: int, use_rslora: bool) -> float:
    """peft's scaling of B @ A: lora_alpha / r, or rsLoRA's lora_alpha / sqrt(r)."""
    return lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r


def scaling_rule(config: dict) -> str:
    return "lora_alpha / sqrt(r) (rsLoRA)" if config.get("use_rslora") else "lora_alpha / r"


def pattern_value(patterns: dict, module: str, default):
    """A module's value in a rank_pattern / alpha_pattern: the first key that matches the end of
    its name at a dot boundary (peft.utils.other.get_pattern_key), else the default."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def adapter_folder(folder) -> Path:
    """The folder holding adapter_config.json: a fetched checkpoint's ADAPTER_FOLDER, or `folder`."""
    folder = Path(folder)
    return folder / ADAPTER_FOLDER if (folder / ADAPTER_FOLDER / ADAPTER_CONFIG).is_file() else folder


def _merge_fix(model) -> str:
    slot = f"models.{model}" if model else "the model"
    return (f"merge it with peft (merge_and_unload, then save_pretrained) and analyse the merged checkpoint as "
            f"`source: local` with `base:` in {slot}")


def read_adapter_config(folder, model=None) -> dict:
    """adapter_config.json of a plain LoRA adapter saved as safetensors; anything else is one line."""
    folder = adapter_folder(folder)
    config_path, weights = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not weights.is_file() and (folder / ADAPTER_PICKLE).is_file():
        raise BlockscopeError(f"the adapter is a pickle ({ADAPTER_PICKLE}), which blockscope never loads", model=model,
                              path=folder / ADAPTER_PICKLE,
                              fix="load it with peft and save_pretrained(..., safe_serialization=True), or convert it "
                                  f"to {ADAPTER_WEIGHTS}")
    if not folder.is_dir():
        raise BlockscopeError("the adapter folder does not exist", model=model, path=folder,
                              fix=f"set models.{model}.path to a folder with {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")
    if not config_path.is_file():
        raise BlockscopeError(f"no {ADAPTER_CONFIG} in the adapter folder", model=model, path=folder,
                              fix=f"save the adapter with peft's save_pretrained, which writes {ADAPTER_CONFIG} "
                                  "beside its weights")
    if not weights.is_file():
        raise BlockscopeError(f"no {ADAPTER_WEIGHTS} in the adapter folder (blockscope reads safetensors only, "
                              f"never a pickled {ADAPTER_PICKLE})", model=model, path=folder,
                              fix="save the adapter with peft's save_pretrained(..., safe_serialization=True)")
    try:
        config = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BlockscopeError(f"not valid JSON ({exc})", model=model, path=config_path,
                              fix="save the adapter again with peft's save_pretrained") from None
    if not isinstance(config, dict):
        raise BlockscopeError(f"holds a JSON {type(config).__name__}, not an object", model=model, path=config_path,
                              fix="save the adapter again with peft's save_pretrained")
    kind = config.get("peft_type")
    if kind != "LORA":
        raise BlockscopeError(f"peft_type is {kind!r}: blockscope reads LoRA adapters only", model=model,
                              path=config_path, fix=_merge_fix(model))
    variant = next((what for key, what in NOT_PLAIN_LORA.items() if config.get(key)), None)
    if variant:
        raise BlockscopeError(f"the adapter uses {variant}, whose update is not scale * B @ A", model=model,
                              path=config_path, fix=_merge_fix(model))
    init = str(config.get("init_lora_weights")).lower()
    if init.startswith(RESIDUAL_INITS):
        raise BlockscopeError(f"the adapter was initialised with init_lora_weights {init!r}, which rewrites the base "
                              "weights: its factors update that residual, not the base", model=model, path=config_path,
                              fix="save it with peft's save_pretrained(..., path_initial_model_for_weight_conversion="
                                  "<its initial adapter>), which converts it to a LoRA of the original base")
    missing = [key for key in ("r", "lora_alpha") if not isinstance(config.get(key), (int, float))]
    if missing:
        raise BlockscopeError(f"lacks {' and '.join(missing)}", model=model, path=config_path,
                              fix="save the adapter again with peft's save_pretrained")
    return config


def _read_tensors(path, model) -> dict:
    """Every tensor of a (small) safetensors file, in its stored dtype."""
    return {name: np.array(tensor_view(path, info)) for name, info in read_header(path, model).items()}


def _split_keys(tensors: dict, path, model) -> tuple:
    """({module: {"A": .., "B": .., "embedding": bool}}, {param name: dense tensor}), model names
    relative to the wrapped model (the `base_model.model.` prefix and `base_layer.` removed)."""
    factors, dense = {}, {}
    for key, value in tensors.items():
        name = key.removeprefix(PEFT_PREFIX)
        if match := re.fullmatch(r"(.+)\.lora_(A|B)\.weight", name):
            factors.setdefault(match.group(1), {"embedding": False})[match.group(2)] = value
        elif match := re.fullmatch(r"(.+)\.lora_embedding_(A|B)", name):
            factors.setdefault(match.group(1), {"embedding": True})[match.group(2)] = value
        elif re.search(r"\.lora_\w+", name) or "lora_magnitude_vector" in name:
            raise BlockscopeError(f"unknown LoRA tensor {key!r} (not lora_A / lora_B / lora_embedding_A / "
                                  "lora_embedding_B)", model=model, path=path, fix=_merge_fix(model))
        else:
            dense[name.replace(".base_layer.", ".")] = value
    for module, parts in factors.items():
        if "A" not in parts or "B" not in parts:
            missing = "lora_A" if "A" not in parts else "lora_B"
            raise BlockscopeError(f"module {module} has no {missing} factor", model=model, path=path,
                                  fix="save the adapter again with peft's save_pretrained")
    return factors, dense


def _nearest_fix(config, model) -> str:
    trained_on = config.get("base_model_name_or_path")
    named = f" (its {ADAPTER_CONFIG} names {trained_on})" if trained_on else ""
    return f"set models.{model}.base to the model the adapter was trained on{named}"


def _base_prefix(names: list, base_shapes: dict) -> str:
    """'' when the adapter names the base's tensors as they are; else the one prefix (`model.`)
    under which it names them all (an adapter trained on the bare LlamaModel of a LlamaForCausalLM)."""
    first = names[0]
    candidates = [""] + sorted({n[:-len(first)] for n in base_shapes if n.endswith("." + first)})
    best = max(candidates, key=lambda p: sum(p + n in base_shapes for n in names))
    return best if all(best + n in base_shapes for n in names) else ""


def _not_in_base(name, base_shapes, config, path, model):
    nearest = difflib.get_close_matches(name, list(base_shapes), n=3, cutoff=0.4)
    near = f" (nearest: {', '.join(nearest)})" if nearest else ""
    return BlockscopeError(f"the adapter changes {name}, which the base checkpoint does not hold{near}", model=model,
                           path=path, fix=_nearest_fix(config, model))


def _dims(shape) -> str:
    return " x ".join(map(str, shape))


def _normalised(module, parts, config, path, model) -> LoraFactors:
    """One module's factors as LoraFactors in the base weight's stored orientation."""
    A, B = parts["A"], parts["B"]
    if A.ndim != 2 or B.ndim != 2:
        raise BlockscopeError(f"module {module} has LoRA factors of {A.ndim} and {B.ndim} dimensions (a convolution): "
                              "blockscope reads LoRA on matrices only", model=model, path=path, fix=_merge_fix(model))
    r = int(pattern_value(config.get("rank_pattern"), module, config["r"]))
    alpha = float(pattern_value(config.get("alpha_pattern"), module, config["lora_alpha"]))
    if A.shape[0] != r or B.shape[1] != r:
        raise BlockscopeError(f"module {module} has factors lora_A {_dims(A.shape)} and lora_B {_dims(B.shape)}, not "
                              f"of the rank r = {r} its {ADAPTER_CONFIG} gives it", model=model, path=path,
                              fix="save the adapter again with peft's save_pretrained")
    dtype = stored_format(A, B)
    A, B = A.astype(np.float64), B.astype(np.float64)
    # peft: dW = scaling * (B @ A)^T for an embedding and a fan_in_fan_out layer, i.e. (A^T) @ (B^T)
    transposed = parts["embedding"] or bool(config.get("fan_in_fan_out"))
    left, right = (A.T, B.T) if transposed else (B, A)
    return LoraFactors(np.ascontiguousarray(left), np.ascontiguousarray(right),
                       lora_scale(alpha, r, bool(config.get("use_rslora"))), dtype)


def read_adapter(folder, base_shapes: dict, model=None) -> tuple:
    """(config, {base param name: LoraFactors}, {base param name: dense tensor as stored}), every
    name and shape checked against `base_shapes` (base param name -> shape)."""
    folder = adapter_folder(folder)
    config = read_adapter_config(folder, model)
    path = folder / ADAPTER_WEIGHTS
    base_shapes = {name: tuple(int(d) for d in shape) for name, shape in base_shapes.items()}
    modules, dense = _split_keys(_read_tensors(path, model), path, model)
    if not modules:
        raise BlockscopeError("the adapter holds no LoRA factors", model=model, path=path,
                              fix="save the adapter again with peft's save_pretrained")
    names = [f"{module}.weight" for module in sorted(modules)] + sorted(dense)
    prefix = _base_prefix(names, base_shapes)
    for name in names:
        if prefix + name not in base_shapes:
            raise _not_in_base(name, base_shapes, config, path, model)
    factors = {}
    for module in sorted(modules):
        name = prefix + module + ".weight"
        lora = _normalised(module, modules[module], config, path, model)
        shape = (lora.B.shape[0], lora.A.shape[1])
        if shape != base_shapes[name]:
            raise BlockscopeError(f"the update of {name} is {_dims(shape)}, the base's matrix is "
                                  f"{_dims(base_shapes[name])}", model=model, path=path,
                                  fix=_nearest_fix(config, model))
        factors[name] = lora
    replacements = {}
    for name, value in dense.items():
        if tuple(value.shape) != base_shapes[prefix + name]:
            raise BlockscopeError(f"the adapter stores {prefix + name} whole as {_dims(value.shape)}, the base's is "
                                  f"{_dims(base_shapes[prefix + name])}", model=model, path=path,
                                  fix=_nearest_fix(config, model))
        replacements[prefix + name] = value
    return config, factors, replacements


def adapter_factors(folder, base_shapes: dict, model=None) -> dict:
    """{base param name: LoraFactors(B, A, scale)}, dW = scale * B @ A of the base's stored shape.
    folder: the adapter's folder or a fetched peft checkpoint; base_shapes: base param name -> shape.
    Tensors the adapter stores whole are left out (adapter_replacements)."""
    return read_adapter(folder, base_shapes, model)[1]


def adapter_replacements(folder, base_shapes: dict, model=None) -> dict:
    """{base param name: tensor (stored dtype)} the adapter stores whole (modules_to_save, trained
    biases, a targeted embedding's saved copy): the merged model holds it (+ dW where it has factors)."""
    return read_adapter(folder, base_shapes, model)[2]


# --- fetch: beside, or merged into, the base's checkpoint ------------------------------------

def base_shapes_of(checkpoint, model=None) -> dict:
    """param name -> shape of every tensor of a canonical checkpoint, from its safetensors headers."""
    return {name: info.shape for path in checkpoint_files(checkpoint)
            for name, info in read_header(path, model).items()}


def _changed(replacement, path, info) -> bool:
    """Whether a tensor the adapter stores whole holds other values than the base's."""
    base = tensor_view(path, info)
    if replacement.dtype == base.dtype:
        return not np.array_equal(replacement.view(np.uint8), base.view(np.uint8))
    return not np.array_equal(np.asarray(replacement, np.float64), np.asarray(base, np.float64))


def merged_tensor(base: np.ndarray, lora: LoraFactors | None, replacement=None) -> np.ndarray:
    """W_base (or the adapter's replacement) + scale * B @ A, summed in float64 and stored in the
    base's dtype, a band of rows at a time (MERGE_CHUNK_BYTES)."""
    start = base if replacement is None else replacement
    if lora is None:
        return np.asarray(start).astype(base.dtype)
    out = np.empty(base.shape, base.dtype)
    step = max(1, MERGE_CHUNK_BYTES // (8 * max(1, base.shape[1])))
    for row in range(0, base.shape[0], step):
        band = np.asarray(start[row:row + step], dtype=np.float64) + lora.scale * (lora.B[row:row + step] @ lora.A)
        out[row:row + step] = band.astype(base.dtype)
    return out


def write_merged_file(base_file, target, factors: dict, replacements: dict, model=None) -> list:
    """A copy of one base safetensors file with the adapter's tensors merged in (the others' bytes
    copied as they are); the names it changed."""
    header = read_header(base_file, model)
    order = sorted(header.values(), key=lambda info: info.begin)
    entries, offset = {"__metadata__": {"format": "pt"}}, 0
    for info in order:
        entries[info.name] = {"dtype": info.dtype, "shape": list(info.shape),
                              "data_offsets": [offset, offset + info.nbytes]}
        offset += info.nbytes
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the safetensors library writes it
    changed = []
    with open(base_file, "rb") as src, open(target, "wb") as out:
        out.write(len(text).to_bytes(8, "little") + text)
        for info in order:
            if info.name in factors or info.name in replacements:
                value = merged_tensor(tensor_view(base_file, info), factors.get(info.name), replacements.get(info.name))
                out.write(np.ascontiguousarray(value).tobytes())
                changed.append(info.name)
            else:
                src.seek(info.begin)
                remaining = info.nbytes
                while remaining:
                    chunk = src.read(min(remaining, 2**24))
                    out.write(chunk)
                    remaining -= len(chunk)
    return changed


def write_merged(base_checkpoint, dest, factors: dict, replacements: dict, model=None) -> list:
    """The merged checkpoint in `dest`: the base's files (config, tokenizer, index) copied, each
    safetensors file rewritten with W_base + dW in its stored dtype; the tensors changed."""
    base_checkpoint, dest = Path(base_checkpoint), Path(dest)
    for path in sorted(base_checkpoint.iterdir()):
        if path.suffix == ".safetensors" or path.name in ("source.json", ADAPTER_FOLDER):
            continue
        if path.is_dir():
            shutil.copytree(path, dest / path.name)
        else:
            shutil.copy2(path, dest / path.name)  # follows a link into the Hugging Face cache
    changed = []
    for path in checkpoint_files(base_checkpoint):
        changed += write_merged_file(path, dest / path.name, factors, replacements, model)
    return changed


def _install_adapter(src: Path, dest: Path, linked: bool):
    """The adapter files into dest/ADAPTER_FOLDER: copied from a local folder, linked from the cache."""
    (dest / ADAPTER_FOLDER).mkdir()
    for name in ADAPTER_FILES:
        if linked:
            os.symlink((src / name).absolute(), dest / ADAPTER_FOLDER / name)
        else:
            shutil.copy2(src / name, dest / ADAPTER_FOLDER / name)


def fetch_peft(model, spec, dest, base_checkpoint, snapshot=None) -> dict:
    """An adapter (spec `path`, or `repo_id` + `revision`) into dest/ADAPTER_FOLDER, checked against the
    base's checkpoint (names, shapes); merged: true also writes base + dW as dest's checkpoint.
    snapshot: the hub snapshot folder of a `repo_id` (sources.hub_snapshot resolves it, with its
    one-line errors); downloaded here when not given. Returns the provenance details."""
    dest = Path(dest)
    if base_checkpoint is None or not Path(base_checkpoint).is_dir():
        raise BlockscopeError("a peft adapter needs its base's checkpoint", model=model, path=base_checkpoint,
                              fix=f"set models.{model}.base to the model the adapter was trained on")
    if "repo_id" in spec:
        if snapshot is None:
            import huggingface_hub

            snapshot = huggingface_hub.snapshot_download(spec["repo_id"], revision=spec.get("revision", "main"),
                                                         allow_patterns=ADAPTER_FILES)
        src = Path(snapshot)
        where = {"repo_id": spec["repo_id"], "revision": spec.get("revision", "main"), "commit": src.name,
                 "snapshot": str(src.absolute())}
    else:
        src = Path(spec["path"]).expanduser()
        where = {"path": str(src.resolve())}
    config, factors, replacements = read_adapter(src, base_shapes_of(base_checkpoint, model), model)
    _install_adapter(src, dest, linked="repo_id" in spec)
    details = {**where, "base": spec.get("base"),
               "files": {name: (src / name).stat().st_size for name in ADAPTER_FILES},
               "peft_version": config.get("peft_version"), "trained_on": config.get("base_model_name_or_path"),
               "r": config["r"], "lora_alpha": config["lora_alpha"], "scaling": scaling_rule(config),
               "rank_pattern": config.get("rank_pattern") or {}, "alpha_pattern": config.get("alpha_pattern") or {},
               "fan_in_fan_out": bool(config.get("fan_in_fan_out")),
               "target_modules": sorted(factors), "ranks": {name: int(f.A.shape[0]) for name, f in factors.items()},
               "scales": {name: f.scale for name, f in factors.items()},
               "replaced": _replaced_status(base_checkpoint, replacements, model), "merged": bool(spec.get("merged"))}
    replaced = [name for name, status in details["replaced"].items() if status == "changed"]
    if replaced and not spec.get("merged"):
        print(f"[{model}] the adapter also stores {len(replaced)} tensors whole ({', '.join(replaced[:3])}"
              f"{', ...' if len(replaced) > 3 else ''}: modules_to_save or trained biases), not LoRA updates; "
              "merged: true analyses the model that holds them")
    if spec.get("merged"):
        details["merged_tensors"] = write_merged(base_checkpoint, dest, factors, replacements, model)
    return details


def _replaced_status(base_checkpoint, replacements: dict, model) -> dict:
    """Each tensor the adapter stores whole: "changed" or "identical to base"."""
    status = {}
    for path in checkpoint_files(base_checkpoint):
        for name, info in read_header(path, model).items():
            if name in replacements:
                status[name] = "changed" if _changed(replacements[name], path, info) else "identical to base"
    return status
