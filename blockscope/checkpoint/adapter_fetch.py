"""A peft adapter fetched as a model: from a folder or the hub, checked against (or merged into) its
base's checkpoint, with its provenance, into a fresh folder that replaces the target only when complete.
Apart from checkpoint.sources, which it leaves as it is, so that adapter code edits refetch adapters only."""

import hashlib
import json
import os
from pathlib import Path

from blockscope.checkpoint.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_FILES,
    ADAPTER_FOLDER,
    ADAPTER_PICKLE,
    ADAPTER_WEIGHTS,
    fetch_peft,
)
from blockscope.checkpoint.sources import _provenance, hub_cache, sha256
from blockscope.errors import BlockscopeError
from blockscope.io.atomic import atomic_dir, remove_stale_temporaries


def fetch_adapter(model: str, spec: dict, dest, base_checkpoint) -> dict:
    """Materialise adapter `model` (config slice `spec`, source peft) into folder `dest`."""
    for stale in remove_stale_temporaries(dest):
        print(f"[{model}] removed {stale}, the temporary folder of an earlier fetch that was killed")
    with atomic_dir(dest) as tmp:
        snapshot = hub_adapter(model, spec) if "repo_id" in spec else None
        details = fetch_peft(model, spec, tmp, base_checkpoint, snapshot=snapshot)
        details["adapter_sha256"] = sha256(tmp / ADAPTER_FOLDER / ADAPTER_WEIGHTS)  # the bytes installed
        provenance = _provenance("peft", details, *(["huggingface_hub"] if snapshot else []))
        (tmp / "source.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance


def hub_adapter(model: str, spec: dict) -> Path:
    """The cached snapshot of a hub adapter (downloaded into the shared Hugging Face cache only when
    missing; offline, HF_HUB_OFFLINE=1, from the cache alone). Any failure is one line."""
    import huggingface_hub

    repo_id, revision = spec["repo_id"], spec.get("revision", "main")
    token = os.environ.get("HF_TOKEN") or None  # read here, never logged or written
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=ADAPTER_FILES,
                                                      token=token))
    except Exception as exc:  # gated, missing, offline, network: all end the same way for the user
        raise BlockscopeError(f"cannot fetch the adapter at hub repo {repo_id}@{revision} ({type(exc).__name__}; "
                              f"Hugging Face cache {hub_cache()})", model=model,
                              fix=f"check the repo, HF_TOKEN and the network (or run `hf download {repo_id} "
                                  f"--revision {revision}` where it is reachable), or download the adapter and "
                                  "use `path:` (a folder holding it)") from None


def adapter_files(src) -> list:
    """The files of a local peft adapter folder that fetch reads (its pickle too: one saved beside
    or instead of the safetensors changes what fetch says)."""
    return [Path(src) / name for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, ADAPTER_PICKLE)
            if (Path(src) / name).is_file()]


def adapter_fingerprint(spec: dict) -> str:
    """Name, size, mtime and ctime of a local adapter's files as one short hash (the fetch rule's param,
    like sources.local_fingerprint for a local checkpoint), so that a rewritten adapter refetches;
    "missing" for a folder that is not there, "" for a hub adapter (its revision pins it)."""
    if "path" not in spec:
        return ""
    src = Path(spec["path"]).expanduser()
    if not src.is_dir():
        return "missing"
    digest = hashlib.sha256()
    for file in adapter_files(src):
        stat = file.stat()
        digest.update(f"{file.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ctime_ns}\n".encode())
    return digest.hexdigest()[:16]
