"""A peft adapter fetched as a model: from a folder or the hub, checked against (or merged into) its
base's checkpoint, with its provenance, into a fresh folder that replaces the target only when complete.
Apart from checkpoint.sources so that an edit of the adapter code refetches adapters only."""

import json
from pathlib import Path

from blockscope.checkpoint.adapters import ADAPTER_CONFIG, ADAPTER_FILES, ADAPTER_PICKLE, ADAPTER_WEIGHTS, fetch_peft
from blockscope.checkpoint.sources import _provenance, hub_snapshot, local_fingerprint
from blockscope.io.atomic import atomic_dir, remove_stale_temporaries


def fetch_adapter(model: str, spec: dict, dest, base_checkpoint) -> dict:
    """Materialise adapter `model` (config slice `spec`, source peft) into folder `dest`."""
    for stale in remove_stale_temporaries(dest):
        print(f"[{model}] removed {stale}, the temporary folder of an earlier fetch that was killed")
    with atomic_dir(dest) as tmp:
        snapshot = hub_snapshot(model, spec["repo_id"], spec.get("revision", "main"), ADAPTER_FILES,
                                instead="`path:` (a folder holding the adapter)") if "repo_id" in spec else None
        details = fetch_peft(model, spec, tmp, base_checkpoint, snapshot=snapshot)
        provenance = _provenance("peft", details, *(["huggingface_hub"] if snapshot else []))
        (tmp / "source.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance


def adapter_files(src) -> list:
    """The files of a local peft adapter folder that fetch reads (its pickle too: one saved beside
    or instead of the safetensors changes what fetch says)."""
    return [Path(src) / name for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, ADAPTER_PICKLE)
            if (Path(src) / name).is_file()]


def adapter_fingerprint(spec: dict) -> str:
    """What a local adapter's files look like now (sources.local_fingerprint over adapter_files), so that
    a rewritten adapter refetches; "" for a hub adapter (its revision pins it)."""
    return local_fingerprint(spec["path"], files=adapter_files) if "path" in spec else ""
