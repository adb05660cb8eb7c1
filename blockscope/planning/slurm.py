"""A job's SLURM request (runtime in minutes, mem_mb) from its predicted cost."""

import math

from blockscope.planning.pricing import Job

# Floors of a SLURM request: a cluster job also pays what no calibration here sees (a cold shared
# file system, environment activation on the node), and a tiny request buys nothing in the queue.
MIN_RUNTIME_MIN, MIN_MEM_MB = 5, 256


def slurm_request(job: Job, attempt: int = 1, safety: float = 2.0) -> dict:
    """runtime (minutes) and mem_mb for a job: the prediction x safety x the attempt (a retry
    after a timeout or an out-of-memory kill asks for more), at least the floors above."""
    return {"runtime": max(MIN_RUNTIME_MIN, math.ceil(job.seconds * safety * attempt / 60)),
            "mem_mb": max(MIN_MEM_MB, math.ceil(job.mem_mb * safety * attempt))}
