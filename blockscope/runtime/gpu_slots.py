"""One GPU per running job on a box with several: `--resources gpu=4` on a 4-GPU machine runs
four GPU jobs at once, and nothing else would stop all four from computing on cuda:0.

A GPU job claims a free slot (one of the GPUs the machine shows) under a file lock, sets
CUDA_VISIBLE_DEVICES to it before torch loads, and holds the lock for its lifetime. The lock
is an flock on a file per slot: the kernel drops it when the process ends, however it ends
(a SIGKILLed job's slot comes back at once). When every slot is held, a job waits for one
(it never shares a GPU); so `--resources gpu=N` with N above the GPU count adds no parallelism.

Slots: BLOCKSCOPE_GPU_SLOTS="0,1,2,3" when set (tests, or a subset of the GPUs), else the
entries of CUDA_VISIBLE_DEVICES when set, else the GPUs nvidia-smi lists. Lock files live in
BLOCKSCOPE_GPU_LOCKS, else a per-user folder in the temp dir, so that two runs of one user on
one box share the slots. Inside a SLURM job the allocation already names the GPU: its
CUDA_VISIBLE_DEVICES is kept and no slot is claimed.
"""

import contextlib
import fcntl
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from blockscope.runtime.device import nvidia_gpus

log = logging.getLogger(__name__)
SLOTS_ENV = "BLOCKSCOPE_GPU_SLOTS"
LOCKS_ENV = "BLOCKSCOPE_GPU_LOCKS"
VISIBLE = "CUDA_VISIBLE_DEVICES"
NO_GPU = "cpu"  # the device column of a job that held no GPU


@dataclass(eq=False)
class Claim:
    """The GPU a job computes on. device: provenance for its rows, `cuda:<id>` with the id as the
    machine numbers the GPU (the CUDA_VISIBLE_DEVICES entry), or `cpu` when it held none."""
    device: str = NO_GPU
    slot: str | None = None
    lock: object = field(default=None, repr=False)  # the open lock file; closing it frees the slot
    previous: str | None = field(default=None, repr=False)  # CUDA_VISIBLE_DEVICES before the claim

    def release(self):
        if self.lock is None:
            return
        self.lock.close()
        self.lock = None
        if self.previous is None:
            os.environ.pop(VISIBLE, None)
        else:
            os.environ[VISIBLE] = self.previous


_HELD = []  # claims held for the process's lifetime: a dropped file object would free its lock


def machine_slots() -> list:
    """The GPU ids jobs may claim (see the module docstring for the order of sources)."""
    for source in (SLOTS_ENV, VISIBLE):
        value = os.environ.get(source)
        if value is not None:
            return [slot.strip() for slot in value.split(",") if slot.strip()]
    return [str(index) for index in range(len(nvidia_gpus()))]


def lock_folder() -> Path:
    folder = Path(os.environ.get(LOCKS_ENV) or Path(tempfile.gettempdir()) / f"blockscope-gpu-slots-{os.getuid()}")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def slot_device(slot: str) -> str:
    return f"cuda:{slot}"


def try_slot(folder: Path, slot: str):
    """The slot's lock file, open and flocked by this process; None when another holds it."""
    handle = open(folder / f"slot-{re.sub(r'[^A-Za-z0-9._-]', '_', slot)}.lock", "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def claim_slot(slots: list, folder: Path, poll: float = 0.2) -> Claim:
    """The first free slot, waiting (and saying so once in the log) while every one is held."""
    waiting = False
    while True:
        for slot in slots:
            handle = try_slot(folder, slot)
            if handle is not None:
                claim = Claim(slot_device(slot), slot, handle, os.environ.get(VISIBLE))
                os.environ[VISIBLE] = slot  # before torch loads: it sees this GPU alone, as cuda:0
                log.info("GPU slot %s of %s (CUDA_VISIBLE_DEVICES=%s)", slot, ",".join(slots), slot)
                return claim
        if not waiting:
            log.info("every GPU slot (%s) is held by another job: waiting for one", ",".join(slots))
            waiting = True
        time.sleep(poll)


def claim_gpu(backend: str) -> Claim:
    """Call at a GPU job's start, before anything imports torch: the GPU it computes on, held
    until the process ends. backend: the job's `backend` param; only `cuda` claims a slot."""
    if backend != "cuda":
        return Claim()
    if os.environ.get("SLURM_JOB_ID") and os.environ.get(VISIBLE):
        return Claim(slot_device(os.environ[VISIBLE]))  # SLURM's allocation: keep it
    slots = machine_slots()
    if not slots:
        return Claim()  # no GPU here: torch_device computes on the CPU with a warning
    claim = claim_slot(slots, lock_folder())
    _HELD.append(claim)
    return claim


@contextlib.contextmanager
def gpu_slot(backend: str = "cuda"):
    """claim_gpu for a block: the slot (and CUDA_VISIBLE_DEVICES) are given back at its end."""
    claim = claim_gpu(backend)
    try:
        yield claim
    finally:
        _HELD[:] = [held for held in _HELD if held is not claim]
        claim.release()
