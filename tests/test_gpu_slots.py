"""GPU slots on one box, tested without a GPU: real concurrent processes claim from a declared
set of fake slots (BLOCKSCOPE_GPU_SLOTS) under real file locks."""

import os
import queue
import signal
import subprocess
import sys
import threading

import pytest

from blockscope.runtime import gpu_slots
from blockscope.runtime.gpu_slots import LOCKS_ENV, SLOTS_ENV, VISIBLE, claim_gpu, gpu_slot, machine_slots, try_slot

# A GPU job's start: claim a slot, say which, then hold it until stdin closes (or a kill).
JOB = """
import logging, os, sys
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
from blockscope.runtime.gpu_slots import claim_gpu
claim = claim_gpu("cuda")
print("CLAIMED", claim.device, os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
sys.stdin.read()
"""
CLAIMED, WAITING = "CLAIMED", "every GPU slot"


@pytest.fixture
def fake_slots(tmp_path, monkeypatch):
    monkeypatch.setenv(SLOTS_ENV, "0,1,2")
    monkeypatch.setenv(LOCKS_ENV, str(tmp_path / "locks"))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv(VISIBLE, raising=False)
    return tmp_path / "locks"


class Job:
    """A GPU job's process; its stdout lines are read on a thread, so a wait can time out."""

    def __init__(self):
        self.process = subprocess.Popen([sys.executable, "-c", JOB], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=os.environ.copy())
        self.lines = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.process.stdout], daemon=True).start()

    def next_event(self, timeout=60):
        """Its next CLAIMED or waiting line (a job that says neither in time fails the test)."""
        while True:
            line = self.lines.get(timeout=timeout)
            if line.startswith((CLAIMED, WAITING)):
                return line.split()

    def end(self):
        if self.process.poll() is None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


def test_concurrent_jobs_hold_distinct_slots_and_a_killed_jobs_slot_comes_back(fake_slots):
    jobs = [Job() for _ in range(3)]
    try:
        claims = [job.next_event() for job in jobs]
        assert sorted(c[1] for c in claims) == ["cuda:0", "cuda:1", "cuda:2"]  # no two share a GPU
        assert all(c[1] == f"cuda:{c[2]}" for c in claims)  # each sees its own GPU alone
        late = Job()
        jobs.append(late)
        assert late.next_event()[0] != CLAIMED  # more jobs than slots: it waits
        victim = next(job for job, c in zip(jobs, claims) if c[1] == "cuda:1")
        victim.process.send_signal(signal.SIGKILL)
        assert late.next_event()[:2] == [CLAIMED, "cuda:1"]  # the kernel freed the killed job's lock
    finally:
        for job in jobs:
            job.end()


def test_a_block_gives_its_slot_and_the_visible_devices_back(fake_slots, monkeypatch):
    monkeypatch.setenv(SLOTS_ENV, "7")
    with gpu_slot() as claim:
        assert claim.device == "cuda:7" and os.environ[VISIBLE] == "7"
        assert try_slot(fake_slots, "7") is None  # held, also against this process
    assert VISIBLE not in os.environ and not gpu_slots._HELD
    assert try_slot(fake_slots, "7") is not None


def test_a_slurm_job_keeps_the_gpu_slurm_gave_it(fake_slots, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv(VISIBLE, "3")
    claim = claim_gpu("cuda")
    assert claim.device == "cuda:3" and os.environ[VISIBLE] == "3" and claim.lock is None
    assert not fake_slots.exists()


def test_a_cpu_job_claims_nothing(fake_slots):
    assert claim_gpu("cpu").device == "cpu"
    assert VISIBLE not in os.environ and not fake_slots.exists()


def test_the_slots_come_from_the_declared_set_then_the_visible_devices(fake_slots, monkeypatch):
    monkeypatch.setenv(SLOTS_ENV, " 0, 2 ")
    assert machine_slots() == ["0", "2"]
    monkeypatch.delenv(SLOTS_ENV)
    monkeypatch.setenv(VISIBLE, "GPU-abc,GPU-def")
    assert machine_slots() == ["GPU-abc", "GPU-def"]
    monkeypatch.setenv(VISIBLE, "")  # CUDA_VISIBLE_DEVICES="" hides every GPU: nothing to claim
    assert machine_slots() == [] and claim_gpu("cuda").device == "cpu"
