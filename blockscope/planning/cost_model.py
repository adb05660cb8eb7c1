"""What a run will cost, from the inventory alone: predicted seconds and peak memory per job.

Every per-unit job is priced in CPU seconds (its wall time on an idle core) as

    seconds = job start (interpreter + the script's imports, measured)
            + tensor bytes / I/O rate (measured through blockscope.io.tensors)
            + sum over its matrices of flops / rate of the operation (rates measured once per
              machine, or a device's published peak x a stated efficiency)
            + per-element and per-eigenvalue work (the metrics, the rounding casts; measured)

and its memory as the process after imports plus the arrays the job holds at its peak. The flop
count of each operation is one short function (docs/metrics.md, "Cost model", gives each with
its source); `predict_unit(rows, rule, throughput, method)` prices one job, `plan_model` a model.

Throughput is measured on the machine in a few seconds (small GEMM / gesdd / eigh sizes, the
real metric, cast, heads and Parquet code, one process start per rule), each timing the fewest
CPU seconds of a few repeats (other processes on a shared machine do not count, and noise only
slows a repeat down), and cached in
~/.cache/blockscope/throughput-<host>-<backend>.json, keyed by the CPU model, core count and the
numpy / BLAS build: a second call reads the file. For backend cuda where no GPU is visible, the
device's published throughput (DEVICES) stands in for the measured rates.
"""

import argparse
import ast
import json
import math
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from blockscope.io.atomic import write_json
from blockscope.io.dtypes import PRECISION_TO_SAFETENSORS, numpy_dtype
from blockscope.analysis.spectra import TWO_STAGE_MIN_N, gram_block_rows, svd_method_for, two_stage_eigenvalues
from blockscope.layout import PLAN_JOB_COLUMNS, unit_order

METHODS = ("gesdd", "gram")
BACKENDS = ("cpu", "cuda")
PER_UNIT_RULES = ("extract", "anatomy")
GPU_RULES = ("anatomy",)  # the per-unit rules that compute with torch on CUDA
PARTS = ("spectra", "precision", "heads")  # rule anatomy's parts, priced one by one
MB = 1e6  # Snakemake's mem_mb and the benchmark files' max_rss are in MB
CALIBRATION_VERSION = 11  # bump when what is measured changes: older caches are measured again
SCRIPTS = Path(__file__).resolve().parents[2] / "workflow_scripts"

# --- flop counts (docs/metrics.md, "Cost model") --------------------------------------------------


def gesdd_flops(rows: int, cols: int) -> tuple:
    """(qr, bidiagonal) flops of LAPACK gesdd, singular values only, m x n with m >= n.

    Tall matrices (m >= 11 n / 6, LAPACK's MNTHR) are QR-factored first (2mn^2 - 2n^3/3,
    blocked, BLAS-3) and the n x n R is bidiagonalised (8n^3/3); others are bidiagonalised
    directly (4mn^2 - 4n^3/3, half BLAS-2). The bidiagonal singular values cost O(n^2).
    Golub & Van Loan, Matrix Computations (4th ed.), 5.2 and 8.6; LAPACK dgesdd."""
    m, n = max(rows, cols), min(rows, cols)
    if m * 6 >= n * 11:
        return 2 * m * n**2 - 2 * n**3 / 3, 8 * n**3 / 3
    return 0.0, 4 * m * n**2 - 4 * n**3 / 3


def gram_flops(rows: int, cols: int) -> float:
    """The n x n Gram matrix A^T A (n = the smaller side) as one GEMM: 2 m n^2."""
    m, n = max(rows, cols), min(rows, cols)
    return 2 * m * n**2


def eigh_flops(n: int) -> float:
    """Eigenvalues only of a symmetric n x n matrix: the tridiagonal reduction, 4 n^3 / 3
    (the tridiagonal eigenvalues cost O(n^2)). Golub & Van Loan, 8.3.1."""
    return 4 * n**3 / 3


def heads_flops(heads: int, kv_heads: int, head_dim: int, hidden: int) -> float:
    """One layer's QK and OV kernels through FactoredMatrix: per query head two d x d Gram
    products of D x d factors (2 D d^2 each) and the d x d product right @ left (2 D d^2); per
    key/value head two more Gram products; then ~30 d^3 of Cholesky, SVD and eigvals per head."""
    d, D = head_dim, hidden
    return heads * (6 * D * d**2 + 30 * d**3) + kv_heads * 4 * D * d**2


# --- throughput: measured, or published --------------------------------------------------------

