"""The rates a prediction divides by (Throughput), and what a measurement of them is valid for
(machine_key): the CPU model, core count and numpy / scipy / BLAS build."""

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MB = 1e6  # Snakemake's mem_mb and the benchmark files' max_rss are in MB
CALIBRATION_VERSION = 14  # bump when what is measured changes: older caches are measured again
# A permutation's cost per element grows with the matrix, as it outgrows the caches (2-4x from 0.25M to
# 16M elements here): measured at these two sizes (float32 512 x 512, 1 MB, and 2048 x 2048, 16 MB).
PERMUTE_ELEMENTS = (512 * 512, 2048 * 2048)


@dataclass
class Throughput:
    """The rates a prediction divides by. rates: op -> FLOP/s (gemm32, gemm64, qr32, qr64,
    bidiag32, bidiag64, eigh64, eigh64_two_stage (CPU, n >= gram.TWO_STAGE_MIN_N), heads);
    seconds per element of the element statistics (elements_s)
    and of each precision's round trip in the sweep (cast_s: precision -> seconds for the Gram's
    rounded blocks, the one pass the sweep makes; numpy's float16 conversion is ~5x slower than
    the bit-level bf16 one), per squared eigenvalue count (eig2_s); the anatomy's diagnostics
    part's work besides its SVDs (diagnostics_s: permute, seconds per element of a seeded
    permutation at each of PERMUTE_ELEMENTS; powerlaw_fit, per squared eigenvalue count of one
    KS-optimal power-law fit; ks_optimal_fit, per eigenvalue of clip_xmax's pruned one; tpl, per
    truncated power-law fit); io: bytes/s read and written through the tensor Parquet; start_s and
    base_mb: a rule's process start and its resident memory after imports."""
    backend: str
    device: str
    basis: str  # measured | published:<device key>
    rates: dict
    elements_s: float
    cast_s: dict
    eig2_s: float
    diagnostics_s: dict
    read_bps: float
    write_bps: float
    start_s: dict
    base_mb: dict
    key: dict = field(default_factory=dict)
    measured_at: str = ""
    calibration_s: float = 0.0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key(backend: str, device: str | None = None) -> dict:
    """What a cached throughput is valid for: a change of any of these measures again."""
    import scipy

    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    return {"version": CALIBRATION_VERSION, "backend": backend, "device": device or "", "cpu": cpu_model(),
            "cores": os.cpu_count(), "numpy": np.__version__, "scipy": scipy.__version__,
            "blas": f"{blas.get('name', '')} {blas.get('version', '')}"}  # not the thread settings: one thread measured
