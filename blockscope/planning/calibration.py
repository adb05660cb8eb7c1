"""Measuring a machine's throughput in a few seconds: small GEMM / gesdd / eigh sizes, the real
metric, cast, heads, diagnostics and Parquet code, one process start per rule, each timing the
fewest CPU seconds of a few repeats (other processes on a shared machine do not count, and noise
only slows a repeat down). For backend cuda the visible GPU's own
rates, or where none is visible a device's published ones (devices.py). throughput_cache.py keeps
the result per machine.
"""

import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from blockscope.analysis.gram import TWO_STAGE_MIN_N, two_stage_eigenvalues
from blockscope.io.dtypes import PRECISION_TO_SAFETENSORS
from blockscope.planning.devices import CUDA_START_EXTRA_S, DEFAULT_DEVICE, DEVICES, published_rates
from blockscope.planning.flops import eigh_flops, gesdd_flops, gram_flops, heads_flops
from blockscope.planning.job_start import GPU_RULES, PRICED_RULES, job_starts
from blockscope.planning.throughput import PERMUTE_ELEMENTS, Throughput, cpu_model, machine_key


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
    """FLOP/s of the Gram path's eigenvalues from gram.TWO_STAGE_MIN_N up (LAPACK's two-stage
    reduction, gram.two_stage_eigenvalues), timed once at that size (~3 s here); None where
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
    from blockscope.analysis.matrix_formulas import element_stats, sparsity
    from blockscope.analysis.metrics_row import spectral_metrics
    from blockscope.analysis.round_trip import RoundTrip

    rng = np.random.default_rng(1)
    matrix = rng.standard_normal((1024, 1024)).astype(np.float32)
    elements = best_seconds(lambda: (element_stats(matrix), sparsity(matrix, 1e-6))) / matrix.size

    def round_trips(precision):  # what the sweep runs: the Gram's rounded blocks (its verdict, 8 rows)
        return [block for _, block in RoundTrip(matrix, precision, np.float32).row_blocks()]

    cast = {precision: best_seconds(lambda: round_trips(precision)) / matrix.size
            for precision in PRECISION_TO_SAFETENSORS}
    sigma = np.sort(np.abs(rng.standard_normal(768)))[::-1] ** 1.5
    eig2 = best_seconds(lambda: spectral_metrics(sigma, 768, 3072, "F32", 0.1)) / 768**2
    return {"elements_s": elements, "cast_s": cast, "eig2_s": eig2}


def _measure_diagnostics() -> dict:
    """The anatomy's diagnostics part's work besides its SVDs, its own code (about 1 s here, imports
    included): seconds per element of correlation_traps.permute at each of throughput.PERMUTE_ELEMENTS
    (square float32 matrices); per squared eigenvalue count of heavytail.powerlaw_fit and per
    eigenvalue of fingers.ks_optimal_fit on 768 eigenvalues; and per truncated_power_law_fit, the mean
    over three Marchenko-Pastur spectra (random 768 x 256 matrices), whose cut-off its Newton steps fit."""
    from blockscope.analysis.correlation_traps import matrix_seed, permute
    from blockscope.analysis.fingers import ks_optimal_fit
    from blockscope.analysis.heavytail import powerlaw_fit, tail_eigenvalues
    from blockscope.analysis.truncated_power_law import truncated_power_law_fit

    rng = np.random.default_rng(4)
    permute_s = []
    for elements in PERMUTE_ELEMENTS:
        side = round(elements**0.5)
        matrix = rng.standard_normal((side, side)).astype(np.float32)
        permute_s.append(best_seconds(lambda: permute(matrix, matrix_seed(0, "calibration")), 2) / matrix.size)
    eigs = tail_eigenvalues(np.abs(rng.standard_normal(768)) ** 3)  # sigma^1.5 squared, as _measure_elementwise's
    fit_s = best_seconds(lambda: powerlaw_fit(eigs)) / eigs.size**2
    optimal_s = best_seconds(lambda: ks_optimal_fit(eigs)) / eigs.size
    tpl_s = []
    for w in (rng.standard_normal((768, 256)) for _ in range(3)):
        mp = np.linalg.eigvalsh(w.T @ w)
        xmin = powerlaw_fit(mp).xmin
        tpl_s.append(best_seconds(lambda: truncated_power_law_fit(mp, xmin, 0.95)))
    return {"permute": permute_s, "powerlaw_fit": fit_s, "ks_optimal_fit": optimal_s, "tpl": float(np.mean(tpl_s))}


def _measure_heads() -> float:
    from blockscope.analysis.heads import AttentionWeights, head_rows

    rng = np.random.default_rng(2)
    heads, kv_heads, d, hidden = 8, 2, 64, 512

    def weights():  # random q, k, v, o of one layer
        return AttentionWeights(rng.standard_normal((heads * d, hidden)), rng.standard_normal((kv_heads * d, hidden)),
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


def calibrate(backend: str = "cpu", device: str | None = None, host: Throughput | None = None) -> Throughput:
    """Measure this machine: CPU rates, job starts, I/O. cuda: `host`, the host's (cached) CPU
    throughput, with the torch import of the GPU rules' jobs and the GPU's own rates where one is
    visible, else `device`'s published ones (default devices.DEFAULT_DEVICE)."""
    started = time.perf_counter()
    if backend == "cuda":
        return _on_gpu(host, device, started)
    import scipy.linalg  # noqa: F401  (loaded first: threadpool_limits limits the BLAS loaded by then)
    from threadpoolctl import threadpool_limits

    import blockscope.analysis.heads  # noqa: F401  (the measured modules, loaded before the limits too)
    import blockscope.analysis.metrics_row  # noqa: F401
    import blockscope.analysis.round_trip  # noqa: F401
    import blockscope.io.tensors  # noqa: F401

    with threadpool_limits(1):  # one core per job; idle BLAS threads would spin and bill CPU time
        rates = {**_measure_linear_algebra(), "heads": _measure_heads()}
        read, write = _measure_io()
        elementwise = _measure_elementwise()
        diagnostics = _measure_diagnostics()
    starts, base = job_starts(PRICED_RULES)
    return Throughput(backend=backend, device=cpu_model(), basis="measured", rates=rates, **elementwise,
                      diagnostics_s=diagnostics, read_bps=read, write_bps=write, start_s=starts, base_mb=base,
                      key=machine_key(backend),
                      measured_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), calibration_s=time.perf_counter() - started)


def _on_gpu(host: Throughput, device: str | None, started: float) -> Throughput:
    """The host's throughput with the GPU rules' linear algebra and job starts on the GPU."""
    visible = gpu_name() if device is None else None
    if visible:
        rates, name, basis = _measure_cuda_rates(), visible, "measured"
    else:
        device = device or DEFAULT_DEVICE
        rates, name, basis = published_rates(device), DEVICES[device]["name"], f"published:{device}"
    rates["eigh64_two_stage"] = rates["eigh64"]  # torch's eigvalsh at every size: no CPU rate carries over
    # a GPU rule's job also computes on the CPU (rule deltas' subspaces): its host's rates, kept as host_<op>
    rates |= {f"host_{op}": rate for op, rate in host.rates.items()}
    starts, base = job_starts(GPU_RULES, extra=["torch"])
    starts = {rule: seconds + CUDA_START_EXTRA_S for rule, seconds in starts.items()}
    return replace(host, backend="cuda", device=name, basis=basis, rates={**host.rates, **rates},
                   start_s={**host.start_s, **starts}, base_mb={**host.base_mb, **base},
                   key=machine_key("cuda", device), measured_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   calibration_s=time.perf_counter() - started)