# Published peaks (dense, no sparsity), FLOP/s and bytes/s. Sources: NVIDIA datasheets (H100
# Tensor Core GPU datasheet, SXM5 / PCIe columns; H200 datasheet; A100 datasheet, 80 GB SXM).
DEVICES = {
    "h100-sxm": {"name": "NVIDIA H100 SXM5", "fp64": 34e12, "fp64_tensor": 67e12, "fp32": 67e12, "hbm": 3.35e12},
    "h100-pcie": {"name": "NVIDIA H100 PCIe", "fp64": 26e12, "fp64_tensor": 51e12, "fp32": 51e12, "hbm": 2.0e12},
    "h200": {"name": "NVIDIA H200 SXM", "fp64": 34e12, "fp64_tensor": 67e12, "fp32": 67e12, "hbm": 4.8e12},
    "a100-sxm": {"name": "NVIDIA A100 SXM 80GB", "fp64": 9.7e12, "fp64_tensor": 19.5e12, "fp32": 19.5e12,
                 "hbm": 2.04e12},
}
# The share of peak each operation reaches: assumptions, not measurements (no GPU was at hand).
# GEMM runs near peak; dense SVD and symmetric eigen reductions are half BLAS-2, bound by memory
# traffic: cuSOLVER's syevd reaches ~10 % of the fp64 peak on large n (MAGMA / cuSOLVER
# benchmarks), torch's svdvals (gesvdj / gesvd) about 1 % of the fp32 peak.
GPU_EFFICIENCY = {"gemm": 0.6, "svd": 0.01, "eigh": 0.1}
HOST_TO_DEVICE = 25e9  # bytes/s over PCIe gen5 x16, about half its nominal 64 GB/s (assumption)
CUDA_START_EXTRA_S = 1.0  # CUDA context creation on top of the measured torch import (assumption)


@dataclass
class Throughput:
    """The rates a prediction divides by. rates: op -> FLOP/s (gemm32, gemm64, qr32, qr64,
    bidiag32, bidiag64, eigh64, eigh64_two_stage (CPU, n >= spectra.TWO_STAGE_MIN_N), heads);
    seconds per element of the element statistics (elements_s)
    and of each precision's round trip in the sweep (cast_s: precision -> seconds for the Gram's
    rounded blocks, the one pass the sweep makes; numpy's float16 conversion is ~5x slower than
    the bit-level bf16 one), per squared eigenvalue count (eig2_s); io: bytes/s read and written
    through the tensor Parquet; start_s
    and base_mb: a rule's process start and its resident memory after imports."""
    backend: str
    device: str
    basis: str  # measured | published:<device key>
    rates: dict
    elements_s: float
    cast_s: dict
    eig2_s: float
    read_bps: float
    write_bps: float
    start_s: dict
    base_mb: dict
    key: dict = field(default_factory=dict)
    measured_at: str = ""
    calibration_s: float = 0.0


def best_seconds(function, repeats: int = 3, clock=time.process_time) -> float:
    """The fewest CPU seconds (all threads) of a few runs: CPU time, not wall, so that other
    processes on a shared machine do not count, and the best run, since noise only adds. A GPU
    is timed by the wall clock (clock=time.perf_counter)."""
    times = []
    for _ in range(repeats):
        started = clock()
        function()
        times.append(clock() - started)
    return max(min(times), 1e-6)


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
            "blas": f"{blas.get('name', '')} {blas.get('version', '')}"}  # not the thread settings: one thread is measured


def cache_path(backend: str, device: str | None = None) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "blockscope"
    suffix = f"-{device}" if device else ""
    return root / f"throughput-{socket.gethostname()}-{backend}{suffix}.json"


def _script_imports(rule: str) -> list:
    """The modules a workflow script imports (what its job pays for at start)."""
    tree = ast.parse((SCRIPTS / f"{rule}.py").read_text())
    modules = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.append(node.module)
    return modules


# What Snakemake sets for a one-thread job (snakemake/shell.py): OpenBLAS then starts no thread
# pool at import, which halves numpy's import (0.19 -> 0.08 CPU s here).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def job_environment(threads: int = 1) -> dict:
    """The environment a Snakemake job of `threads` threads runs in."""
    return {**os.environ, **dict.fromkeys(THREAD_VARIABLES, str(threads))}


