"""Where the maths runs. The workflow decides once, when it builds the DAG (backend_for), and
passes the answer to every job as a param; a job only checks that the GPU it was promised is
there (torch_device) and otherwise computes on the CPU with a warning."""

import logging
import shutil
import subprocess

log = logging.getLogger(__name__)


def nvidia_gpus() -> list:
    """nvidia-smi's line for each NVIDIA GPU on this machine (importing torch would slow every
    DAG build); none without nvidia-smi or a working driver."""
    if not shutil.which("nvidia-smi"):
        return []
    probe = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return [line for line in probe.stdout.splitlines() if line.startswith("GPU")] if probe.returncode == 0 else []


def gpu_visible() -> bool:
    """An NVIDIA GPU on this machine, asked of nvidia-smi."""
    return bool(nvidia_gpus())


def backend_for(device: str) -> str:
    """cuda or cpu from the config's device: auto is cuda where a GPU is visible. On a cluster
    the submitting host may have none: set device: cuda there so that jobs ask for one."""
    if device == "auto":
        return "cuda" if gpu_visible() else "cpu"
    return device


def torch_device(backend: str) -> str:
    """The torch device a job computes on: cuda when promised and present, else cpu."""
    if backend != "cuda":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    log.warning("backend cuda was asked for but torch sees no GPU here; computing on the CPU")
    return "cpu"
