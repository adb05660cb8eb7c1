"""One job's predicted cost from its inventory rows. Every per-unit job is priced in CPU seconds
(its wall time on an idle core) as

    seconds = job start (interpreter + the script's imports, measured)
            + tensor bytes / I/O rate (measured through blockscope.io.tensors)
            + sum over its matrices of flops / rate of the operation (rates measured once per
              machine, or a device's published peak x a stated efficiency)
            + per-element and per-eigenvalue work (the metrics, the rounding casts; measured)

and its memory as the process after imports plus the arrays the job holds at its peak (flops.py
counts each operation; docs/metrics.md, "Cost model", gives each count with its source).
`predict_unit(rows, rule, throughput, method)` prices one job: extract, anatomy (its PARTS one
after another, the diagnostics part while config diagnostics.enabled) or deltas (a model against
its base, predict_deltas).
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from blockscope.analysis.correlation_traps import replicas_for
from blockscope.analysis.distances import SUBSET_MIN_N
from blockscope.analysis.fingers import finger_counts
from blockscope.analysis.gram import TWO_STAGE_MIN_N, gram_block_rows
from blockscope.analysis.heavytail import MIN_EIGENVALUES
from blockscope.analysis.matrices import not_a_matrix
from blockscope.analysis.round_trip import round_trip_is_exact, svd_dtype
from blockscope.analysis.spectra import svd_method_for
from blockscope.layout import ATTENTION_BLOCK_TYPES
from blockscope.planning.devices import HOST_TO_DEVICE
from blockscope.planning.flops import eigh_flops, gesdd_flops, gram_flops, heads_flops
from blockscope.planning.throughput import MB, PERMUTE_ELEMENTS, Throughput

METHODS = ("gesdd", "gram")
DEFAULT_METHOD = "auto"  # config svd_method's default: gram or gesdd per matrix (spectra.svd_method_for)
# rule anatomy's parts in the order its script runs them, priced one by one
PARTS = ("spectra", "precision", "diagnostics", "heads")


@dataclass
class Job:
    seconds: float
    mem_mb: float
    flops: float = 0.0


def tensor_matrices(info) -> list:
    """(rows, cols) of the matrices in one inventory row: a 2-D floating tensor, one per expert
    of a 3-D expert stack; none for 1-D and refused tensors (they cost nothing here)."""
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
        gram = chosen == "gram"
        flops += gram_flops(rows, cols) + eigh_flops(min(rows, cols)) if gram else sum(gesdd_flops(rows, cols))
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
# start and base memory, which rule anatomy pays once for all its parts.


def predict_spectra(rows, t: Throughput, method="gesdd", compute_dtype="float32", **_) -> Job:
    shapes, bits = matrix_shapes(rows), _bits(compute_dtype)
    svd, flops, workspace = _svd_cost(shapes, bits, method, t)
    seconds = _bytes(rows) / t.read_bps + svd + _metrics_seconds(shapes, t)
    held = _bytes(rows) + _elements(shapes) * bits / 8  # the stored unit as read, and its matrices upcast
    return Job(seconds, (held + workspace) / MB, flops)


def computed_precisions(dtype: str, precisions, compute_dtype="float32") -> list:
    """The precisions whose SVD a tensor stored in `dtype` needs: not those whose round trip
    leaves it unchanged in the compute dtype (the spectra part's values are reused)."""
    compute = np.dtype(compute_dtype)
    return [p for p in precisions if not (svd_dtype(p, compute) == compute and round_trip_is_exact(dtype, p))]


def predict_precision(rows, t: Throughput, method="gesdd", compute_dtype="float32", precisions=("fp32",), **_) -> Job:
    """The sweep: the rounding cast and the SVDs of every precision a tensor's stored dtype does not
    hold exactly (the others reuse the spectra unread and uncast). It shares the spectra part's
    read of the unit, unless a precision needs the matrices wider than compute_dtype (fp64)."""
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
    attention = rows[rows["block_type"].isin(ATTENTION_BLOCK_TYPES)]
    if dims and len(attention) and rows["layer_index"].notna().any():
        flops = heads_flops(dims["heads"], dims["kv_heads"], dims["head_dim"], dims["hidden"])
        # float64 copies of q, k, v, o and of k, v repeated for every query head
        copies = 8 * (2 * _elements(matrix_shapes(attention)) + 2 * dims["heads"] * dims["head_dim"] * dims["hidden"])
        return Job(_bytes(attention) / t.read_bps + flops / t.rates["heads"], copies / MB, flops)
    return Job(0.0, 0.0)


# Top-k singular vectors from the Gram matrix: the diagnostics part's vectors, rule deltas' subspaces.


def back_transform_flops(n: int, vectors: int) -> float:
    """`vectors` eigenvectors of a symmetric n x n matrix after its tridiagonal reduction: the n - 1
    Householder reflectors applied to them, 2 n^2 per vector (LAPACK ormtr, blocked BLAS-3; Golub &
    Van Loan 8.3.1). The tridiagonal eigenvectors themselves (divide and conquer, MRRR) are left out."""
    return 2 * n**2 * vectors


def subspace_flops(rows: int, cols: int, k: int) -> tuple:
    """(BLAS-3 flops, tridiagonal-reduction flops) of one matrix's top-k singular vectors as
    analysis.distances.top_singular_vectors computes them: the float64 Gram matrix of the short side
    (2mn^2), its eigendecomposition (4n^3/3, then the back-transformation of the top k vectors from
    distances.SUBSET_MIN_N up, LAPACK syevr by index, of all n below, numpy's full eigh) and the
    other side's vectors W V / sigma (2mnk)."""
    n, k = min(rows, cols), min(k, rows, cols)
    vectors = k if n >= SUBSET_MIN_N else n
    return gram_flops(rows, cols) + back_transform_flops(n, vectors) + 2 * rows * cols * k, eigh_flops(n)


def subspace_seconds(rows: int, cols: int, k: int, rates: dict) -> float:
    """Seconds of subspace_flops: BLAS-3 at gemm64, the reduction at eigh64 (never the two-stage
    rate: LAPACK's two-stage solver has no eigenvectors)."""
    blas3, reduction = subspace_flops(rows, cols, k)
    return blas3 / rates["gemm64"] + reduction / rates["eigh64"]


# Rule anatomy's diagnostics part (analysis.diagnostics: WeightWatcher's randomize, clip_xmax, TPL,
# detX and vectors), with config diagnostics' defaults: on, its singular vectors off.
DIAGNOSTICS, VECTORS = True, False
MAX_FINGERS = 10  # diagnostics.max_fingers
VECTOR_K = 10  # diagnostics.vector_k


def permuted_shapes(rows: int, cols: int) -> list:
    """The shapes of the permutations the trap test draws and decomposes of one matrix: none below
    MIN_EIGENVALUES, else one, or the pooled replicas of a small one (correlation_traps.replicas_for)."""
    n = min(rows, cols)
    return [] if n < MIN_EIGENVALUES else [(rows, cols)] * replicas_for(n)


def permutation_seconds(rows: int, cols: int, t: Throughput) -> float:
    """One seeded elementwise permutation of a matrix (correlation_traps.permute): its elements at
    the measured seconds per element, interpolated in log(elements) between the two sizes measured
    (throughput.PERMUTE_ELEMENTS), the nearer one's outside them."""
    elements, (small, large) = rows * cols, PERMUTE_ELEMENTS
    share = min(max(np.log(max(elements, 1) / small) / np.log(large / small), 0.0), 1.0)
    per_small, per_large = t.diagnostics_s["permute"]
    return elements * (per_small + share * (per_large - per_small))


def fits_seconds(n: int, max_fingers: int, t: Throughput) -> float:
    """The power-law fits of diagnostics.fit_metrics: the plain KS-optimal fit again for the truncated
    law's xmin (heavytail.powerlaw_fit, a KS scan over every xmin: ~n^2), then clip_xmax's own plain
    fit and a refit without the k largest eigenvalues for every k of fingers.finger_counts, each a
    pruned scan (fingers.ks_optimal_fit, about linear in n), priced at every k, the most it runs (it
    stops at the first clipped alpha it accepts or at alpha <= 2)."""
    if n < MIN_EIGENVALUES:
        return 0.0
    refits = 1 + len(finger_counts(n, max_fingers))
    return n**2 * t.diagnostics_s["powerlaw_fit"] + refits * n * t.diagnostics_s["ks_optimal_fit"]


def tpl_seconds(n: int, t: Throughput) -> float:
    """The truncated power law's MLE and its likelihood-ratio test (truncated_power_law_fit): a cost
    per fit, whatever the tail's size (Newton steps on quadratures: the tail enters only through its
    two means)."""
    return t.diagnostics_s["tpl"] if n >= MIN_EIGENVALUES else 0.0


def vector_flops(rows: int, cols: int, k: int, backend: str) -> tuple:
    """(BLAS-3 flops, tridiagonal-reduction flops) of one matrix's top-k singular vectors
    (singular_vectors.singular_vector_pairs): on the CPU distances.top_singular_vectors
    (subspace_flops); on CUDA torch.linalg.eigh of the Gram matrix, which back-transforms all n
    eigenvectors."""
    if backend == "cpu":
        return subspace_flops(rows, cols, k)
    n, k = min(rows, cols), min(k, rows, cols)
    return gram_flops(rows, cols) + back_transform_flops(n, n) + 2 * rows * cols * k, eigh_flops(n)


def vector_seconds(rows: int, cols: int, k: int, bits: int, t: Throughput) -> float:
    """Seconds of vector_flops at t's rates (BLAS-3 at gemm64, the reduction at eigh64, which has
    eigenvectors: never the two-stage rate); on CUDA the matrix travels to the device at `bits`."""
    blas3, reduction = vector_flops(rows, cols, k, t.backend)
    travel = rows * cols * bits / 8 / HOST_TO_DEVICE if t.backend == "cuda" else 0.0
    return blas3 / t.rates["gemm64"] + reduction / t.rates["eigh64"] + travel


def vector_workspace_bytes(rows: int, cols: int) -> float:
    """The float64 copy of the matrix, its n x n Gram matrix, eigh's copy and its eigenvectors."""
    n = min(rows, cols)
    return 8 * (rows * cols + 3 * n * n)


def predict_diagnostics(rows, t: Throughput, method="gesdd", compute_dtype="float32", vectors=VECTORS,
                        max_fingers=MAX_FINGERS, vector_k=VECTOR_K, **_) -> Job:
    """The anatomy's diagnostics part (analysis.diagnostics.unit_diagnostics): no read of its own
    (it shares the spectra part's read of the unit, and W's singular values come from the spectra
    part's table, a small read left out); per matrix its permutations (permuted_shapes) and their
    singular values (the spectra part's method, dtype and backend: _svd_cost), the power-law fits and
    the truncated power law on W's eigenvalues, and with `vectors` the top-k singular vectors. The MP
    fit of the permuted spectrum, rand_distance and detX are O(n) per matrix and left out. It holds
    the unit's matrices as read and upcast, their permutations (on the CPU one matrix's at a time, on
    a GPU all at once), then the larger of an SVD's workspace and the vectors' arrays."""
    shapes, bits = matrix_shapes(rows), _bits(compute_dtype)
    permuted = [permuted_shapes(r, c) for r, c in shapes]
    every = [shape for per_matrix in permuted for shape in per_matrix]
    svd, flops, workspace = _svd_cost(every, bits, method, t)
    seconds = svd + sum(permutation_seconds(r, c, t) for r, c in every)
    for r, c in shapes:
        seconds += fits_seconds(min(r, c), max_fingers, t) + tpl_seconds(min(r, c), t)
        if vectors:
            seconds += vector_seconds(r, c, vector_k, bits, t)
            flops += sum(vector_flops(r, c, vector_k, t.backend))
            workspace = max(workspace, vector_workspace_bytes(r, c))
    held = _elements(every) if t.backend != "cpu" else max(map(_elements, permuted), default=0.0)
    matrices = _bytes(rows) + _elements(shapes) * bits / 8  # as read, and upcast (as the spectra part's)
    return Job(seconds, (matrices + held * bits / 8 + workspace) / MB, flops)


def anatomy_parts(diagnostics: bool = DIAGNOSTICS) -> tuple:
    """The parts a unit's anatomy job runs: every one of PARTS, the diagnostics part only while on."""
    return tuple(part for part in PARTS if diagnostics or part != "diagnostics")


def predict_anatomy(rows, t: Throughput, diagnostics: bool = DIAGNOSTICS, **options) -> Job:
    """Rule anatomy: one process start, then its parts one after another (anatomy_parts; the memory
    of the largest part's arrays at a time: the unit's read is shared, the heads read their own)."""
    parts = [PREDICT[part](rows, t, **options) for part in anatomy_parts(diagnostics)]
    return Job(t.start_s["anatomy"] + sum(p.seconds for p in parts),
               t.base_mb["anatomy"] + max(p.mem_mb for p in parts), sum(p.flops for p in parts))


# Rule deltas: a model against its base, per matrix in float64 (blockscope.analysis.delta_unit).
# A LoRA adapter's rank is not in the inventory: its factors are priced at a rank at the high end of
# common ones (their part, O(mnr), is small beside the Gram eigendecompositions, O(mn^2), whatever r).
ADAPTER_RANK = 64
SUBSPACE_K = 10  # config deltas.subspace_k's default


def host_rates(t: Throughput) -> dict:
    """The host CPU's rates: a CPU throughput's own, a GPU one's copies of its host's (host_<op>,
    calibration._on_gpu), for the work a GPU rule's job runs on the CPU."""
    if t.backend == "cpu":
        return t.rates
    return {op.removeprefix("host_"): rate for op, rate in t.rates.items() if op.startswith("host_")}


def low_rank_update_seconds(rows: int, cols: int, rank: int, rates: dict) -> tuple:
    """(seconds, flops) of dW = scale B A from its factors (B: rows x r, A: r x cols), never dense:
    a QR of each factor then the r x r core's singular values (gesdd of a tall matrix: QR first),
    plus two rows x cols x r products (<dW, W_base> through B^T W_base, and W = W_base + dW for
    the subspaces)."""
    r = min(rank, rows, cols)
    products = 2 * 2 * rows * cols * r
    seconds = svd_seconds(rows, r, 64, "gesdd", rates) + svd_seconds(cols, r, 64, "gesdd", rates)
    return seconds + products / rates["gemm64"], sum(gesdd_flops(rows, r)) + sum(gesdd_flops(cols, r)) + products


def delta_workspace_bytes(rows: int, cols: int, adapter_only: bool) -> float:
    """The float64 arrays one matrix's delta holds at its peak: W, W_base and dW (an adapter: W and
    W_base), then the larger of dW's gesdd workspace and a Gram eigendecomposition's (the Gram
    matrix, eigh's copy, its vectors)."""
    n = min(rows, cols)
    eigh = 8 * 3 * n * n
    if adapter_only:
        return 8 * 2 * rows * cols + eigh
    return 8 * 3 * rows * cols + max(svd_workspace_bytes(rows, cols, 64, "gesdd"), eigh)


def predict_deltas(rows, t: Throughput, adapter_only: bool = False, adapter_rank: int = ADAPTER_RANK,
                   subspace_k: int = SUBSPACE_K, **_) -> Job:
    """Rule deltas: one process start, then per matrix, in float64, dW = W - W_base and all its
    singular values by gesdd (on the GPU for backend cuda; the job takes the Gram path instead where
    the stored formats' rounding allows, which costs less: gesdd is the upper bound), the top-k
    singular vectors of W and of W_base from their Gram matrices on the CPU (subspace_seconds at the
    host's rates), dW's tail fit (eig2_s x n^2) and the element work of both matrices (the casts, dW,
    the identity check, norms, the rounding level: priced as the element statistics of each). It
    reads the model's tensors and the base's (the same tensors: the model's bytes twice), one tensor
    of each in memory. An adapter-only model (source peft, merged false; `rows` are then its base's)
    reads the base alone and prices dW from its factors on the CPU (low_rank_update_seconds) instead
    of a dense SVD. Every selected matrix is priced as changed (an identical one skips its SVD and
    its subspaces, which the inventory cannot tell)."""
    shapes, host = matrix_shapes(rows), host_rates(t)
    sides = 1 if adapter_only else 2  # the models read, their matrices cast
    seconds = sides * _bytes(rows) / t.read_bps + sides * _elements(shapes) * t.elements_s
    flops = workspace = 0.0
    for r, c in shapes:
        if adapter_only:
            update, update_flops = low_rank_update_seconds(r, c, adapter_rank, host)
        else:
            update, update_flops = svd_seconds(r, c, 64, "gesdd", t.rates), sum(gesdd_flops(r, c))
        seconds += update + 2 * subspace_seconds(r, c, subspace_k, host) + min(r, c) ** 2 * t.eig2_s
        flops += update_flops + 2 * sum(subspace_flops(r, c, subspace_k))
        workspace = max(workspace, delta_workspace_bytes(r, c, adapter_only))
    if t.backend == "cuda" and not adapter_only:  # dW travels to the device, in float64
        seconds += _elements(shapes) * 8 / HOST_TO_DEVICE
    held = sides * float(rows["nbytes"].max()) if len(rows) else 0.0  # one stored tensor per model
    return Job(t.start_s["deltas"] + seconds, t.base_mb["deltas"] + (held + workspace) / MB, flops)


PREDICT = {"extract": predict_extract, "anatomy": predict_anatomy, "diagnostics": predict_diagnostics,
           "deltas": predict_deltas, "spectra": predict_spectra, "precision": predict_precision,
           "heads": predict_heads}


def predict_unit(rows: pd.DataFrame, rule: str, t: Throughput, method: str = "gesdd", **options) -> Job:
    """Predicted seconds, peak MB and flops of one per-unit job, extract, anatomy or deltas (rows: the
    unit's inventory rows, already restricted to what `select` chose), or of one of anatomy's PARTS
    alone (its work and arrays, no process start). options: compute_dtype, precisions, dims,
    diagnostics (anatomy: its diagnostics part, config diagnostics.enabled), vectors, max_fingers,
    vector_k (the diagnostics part), adapter_only, adapter_rank, subspace_k (deltas)."""
    return PREDICT[rule](rows, t, method=method, **options)