def job_start(modules: list, repeats: int = 2) -> tuple:
    """(CPU seconds, peak MB) of a fresh interpreter that imports what a Snakemake script job
    imports (Snakemake's script preamble, then the modules)."""
    code = "import snakemake.script, snakemake.io\n" + "".join(f"import {m}\n" for m in modules) + \
        "print(open('/proc/self/status').read())"
    best, peak = math.inf, 0.0
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env=job_environment())
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        best = min(best, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        # VmHWM: the peak resident set of this process image (ru_maxrss would carry the parent's over exec)
        hwm = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("VmHWM:")]
        peak = float(hwm[0]) * 1024 / MB if hwm else 0.0
    return best, peak


def _measure_linear_algebra() -> dict:
    """FLOP/s of each operation at a few small sizes (about 2 s unloaded)."""
    import scipy.linalg

    rng = np.random.default_rng(0)
    rates = {}
    for bits, dtype in ((32, np.float32), (64, np.float64)):
        square = rng.standard_normal((640, 640)).astype(dtype)
        seconds = best_seconds(lambda: scipy.linalg.svdvals(square.copy(), check_finite=False, overwrite_a=True))
        rates[f"bidiag{bits}"] = gesdd_flops(640, 640)[1] / seconds
        tall = rng.standard_normal((4096, 256)).astype(dtype)
        seconds = best_seconds(lambda: scipy.linalg.svdvals(tall.copy(), check_finite=False, overwrite_a=True))
        qr, bidiag = gesdd_flops(*tall.shape)
        rates[f"qr{bits}"] = qr / max(seconds - bidiag / rates[f"bidiag{bits}"], seconds / 10)
        wide = rng.standard_normal((4096, 1024)).astype(dtype)
        rates[f"gemm{bits}"] = gram_flops(*wide.shape) / best_seconds(lambda: wide.T @ wide)
    symmetric = rng.standard_normal((640, 640))
    symmetric = symmetric + symmetric.T
    rates["eigh64"] = eigh_flops(640) / best_seconds(
        lambda: scipy.linalg.eigh(symmetric, eigvals_only=True, check_finite=False, driver="evr"))
    rates["eigh64_two_stage"] = _two_stage_rate(rng) or rates["eigh64"]
    return rates


def _two_stage_rate(rng) -> float | None:
    """FLOP/s of the Gram path's eigenvalues from spectra.TWO_STAGE_MIN_N up (LAPACK's two-stage
    reduction, spectra.two_stage_eigenvalues), timed once at that size (~3 s here); None where
    numpy's LAPACK has no two-stage solver (then syevd runs at every size)."""
    solver = two_stage_eigenvalues()
    if solver is None:
        return None
    symmetric = rng.standard_normal((TWO_STAGE_MIN_N, TWO_STAGE_MIN_N))
    symmetric += symmetric.T
    return eigh_flops(TWO_STAGE_MIN_N) / best_seconds(lambda: solver(symmetric), repeats=1)


def _measure_elementwise() -> dict:
    """Seconds per element of the metrics' element statistics and of each precision's rounding cast, and per
    squared eigenvalue count of the spectral metrics (the KS scan of the power-law fit)."""
    from blockscope.analysis.metrics_row import spectral_metrics
    from blockscope.analysis.matrix_formulas import element_stats, sparsity
    from blockscope.analysis.spectra import RoundTrip

    rng = np.random.default_rng(1)
    matrix = rng.standard_normal((1024, 1024)).astype(np.float32)
    elements = best_seconds(lambda: (element_stats(matrix), sparsity(matrix, 1e-6))) / matrix.size

    def round_trips(precision):  # what the sweep runs: the Gram's rounded blocks (its verdict, 8 rows)
        return [block for _, block in RoundTrip(matrix, precision, np.float32).row_blocks()]

    cast = {precision: best_seconds(lambda: round_trips(precision)) / matrix.size for precision in PRECISION_TO_SAFETENSORS}
    sigma = np.sort(np.abs(rng.standard_normal(768)))[::-1] ** 1.5
    eig2 = best_seconds(lambda: spectral_metrics(sigma, 768, 3072, "F32", 0.1)) / 768**2
    return {"elements_s": elements, "cast_s": cast, "eig2_s": eig2}


def _measure_heads() -> float:
    from blockscope.analysis.heads import AttentionWeights, head_rows

    rng = np.random.default_rng(2)
    heads, kv_heads, d, hidden = 8, 2, 64, 512
    weights = lambda: AttentionWeights(rng.standard_normal((heads * d, hidden)), rng.standard_normal((kv_heads * d, hidden)),
                                       rng.standard_normal((kv_heads * d, hidden)), rng.standard_normal((hidden, heads * d)),
                                       heads, kv_heads, d)
    return heads_flops(heads, kv_heads, d, hidden) / best_seconds(lambda: head_rows(weights()))


