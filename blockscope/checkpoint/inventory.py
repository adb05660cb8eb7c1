"""Inventory of a canonical checkpoint from safetensors headers, a checksum of a small sample of
each tensor's bytes, and config.json."""

import json
from pathlib import Path

import pandas as pd

from blockscope.checkpoint.block_types import block_type, is_conv1d, layer_index, unit_of
from blockscope.errors import BlockscopeError
from blockscope.io.safetensors_file import checkpoint_files, file_checksums, origin, read_header
from blockscope.layout import EMBED, INVENTORY_COLUMNS, LM_HEAD, all_units, unit_order

# config.json spellings across families, first present wins.
DIM_KEYS = {
    "layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "hidden": ("hidden_size", "n_embd", "d_model", "dim"),
    "heads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "kv_heads": ("num_key_value_heads", "n_head_kv", "num_kv_heads", "multi_query_group_num"),
    "ffn": ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size", "hidden_dim"),
    "head_dim": ("head_dim", "attention_head_size"),
    "vocab": ("vocab_size", "n_vocab", "padded_vocab_size"),
}
REQUIRED_DIMS = ("layers", "hidden", "heads")


def _first(config: dict, keys):
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return None


def config_file(folder) -> Path:
    """The config.json to name in a message about a checkpoint's config: the user's file for a
    `local` source (the canonical folder holds a copy; source.json says where it came from)."""
    return Path(origin(Path(folder) / "config.json")[0])


def read_config(folder, model=None) -> dict:
    path = Path(folder) / "config.json"
    shown, fix = origin(path)  # a local source's errors name the user's config.json
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise BlockscopeError("config.json is missing", model=model, path=shown,
                              fix="put the model's transformers config.json beside its *.safetensors") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BlockscopeError(f"config.json is not valid JSON ({exc})", model=model, path=shown, fix=fix) from None
    if not isinstance(config, dict):
        raise BlockscopeError(f"config.json holds a JSON {type(config).__name__}, not an object", model=model,
                              path=shown, fix=fix)
    # Multimodal wrappers keep the language model's fields in text_config.
    text = config.get("text_config")
    if isinstance(text, dict) and _first(config, DIM_KEYS["layers"]) is None:
        config = {**config, **text}
    return config


def model_dims(config: dict, inventory: pd.DataFrame, model=None, path=None) -> dict:
    """layers, hidden, ffn, heads, kv_heads, head_dim, vocab, tied embeddings, units."""
    dims = {name: _first(config, keys) for name, keys in DIM_KEYS.items()}
    missing = [name for name in REQUIRED_DIMS if dims[name] is None]
    if missing:
        wanted = ", ".join(f"{n} ({' or '.join(DIM_KEYS[n])})" for n in missing)
        raise BlockscopeError(f"config.json lacks {wanted}", model=model, path=path,
                              fix="use the model's original transformers config.json")
    if dims["kv_heads"] is None:
        dims["kv_heads"] = dims["heads"]
    if dims["head_dim"] is None:
        dims["head_dim"] = dims["hidden"] // dims["heads"]
    if dims["ffn"] is None and config.get("model_type") in ("gpt2", "gpt_bigcode"):
        dims["ffn"] = 4 * dims["hidden"]
    has_head = (inventory["unit"] == LM_HEAD).any()
    tied = config.get("tie_word_embeddings")
    dims["tied_embeddings"] = bool(tied) if tied is not None else not has_head
    if has_head:  # an output head in the checkpoint is untied whatever the config says
        dims["tied_embeddings"] = False
    dims["warnings"] = [note for note in [tied_head_disagreement(config, inventory)] if note]
    dims["model_type"] = config.get("model_type", "unknown")
    dims["architectures"] = config.get("architectures") or []
    dims["num_experts"] = _first(config, ("num_local_experts", "num_experts", "n_routed_experts"))
    dims["units"] = all_units(dims["layers"], present=inventory["unit"])
    return dims


def _largest_matrix(inventory: pd.DataFrame, unit: str):
    """The inventory row of the largest 2-D tensor of `unit`, or None."""
    rows = inventory[(inventory["unit"] == unit) & (inventory["shape"].map(len) == 2)]
    return rows.loc[rows["nbytes"].idxmax()] if len(rows) else None


