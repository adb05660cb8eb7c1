"""A machine's throughput, measured once and cached in
~/.cache/blockscope/throughput-<host>-<backend>[-<device>].json, keyed by throughput.machine_key:
a second call reads the file, a change of machine or build measures again."""

import json
import os
import socket
from dataclasses import asdict
from pathlib import Path

from blockscope.io.atomic import write_json
from blockscope.planning.calibration import calibrate
from blockscope.planning.throughput import Throughput, machine_key


def cache_path(backend: str, device: str | None = None) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "blockscope"
    suffix = f"-{device}" if device else ""
    return root / f"throughput-{socket.gethostname()}-{backend}{suffix}.json"


def throughput(backend: str = "cpu", device: str | None = None, refresh: bool = False) -> Throughput:
    """The machine's throughput for `backend`: from the cache when it was measured for this
    machine (key), else calibrated now and cached (atomically: concurrent jobs never read half).
    cuda builds on the host's cpu throughput (itself cached)."""
    path = cache_path(backend, device)
    key = machine_key(backend, device)
    if not refresh and path.exists():
        try:
            cached = Throughput(**json.loads(path.read_text()))
            if cached.key == key:
                return cached
        except (TypeError, ValueError):
            pass  # an older or damaged cache: measure again
    host = throughput("cpu") if backend == "cuda" else None
    measured = calibrate(backend, device, host)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(asdict(measured), path)
    return measured