def _measure_io() -> tuple:
    """(read, write) bytes/s of random float32 weights through the tensor Parquet (zstd)."""
    from blockscope.io.tensors import iter_unit, write_unit

    array = np.random.default_rng(3).standard_normal((2048, 2048)).astype(np.float32)  # 16 MiB
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "unit.parquet"
        write = best_seconds(lambda: write_unit([("w", "F32", array)], target), 2)
        read = best_seconds(lambda: [a.astype(np.float32) for _, a in iter_unit(target)], 2)
    return array.nbytes / read, array.nbytes / write


def _job_starts(rules, extra=()) -> tuple:
    """Per rule: (CPU seconds, MB) of its job's start, importing `extra` too."""
    measured = {rule: job_start(_script_imports(rule) + list(extra)) for rule in rules}
    return {r: s for r, (s, _) in measured.items()}, {r: mb for r, (_, mb) in measured.items()}


def published_rates(device: str) -> dict:
    """FLOP/s of each operation on a device from its published peaks x GPU_EFFICIENCY."""
    spec, eff = DEVICES[device], GPU_EFFICIENCY
    return {"gemm32": spec["fp32"] * eff["gemm"], "gemm64": spec["fp64_tensor"] * eff["gemm"],
            "qr32": spec["fp32"] * eff["svd"], "qr64": spec["fp64"] * eff["svd"],
            "bidiag32": spec["fp32"] * eff["svd"], "bidiag64": spec["fp64"] * eff["svd"],
            "eigh64": spec["fp64"] * eff["eigh"]}


def gpu_name() -> str | None:
    """The visible GPU's name from nvidia-smi, None without one."""
    from blockscope.runtime.device import gpu_visible

    if not gpu_visible():
        return None
    return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                          text=True).stdout.splitlines()[0].strip()


def _measure_cuda_rates() -> dict:
    """FLOP/s of the torch operations on the visible GPU (the CUDA path's own calls)."""
    import torch

    rates = {}
    for bits, dtype in ((32, torch.float32), (64, torch.float64)):
        tall = torch.randn(8192, 2048, dtype=dtype, device="cuda")
        square = torch.randn(2048, 2048, dtype=dtype, device="cuda")

        torch.linalg.svdvals(square)  # warm-up: cuSOLVER handles, kernels
        rates[f"bidiag{bits}"] = gesdd_flops(2048, 2048)[1] / _wall(lambda: torch.linalg.svdvals(square))
        rates[f"qr{bits}"] = rates[f"bidiag{bits}"]
        rates[f"gemm{bits}"] = gram_flops(8192, 2048) / _wall(lambda: tall.T @ tall)
    symmetric = torch.randn(2048, 2048, dtype=torch.float64, device="cuda")
    symmetric = symmetric + symmetric.T
    torch.linalg.eigvalsh(symmetric)
    rates["eigh64"] = eigh_flops(2048) / _wall(lambda: torch.linalg.eigvalsh(symmetric))
    return rates


def _wall(function) -> float:
    """Best wall seconds of a GPU operation, synchronised."""
    import torch

    return best_seconds(lambda: (function(), torch.cuda.synchronize()), clock=time.perf_counter)


def calibrate(backend: str = "cpu", device: str | None = None) -> Throughput:
    """Measure this machine: CPU rates, job starts, I/O. cuda: the host's (cached) CPU
    throughput, the torch import of the GPU rules' jobs, and the GPU's own rates where one is
    visible, else `device`'s published ones (default h100-sxm)."""
    started = time.perf_counter()
    if backend == "cuda":
        return _on_gpu(throughput("cpu"), device, started)
    import scipy.linalg  # noqa: F401  (loaded first: threadpool_limits limits the BLAS loaded by then)
    from threadpoolctl import threadpool_limits

    from blockscope.analysis import heads, metrics_row as matrix_metrics, spectra
    from blockscope.io import tensors  # noqa: F401

    with threadpool_limits(1):  # one core per job; idle BLAS threads would spin and bill CPU time
        rates = {**_measure_linear_algebra(), "heads": _measure_heads()}
        read, write = _measure_io()
        elementwise = _measure_elementwise()
    starts, base = _job_starts(PER_UNIT_RULES)
    return Throughput(backend=backend, device=cpu_model(), basis="measured", rates=rates, **elementwise,
                      read_bps=read, write_bps=write, start_s=starts, base_mb=base, key=machine_key(backend),
                      measured_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), calibration_s=time.perf_counter() - started)