def tied_head_disagreement(config: dict, inventory: pd.DataFrame):
    """The sentence for a config.json that says the output head is the embedding
    (tie_word_embeddings: true) while the checkpoint stores an lm_head tensor, else None.

    The stored tensors win: they are what is analysed, and transformers too keeps a stored head
    that differs from the embedding. Equal checksums (same shape and dtype) mark a stored copy."""
    head = _largest_matrix(inventory, LM_HEAD)
    if config.get("tie_word_embeddings") is not True or head is None:
        return None
    embed = _largest_matrix(inventory, EMBED)
    relation = ""
    if embed is not None and all(isinstance(row.get("checksum"), str) for row in (head, embed)):
        same = (head["checksum"], head["dtype"], list(head["shape"])) == \
            (embed["checksum"], embed["dtype"], list(embed["shape"]))
        relation = (f" (the same bytes as the embedding {embed['param_name']}, by the inventory's checksums)" if same
                    else f" (not a copy of the embedding {embed['param_name']}: transformers, too, keeps such a head "
                         "untied)")
    return (f"config.json sets tie_word_embeddings: true, but the checkpoint stores its own output head "
            f"{head['param_name']}{relation}; blockscope analyses the tensors as stored: the head is analysed as "
            "unit lm_head and model.json says tied_embeddings: false")


def model_identity(source: dict) -> dict:
    """source, model_id and revision of a checkpoint, as the anchors' exports name them."""
    model_id = {"hf": source.get("repo_id"), "local": source.get("path"), "gguf": source.get("file"),
                "synthetic": f"synthetic:{source.get('like') or source.get('model_type')}:seed{source.get('seed')}"}
    revision = source.get("commit") or source.get("sha256") or source.get("revision") or ""
    return {"source": source["source"], "model_id": model_id.get(source["source"], ""), "revision": revision}


def build_inventory(folder, model=None, source_dtypes: dict | None = None) -> pd.DataFrame:
    """One row per tensor of every *.safetensors file in folder; reads the headers and, for each
    tensor's checksum, at most 64 KiB of its bytes."""
    folder = Path(folder)
    files = checkpoint_files(folder)
    if not files:
        raise BlockscopeError("no *.safetensors file in the checkpoint", model=model, path=folder,
                              fix="check the model's source; blockscope reads safetensors only")
    model_type = read_config(folder, model).get("model_type", "")
    source_dtypes = source_dtypes or {}
    rows = []
    for path in files:
        tensors = read_header(path, model=model)
        checksums = file_checksums(path, tensors)  # a 64 KiB sample per tensor, for extraction to check
        rows += [inventory_row(info.name, list(info.shape), info.dtype, source_dtypes.get(info.name, info.dtype),
                               info.nbytes, info.file, model_type, checksums[info.name])
                 for info in tensors.values()]
    return inventory_frame(rows)


def inventory_row(name, shape, dtype, source_dtype, nbytes, file, model_type, checksum=None) -> dict:
    """One tensor's inventory row: its unit, layer and block type from its name; checksum: its
    sample_checksum (None where no bytes exist, as in a plan from a config alone)."""
    return {"param_name": name, "unit": unit_of(name), "layer_index": layer_index(name),
            "block_type": block_type(name), "shape": list(shape), "dtype": dtype, "source_dtype": source_dtype,
            "nbytes": nbytes, "file": file,
            "layout": "in_out" if is_conv1d(name, model_type) and len(shape) == 2 else "out_in",
            "checksum": checksum}


def inventory_frame(rows: list) -> pd.DataFrame:
    """The inventory table of inventory_row dicts, in unit order."""
    frame = pd.DataFrame(rows, columns=INVENTORY_COLUMNS)
    frame["layer_index"] = frame["layer_index"].astype("Int64")
    return frame.sort_values(["unit", "param_name"], key=_unit_sort_key).reset_index(drop=True)


def _unit_sort_key(column):
    if column.name == "unit":
        return column.map(lambda u: unit_order(u))
    return column


def unit_table(inventory: pd.DataFrame) -> pd.DataFrame:
    """Per-unit summary for the log: tensors, dtypes, bytes, largest shape."""
    grouped = inventory.groupby("unit", sort=False)
    table = pd.DataFrame({
        "tensors": grouped.size(),
        "matrices": grouped["shape"].apply(lambda s: sum(len(x) >= 2 for x in s)),
        "dtypes": grouped["dtype"].apply(lambda s: ",".join(sorted(set(s)))),
        "MiB": grouped["nbytes"].sum() / 2**20,
        "largest": grouped.apply(lambda g: "x".join(map(str, g.loc[g["nbytes"].idxmax(), "shape"])),
                                 include_groups=False),
    })
    return table.loc[sorted(table.index, key=unit_order)]