def _on_gpu(host: Throughput, device: str | None, started: float) -> Throughput:
    """The host's throughput with the GPU rules' linear algebra and job starts on the GPU."""
    visible = gpu_name() if device is None else None
    if visible:
        rates, name, basis = _measure_cuda_rates(), visible, "measured"
    else:
        device = device or "h100-sxm"
        rates, name, basis = published_rates(device), DEVICES[device]["name"], f"published:{device}"
    rates["eigh64_two_stage"] = rates["eigh64"]  # torch's eigvalsh at every size: no CPU rate carries over
    starts, base = _job_starts(GPU_RULES, extra=["torch"])
    starts = {rule: seconds + CUDA_START_EXTRA_S for rule, seconds in starts.items()}
    return replace(host, backend="cuda", device=name, basis=basis, rates={**host.rates, **rates},
                   start_s={**host.start_s, **starts}, base_mb={**host.base_mb, **base},
                   key=machine_key("cuda", device), measured_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   calibration_s=time.perf_counter() - started)


def throughput(backend: str = "cpu", device: str | None = None, refresh: bool = False) -> Throughput:
    """The machine's throughput for `backend`: from the cache when it was measured for this
    machine (key), else calibrated now and cached (atomically: concurrent jobs never read half)."""
    path = cache_path(backend, device)
    key = machine_key(backend, device)
    if not refresh and path.exists():
        try:
            cached = Throughput(**json.loads(path.read_text()))
            if cached.key == key:
                return cached
        except (TypeError, ValueError):
            pass  # an older or damaged cache: measure again
    measured = calibrate(backend, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(asdict(measured), path)
    return measured


# --- one job's cost --------------------------------------------------------------------------

@dataclass
class Job:
    seconds: float
    mem_mb: float
    flops: float = 0.0


def tensor_matrices(info) -> list:
    """(rows, cols) of the matrices in one inventory row: a 2-D floating tensor, one per expert
    of a 3-D expert stack; none for 1-D and refused tensors (they cost nothing here)."""
    from blockscope.analysis.spectra import not_a_matrix

    shape = list(info.shape)
    try:
        refused = len(shape) < 2 or not_a_matrix(info.dtype, shape, info.block_type) is not None
    except ValueError:  # a dtype blockscope cannot read: the job reports it, the plan prices nothing
        refused = True
    if refused:
        return []
    return [tuple(shape[-2:])] * (shape[0] if len(shape) == 3 else 1)


def matrix_shapes(rows: pd.DataFrame) -> list:
    """(rows, cols) of every matrix the spectra part analyses."""
    return [shape for info in rows.itertuples() for shape in tensor_matrices(info)]


def svd_seconds(rows: int, cols: int, bits: int, method: str, rates: dict) -> float:
    """Seconds of the singular values of one matrix by `method`, at `bits` (32 or 64)."""
    if method == "gram":  # the Gram product and its eigenvalues run in float64
        n = min(rows, cols)
        eigh = rates.get("eigh64_two_stage", rates["eigh64"]) if n >= TWO_STAGE_MIN_N else rates["eigh64"]
        return gram_flops(rows, cols) / rates["gemm64"] + eigh_flops(n) / eigh
    qr, bidiag = gesdd_flops(rows, cols)
    return qr / rates[f"qr{bits}"] + bidiag / rates[f"bidiag{bits}"]


def chosen_method(rows: int, cols: int, bits: int, method: str) -> str:
    """The method the spectra part will run: auto decides as spectra.svd_method_for does."""
    return svd_method_for(method, (rows, cols), np.float64 if bits == 64 else np.float32)


def svd_workspace_bytes(rows: int, cols: int, bits: int, method: str) -> float:
    """The arrays one SVD holds beyond its input: gesdd two copies (the caller's, which LAPACK
    needs column-major and copies again) and its work arrays; gram the float64 block buffer,
    the n x n Gram matrix and eigh's copy of it."""
    m, n = max(rows, cols), min(rows, cols)
    if method == "gram":
        return 8 * (min(m, gram_block_rows(n)) * n + 2 * n * n)
    return bits // 8 * (2 * m * n + n * n + 8 * n)


def _bytes(rows: pd.DataFrame) -> float:
    return float(rows["nbytes"].sum())


def _bits(dtype) -> int:
    """Bits of a compute dtype (numpy spelling or dtype)."""
    return np.dtype(dtype).itemsize * 8


def _svd_cost(shapes, bits, method, t: Throughput) -> tuple:
    """(seconds, flops, peak workspace bytes) of the SVDs of a list of shapes."""
    seconds = flops = workspace = 0.0
    for rows, cols in shapes:
        chosen = chosen_method(rows, cols, bits, method)
        seconds += svd_seconds(rows, cols, bits, chosen, t.rates)
        flops += gram_flops(rows, cols) + eigh_flops(min(rows, cols)) if chosen == "gram" else sum(gesdd_flops(rows, cols))
        workspace = max(workspace, svd_workspace_bytes(rows, cols, bits, chosen))
    if t.backend == "cuda":  # matrices travel to the device (the CPU fallback is not priced)
        seconds += sum(r * c * bits / 8 for r, c in shapes) / HOST_TO_DEVICE
    return seconds, flops, workspace


def _elements(shapes) -> float:
    return float(sum(r * c for r, c in shapes))


def _metrics_seconds(shapes, t: Throughput) -> float:
    """Element statistics of every matrix plus the spectral metrics (power-law KS scan ~ n^2)."""
    return _elements(shapes) * t.elements_s + sum(min(r, c) ** 2 for r, c in shapes) * t.eig2_s


def predict_extract(rows, t: Throughput, **_) -> Job:
    # the memory-mapped checkpoint pages it touches count as resident, plus a chunk in flight
    chunks = 2 * 8 * 2**20  # tensors.CHUNK_BYTES, read and written
    return Job(t.start_s["extract"] + _bytes(rows) / t.write_bps, t.base_mb["extract"] + (_bytes(rows) + chunks) / MB)


# A part's Job: the seconds of its work and the MB of the arrays it holds, without the process
# start and base memory, which rule anatomy pays once for its three parts.


def predict_spectra(rows, t: Throughput, method="gesdd", compute_dtype="float32", **_) -> Job:
    shapes, bits = matrix_shapes(rows), _bits(compute_dtype)
    svd, flops, workspace = _svd_cost(shapes, bits, method, t)
    seconds = _bytes(rows) / t.read_bps + svd + _metrics_seconds(shapes, t)
    held = _bytes(rows) + _elements(shapes) * bits / 8  # the stored unit as read, and its matrices upcast
    return Job(seconds, (held + workspace) / MB, flops)


def computed_precisions(dtype: str, precisions, compute_dtype="float32") -> list:
    """The precisions whose SVD a tensor stored in `dtype` needs: not those whose round trip
    leaves it unchanged in the compute dtype (the spectra part's values are reused)."""
    from blockscope.analysis.spectra import round_trip_is_exact, svd_dtype

    compute = np.dtype(compute_dtype)
    return [p for p in precisions if not (svd_dtype(p, compute) == compute and round_trip_is_exact(dtype, p))]


def predict_precision(rows, t: Throughput, method="gesdd", compute_dtype="float32", precisions=("fp32",), **_) -> Job:
    """The sweep: the rounding cast and the SVDs of every precision a tensor's stored dtype does not
    hold exactly (the others reuse the spectra unread and uncast). It shares the spectra part's
    read of the unit, unless a precision needs the matrices wider than compute_dtype (fp64)."""
    from blockscope.analysis.spectra import svd_dtype

    read_bits = max(_bits(svd_dtype(p, compute_dtype)) for p in precisions) if precisions else 32
    seconds = _bytes(rows) / t.read_bps if read_bits != _bits(compute_dtype) else 0.0
    flops, workspace, held = 0.0, 0.0, 0.0
    for precision in precisions:
        bits = _bits(svd_dtype(precision, compute_dtype))
        todo = [shape for info in rows.itertuples() if computed_precisions(info.dtype, [precision], compute_dtype)
                for shape in tensor_matrices(info)]
        svd, f, w = _svd_cost(todo, bits, method, t)
        seconds += svd + _elements(todo) * t.cast_s[precision]
        # on the CPU a rounded matrix is held only inside its SVD (gesdd's copy, the Gram's blocks:
        # the workspace); torch stacks a precision's rounded matrices for the device
        batch = _elements(todo) * bits / 8 if t.backend != "cpu" else 0.0
        flops, workspace, held = flops + f, max(workspace, w), max(held, batch)
    matrices = _bytes(rows) + _elements(matrix_shapes(rows)) * read_bits / 8  # as read, and upcast
    return Job(seconds, (matrices + held + workspace) / MB, flops)


def predict_heads(rows, t: Throughput, dims=None, **_) -> Job:
    from blockscope.layout import ATTENTION_BLOCK_TYPES

    attention = rows[rows["block_type"].isin(ATTENTION_BLOCK_TYPES)]
    if dims and len(attention) and rows["layer_index"].notna().any():
        flops = heads_flops(dims["heads"], dims["kv_heads"], dims["head_dim"], dims["hidden"])
        # float64 copies of q, k, v, o and of k, v repeated for every query head
        copies = 8 * (2 * _elements(matrix_shapes(attention)) + 2 * dims["heads"] * dims["head_dim"] * dims["hidden"])
        return Job(_bytes(attention) / t.read_bps + flops / t.rates["heads"], copies / MB, flops)
    return Job(0.0, 0.0)


def predict_anatomy(rows, t: Throughput, **options) -> Job:
    """Rule anatomy: one process start, then its parts one after another (the memory of the
    largest part's arrays at a time)."""
    parts = [PREDICT[part](rows, t, **options) for part in PARTS]
    return Job(t.start_s["anatomy"] + sum(p.seconds for p in parts), t.base_mb["anatomy"] + max(p.mem_mb for p in parts),
               sum(p.flops for p in parts))


PREDICT = {"extract": predict_extract, "anatomy": predict_anatomy, "spectra": predict_spectra,
           "precision": predict_precision, "heads": predict_heads}


def predict_unit(rows: pd.DataFrame, rule: str, t: Throughput, method: str = "gesdd", **options) -> Job:
    """Predicted seconds, peak MB and flops of one per-unit job, extract or anatomy (rows: the
    unit's inventory rows, already restricted to what `select` chose), or of one of anatomy's
    PARTS alone (its work and arrays, no process start). options: compute_dtype, precisions, dims."""
    return PREDICT[rule](rows, t, method=method, **options)


# --- a model's plan ----------------------------------------------------------------------------


def plan_model(inventory: pd.DataFrame, dims: dict, t: Throughput, method: str = "gesdd",
               compute_dtype: str = "float32", precisions=("fp32", "fp16", "bf16"), selected: dict | None = None,
               rules=PER_UNIT_RULES) -> pd.DataFrame:
    """One row per (unit, rule): predicted seconds, mem_mb, gflops. selected: unit -> parameter
    names (the workflow's selection); None: every unit whole."""
    rows = []
    units = selected if selected is not None else {u: None for u in inventory["unit"].unique()}
    for unit in sorted(units, key=unit_order):
        part = inventory[inventory["unit"] == unit]
        if units[unit] is not None:
            part = part[part["param_name"].isin(units[unit])]
        for rule in rules:
            job = predict_unit(part, rule, t, method, compute_dtype=compute_dtype, precisions=list(precisions),
                               dims=dims)
            rows.append({"unit": unit, "rule": rule, "seconds": job.seconds, "mem_mb": job.mem_mb,
                         "gflops": job.flops / 1e9})
    return pd.DataFrame(rows, columns=PLAN_JOB_COLUMNS)


def predicted_jobs(inventory_path, dims: dict, selected: dict | None, backend="cpu", device=None, method="auto",
                   compute_dtype="float32", precisions=("fp32",)) -> dict:
    """(unit, rule) -> Job for every per-unit job of a model (the workflow's resource requests)."""
    jobs = plan_model(pd.read_parquet(inventory_path), dims, throughput(backend, device), method, compute_dtype,
                      precisions, selected)
    return {(r.unit, r.rule): Job(r.seconds, r.mem_mb, r.gflops * 1e9) for r in jobs.itertuples()}


def plan_totals(jobs: pd.DataFrame, cores: int = 1) -> dict:
    """Job-seconds per rule and overall, the largest job's memory, and the wall time on `cores`
    (job-seconds / cores, never less than the longest job)."""
    per_rule = jobs.groupby("rule")["seconds"].sum()
    total = float(jobs["seconds"].sum())
    return {"seconds": total, "per_rule_seconds": {r: float(s) for r, s in per_rule.items()},
            "peak_mem_mb": float(jobs["mem_mb"].max()) if len(jobs) else 0.0, "jobs": len(jobs),
            "cores": cores, "wall_s": max(total / max(cores, 1), float(jobs["seconds"].max()) if len(jobs) else 0.0)}


def plan_document(model: str, jobs: pd.DataFrame, t: Throughput, method: str, cores: int = 1) -> dict:
    """plan.json: the jobs, their totals and the throughput they were priced with."""
    return {"model": model, "backend": t.backend, "method": method, "totals": plan_totals(jobs, cores),
            "jobs": jobs.round({"seconds": 3, "mem_mb": 1, "gflops": 3}).to_dict(orient="records"),
            "throughput": asdict(t)}


def total_line(model: str, document: dict) -> str:
    totals = document["totals"]
    rules = ", ".join(f"{r} {s:.0f} s" for r, s in sorted(totals["per_rule_seconds"].items()))
    return (f"[{model}] plan: {totals['jobs']} per-unit jobs, {totals['seconds']:.0f} job-seconds "
            f"(~{hms(totals['wall_s'])} on {totals['cores']} cores), peak {totals['peak_mem_mb']:.0f} MB; "
            f"{rules} ({document['backend']}, {document['method']}, {document['throughput']['device']}, "
            f"{document['throughput']['basis']})")


def hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# --- SLURM requests ----------------------------------------------------------------------------


# Floors of a SLURM request: a cluster job also pays what no calibration here sees (a cold shared
# file system, environment activation on the node), and a tiny request buys nothing in the queue.
MIN_RUNTIME_MIN, MIN_MEM_MB = 5, 256


def slurm_request(job: Job, attempt: int = 1, safety: float = 2.0) -> dict:
    """runtime (minutes) and mem_mb for a job: the prediction x safety x the attempt (a retry
    after a timeout or an out-of-memory kill asks for more), at least the floors above."""
    return {"runtime": max(MIN_RUNTIME_MIN, math.ceil(job.seconds * safety * attempt / 60)),
            "mem_mb": max(MIN_MEM_MB, math.ceil(job.mem_mb * safety * attempt))}


# --- an inventory from a transformers config alone (no weights) --------------------------------


def inventory_from_config(config: dict, model: str = "planned") -> tuple:
    """(inventory, dims) of the checkpoint a transformers config describes, without weights:
    the model is built on torch's meta device (shapes only, no memory) and every parameter
    becomes an inventory row in the config's torch_dtype (float32 when unset)."""
    import torch
    import transformers

    from blockscope.io.dtypes import safetensors_dtype
    from blockscope.checkpoint.inventory import inventory_frame, inventory_row, model_dims

    settings = dict(config)
    config_class = transformers.AutoConfig.for_model(settings.pop("model_type"), **settings)
    with torch.device("meta"):
        network = transformers.AutoModelForCausalLM.from_config(config_class)
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32").replace("torch.", "")
    stored = safetensors_dtype(numpy_dtype(dtype))
    itemsize = numpy_dtype(stored).itemsize
    rows = [inventory_row(name, list(p.shape), stored, stored, itemsize * p.numel(), "model.safetensors",
                          config["model_type"])
            for name, p in network.named_parameters()]  # tied weights appear once, as in a saved checkpoint
    inventory = inventory_frame(rows)
    config = {**config, "architectures": config.get("architectures") or [type(network).__name__]}  # as saved
    return inventory, {"model": model, **model_dims(config, inventory, model=model)}


def _read_inventory(args) -> tuple:
    if args.config:
        return inventory_from_config(json.loads(Path(args.config).read_text()))
    results = Path(args.results)
    dims = json.loads((results / "model.json").read_text())
    return pd.read_parquet(results / "inventory.parquet"), dims


def main(argv=None):
    """blockscope-plan: predict a run from a transformers config.json (no weights needed) or
    from a results/{model} folder; prints per-rule totals, writes plan.json with --out."""
    parser = argparse.ArgumentParser(prog="blockscope-plan", description=main.__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="a transformers config.json")
    source.add_argument("--results", help="a results/{model} folder with inventory.parquet and model.json")
    parser.add_argument("--backend", choices=BACKENDS, default="cpu")
    parser.add_argument("--device", choices=sorted(DEVICES), help="cuda: a published device instead of the visible GPU")
    parser.add_argument("--method", choices=(*METHODS, "auto"), default="gesdd")
    parser.add_argument("--precisions", default="fp32,fp16,bf16")
    parser.add_argument("--compute-dtype", default="float32")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--out", help="write plan.json here")
    args = parser.parse_args(argv)
    inventory, dims = _read_inventory(args)
    t = throughput(args.backend, args.device)
    jobs = plan_model(inventory, dims, t, args.method, args.compute_dtype, args.precisions.split(","))
    document = plan_document(dims.get("model", "planned"), jobs, t, args.method, args.cores)
    if args.out:
        write_json(document, args.out)
    print(total_line(dims.get("model", "planned"), document))
    return document


if __name__ == "__main__":
    main()
