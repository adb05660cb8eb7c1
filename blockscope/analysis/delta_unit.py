"""A unit's matrices against another model's: the delta table of a model against its base
(pair_layout.DELTA_COLUMNS: dW = W - W_base, dense or from an adapter's factors) and the distance table
of a compare pair (pair_layout.DISTANCE_COLUMNS). One row per weight matrix of the model (an expert
stack's experts one by one; 1-D parameters and tensors that hold no weight matrix have none).

Numbers are float64 from the stored values. A pair equal in every value is DELTA_UNCHANGED without
an SVD (backend "none"); otherwise dW's singular values come from analysis.spectra.compute_spectra
(LAPACK, or torch on `backend` cuda, the CPU after a CUDA out-of-memory), the top-k singular
vectors of both matrices for the subspace columns from their float64 Gram matrices on the CPU.
Like the anatomy (analysis.anatomy), this module never imports pandas: tables go out as Arrow.
"""

import logging
import math
import time

import numpy as np

from blockscope.analysis.delta_metrics import delta_metrics, missing_metrics, rounding_level, unchanged_metrics
from blockscope.analysis.distances import distance_metrics, identical_subspaces, missing_distances, subspace_metrics
from blockscope.analysis.low_rank_update import (
    dense_update,
    factor_rounding_level,
    update_dot,
    update_singular_values,
)
from blockscope.analysis.matrices import Matrix, matrices_of, not_a_matrix
from blockscope.analysis.spectra import compute_spectra
from blockscope.io.dtypes import NUMPY_TO_SAFETENSORS
from blockscope.io.tables import is_missing, records, table_from_rows
from blockscope.io.tensors import iter_unit, read_unit
from blockscope.pair_layout import (
    DELTA_CHANGED,
    DELTA_COLUMNS,
    DELTA_UNCHANGED,
    DISTANCE_COLUMNS,
    MISSING_IN_OTHER,
    SHAPES_DIFFER,
    column_type,
)
from blockscope.runtime.gpu_slots import NO_GPU

log = logging.getLogger(__name__)
EPS64 = float(np.finfo(np.float64).eps)
# The Gram path's singular values are exact to float64 above sqrt(n eps64) sigma_max and 0 below
# (analysis.gram.gram_floor); dW goes through it when that floor, bounded with ||dW||_F >= sigma_max,
# lies this many times under the rounding level, else through gesdd (an F32 pair's level can sit
# below the Gram's floor).
GRAM_MARGIN = 10.0


# --- pairing -------------------------------------------------------------------------------------


def matrix_rows(inventory) -> dict:
    """param_name -> inventory row of every tensor that holds weight matrices (rank 2, or a 3-D expert stack)."""
    return {info["param_name"]: info for info in records(inventory)
            if len(info["shape"]) >= 2 and not_a_matrix(info["dtype"], info["shape"], info["block_type"]) is None}


def counterparts(path, info) -> dict:
    """expert (None for a plain matrix) -> the other model's Matrix of this tensor."""
    array = read_unit(path, names=[info["param_name"]]).get(info["param_name"])
    if array is None:
        return {}
    return {m.expert: m for m in matrices_of(info["param_name"], array, info["layout"], info["block_type"])}


def paired_matrices(tensors, inventory, other_tensors, other_inventory):
    """(Matrix, its inventory row, the other model's Matrix or None, the other's row or None) for every
    weight matrix of the unit, one tensor in memory per model. The other's Matrix is None when its
    tensor has another shape (its row is there) or is missing (no row)."""
    mine, theirs = matrix_rows(inventory), matrix_rows(other_inventory)
    for name, array in iter_unit(tensors, names=list(mine)):
        info, other_info = mine[name], theirs.get(name)
        same = other_info is not None and list(other_info["shape"]) == list(info["shape"])
        others = counterparts(other_tensors, other_info) if same else {}
        for matrix in matrices_of(name, array, info["layout"], info["block_type"]):
            yield matrix, info, others.get(matrix.expert), other_info


def _identity(unit, matrix, info) -> dict:
    """PAIR_IDENTITY_COLUMNS of a matrix, as the anatomy names it (rows and cols NA for a tensor of rank 3 or more)."""
    layer = info["layer_index"]
    shape = matrix.values.shape
    rows, cols = shape if len(shape) == 2 else (None, None)
    return {"unit": unit, "param_name": matrix.param_name, "expert": matrix.expert, "matrix": matrix.name,
            "layer_index": None if is_missing(layer) else int(layer), "block_type": info["block_type"],
            "rows": rows, "cols": cols}


def dims(shape) -> str:
    return "x".join(map(str, shape))


def unpaired(status: str, note: str) -> dict:
    """NaN metrics with why: a matrix without a counterpart of its shape (MISSING_IN_OTHER, SHAPES_DIFFER)."""
    return {**missing_metrics(), **missing_distances(), "status": status, "note": note, "backend": "none",
            "seconds": 0.0}


def counterpart_problem(matrix, other, other_info, who: str) -> dict | None:
    """unpaired's row when the other model has no matrix of this one's shape, else None."""
    if other_info is None:
        return unpaired(MISSING_IN_OTHER, f"not in {who}")
    if other is None or other.values.shape != matrix.values.shape:
        there = other.values.shape if other is not None else other_info["shape"]
        return unpaired(SHAPES_DIFFER, f"{dims(matrix.values.shape)} here, {dims(there)} in {who}")
    return None


def non_finite(values, who: str) -> str | None:
    """Why a matrix cannot be compared: non-finite entries (None when all are finite)."""
    finite = np.isfinite(values)
    return None if finite.all() else f"non-finite weights in {who} ({int(finite.size - finite.sum())} entries)"


def equal_values(w, w_base) -> bool:
    """Every entry equal (bit-identical but for the sign of a zero), compared as stored where the
    dtypes agree."""
    if w.dtype == w_base.dtype:
        return bool(np.array_equal(w, w_base))
    return bool(np.array_equal(np.asarray(w, np.float64), np.asarray(w_base, np.float64)))


def delta_svd_method(level: float, frobenius: float, shape) -> str:
    """gram when the Gram path resolves every singular value above the rounding level (its floor
    sqrt(n eps64) ||dW||_F, n = min(rows, cols), at least GRAM_MARGIN times under it), else gesdd."""
    return "gram" if GRAM_MARGIN * math.sqrt(min(shape) * EPS64) * frobenius <= level else "gesdd"


def stored_name(dtype) -> str:
    """The safetensors name of a numpy dtype (F32, BF16, ...), its numpy name when it has none."""
    return NUMPY_TO_SAFETENSORS.get(np.dtype(dtype).name, np.dtype(dtype).name)


# --- one pair ------------------------------------------------------------------------------------


def dense_delta(w, w_base, dtype, base_dtype, settings, backend) -> dict:
    """The delta metrics, distances, status, note and backend of stored W against stored W_base."""
    problem = non_finite(w, "the model") or non_finite(w_base, "the base")
    if problem is not None:
        return {**missing_metrics(), **missing_distances(), "status": problem, "note": "", "backend": "none"}
    level = rounding_level(w, w_base, dtype, base_dtype)
    base = np.asarray(w_base, np.float64)
    base_frobenius = float(np.linalg.norm(base))
    if equal_values(w, w_base):
        return {**unchanged_metrics(level, base_frobenius), "backend": "none",
                **distance_metrics(delta_frobenius=0.0, delta_dot_other=0.0, other_frobenius=base_frobenius,
                                   spectral=0.0, subspaces=identical_subspaces(*base.shape, settings["subspace_k"]))}
    values = np.asarray(w, np.float64)
    diff = values - base
    frobenius, dot = float(np.linalg.norm(diff)), float(np.vdot(diff, base))
    (sigma,), _, used = compute_spectra([diff], backend, delta_svd_method(level, frobenius, diff.shape))
    del diff
    metrics = delta_metrics(sigma, frobenius=frobenius, level=level, base_frobenius=base_frobenius, rows=base.shape[0],
                            cols=base.shape[1], hill_fraction=settings["hill_fraction"])
    return {**metrics, "backend": used,
            **distance_metrics(delta_frobenius=frobenius, delta_dot_other=dot, other_frobenius=base_frobenius,
                               spectral=metrics["delta_spectral_norm"],
                               subspaces=subspace_metrics(values, base, settings["subspace_k"]))}


def dense_distance(w, w_other, settings, backend) -> dict:
    """The distance metrics, status, note and backend of stored W against the other model's W."""
    problem = non_finite(w, "the model") or non_finite(w_other, "the other model")
    if problem is not None:
        return {**missing_distances(), "status": problem, "note": "", "backend": "none"}
    other = np.asarray(w_other, np.float64)
    other_frobenius = float(np.linalg.norm(other))
    if equal_values(w, w_other):
        return {"status": DELTA_UNCHANGED, "note": "", "backend": "none",
                **distance_metrics(delta_frobenius=0.0, delta_dot_other=0.0, other_frobenius=other_frobenius,
                                   spectral=0.0, subspaces=identical_subspaces(*other.shape, settings["subspace_k"]))}
    values = np.asarray(w, np.float64)
    diff = values - other
    frobenius, dot = float(np.linalg.norm(diff)), float(np.vdot(diff, other))
    (sigma,), _, used = compute_spectra([diff], backend, "gram")  # only sigma_max: float64-exact on the Gram path
    del diff
    return {"status": DELTA_CHANGED, "note": "", "backend": used,
            **distance_metrics(delta_frobenius=frobenius, delta_dot_other=dot, other_frobenius=other_frobenius,
                               spectral=float(np.max(sigma)), subspaces=subspace_metrics(values, other,
                                                                                         settings["subspace_k"]))}


def factored_delta(left, right, scale, w_base, settings, dtype=None) -> dict:
    """The delta metrics, distances, status, note and backend of dW = scale * left @ right against
    the stored W_base, from the factors (the subspaces from W = W_base + dW, formed densely); dtype:
    the factors' stored format (default: their dtype), for their rounding level."""
    if not (np.isfinite(left).all() and np.isfinite(right).all()):
        return {**missing_metrics(), **missing_distances(), "status": "non-finite adapter factors", "note": "",
                "backend": "none"}
    base = np.asarray(w_base, np.float64)
    base_frobenius = float(np.linalg.norm(base))
    sigma = update_singular_values(left, right, scale)
    frobenius = float(np.sqrt(np.sum(sigma**2)))
    metrics = delta_metrics(sigma, frobenius=frobenius, level=factor_rounding_level(left, right, scale, dtype),
                            base_frobenius=base_frobenius, rows=base.shape[0], cols=base.shape[1],
                            hill_fraction=settings["hill_fraction"])
    if frobenius == 0:  # B A = 0: W is W_base
        subspaces = identical_subspaces(*base.shape, settings["subspace_k"])
    else:
        subspaces = subspace_metrics(base + dense_update(left, right, scale), base, settings["subspace_k"])
    return {**metrics, "backend": "cpu",
            **distance_metrics(delta_frobenius=frobenius, delta_dot_other=update_dot(left, right, scale, base),
                               other_frobenius=base_frobenius, spectral=metrics["delta_spectral_norm"],
                               subspaces=subspaces)}


# --- the tables ----------------------------------------------------------------------------------


def _timed(compute, *args) -> dict:
    started = time.perf_counter()
    row = compute(*args)
    return {**row, "seconds": time.perf_counter() - started}


def _log(row):
    log.info("%-55s %-28s rel %9.3g rank %5s ||dW||_2 %9.3g level %9.3g %6.3fs %s", row["matrix"],
             row["status"], row.get("relative_change", row.get("relative_distance")),
             row.get("delta_numerical_rank", "-"), row.get("delta_spectral_norm", row.get("spectral_distance")),
             row.get("rounding_level", float("nan")), row["seconds"], row["note"])


def unit_delta_table(model, base, unit, *, tensors, base_tensors, inventory, base_inventory, settings, backend="cpu",
                     device=NO_GPU):
    """An Arrow table of DELTA_COLUMNS: dW = W - W_base of every weight matrix of the unit (tensors,
    base_tensors: per-unit tensor files; inventories: their inventory rows; settings: subspace_k,
    hill_fraction). backend: cpu, or cuda for dW's SVD in torch; device: the GPU the job held, recorded."""
    rows = []
    for matrix, info, other, other_info in paired_matrices(tensors, inventory, base_tensors, base_inventory):
        row = {"model": model, "base": base, **_identity(unit, matrix, info), "dtype": info["dtype"],
               "base_dtype": None if other_info is None else other_info["dtype"], "adapter_rank": None,
               "adapter_scale": float("nan"), "device": device}
        problem = counterpart_problem(matrix, other, other_info, f"the base {base}")
        if problem is not None:
            row.update(problem)
        else:
            row.update(_timed(dense_delta, matrix.values, other.values, info["dtype"], other_info["dtype"], settings,
                              backend))
        _log(row)
        rows.append(row)
    return table_from_rows(DELTA_COLUMNS, rows, {c: column_type(c) for c in DELTA_COLUMNS})


def adapter_delta_table(model, base, unit, *, updates, base_tensors, base_inventory, settings, backend="cpu",
                        device=NO_GPU):
    """An Arrow table of DELTA_COLUMNS for an adapter: dW = scale * B @ A of each base matrix named in
    `updates` ({base param_name: (B, A, scale)}, B out x r and A r x in in the stored tensor's
    orientation, in their stored dtype), measured from the factors. The core SVD is r x r on the CPU
    whatever `backend`; device is recorded."""
    rows = []
    mine = {name: info for name, info in matrix_rows(base_inventory).items() if name in updates}
    for name, array in iter_unit(base_tensors, names=list(mine)):
        info, factors = mine[name], updates[name]
        B, A, scale = np.asarray(factors[0]), np.asarray(factors[1]), factors[2]
        dtype = getattr(factors, "dtype", None) or stored_name(B.dtype)  # the stored format, where the reader kept it
        left, right = (A.T, B.T) if info["layout"] == "in_out" else (B, A)  # the matrix is out x in
        matrix = Matrix(name, None, array.T if info["layout"] == "in_out" else array)
        row = {"model": model, "base": base, **_identity(unit, matrix, info), "dtype": dtype,
               "base_dtype": info["dtype"], "adapter_rank": int(B.shape[-1]) if B.ndim == 2 else None,
               "adapter_scale": float(scale), "device": device}
        if B.ndim != 2 or A.ndim != 2 or B.shape[1] != A.shape[0] or (B.shape[0], A.shape[1]) != array.shape:
            row.update(unpaired(SHAPES_DIFFER, f"B {dims(B.shape)} and A {dims(A.shape)}, the base tensor "
                                               f"{dims(array.shape)}"))
        else:
            row.update(_timed(factored_delta, left, right, scale, matrix.values, settings, dtype))
        _log(row)
        rows.append(row)
    return table_from_rows(DELTA_COLUMNS, rows, {c: column_type(c) for c in DELTA_COLUMNS})


def unit_distance_table(model, other, unit, *, tensors, other_tensors, inventory, other_inventory, settings,
                        backend="cpu", device=NO_GPU):
    """An Arrow table of DISTANCE_COLUMNS: every weight matrix of the unit against the same-named one
    of `other` (the reference). status: changed, unchanged (equal in every value, no decomposition),
    SHAPES_DIFFER or MISSING_IN_OTHER (NaN metrics)."""
    rows = []
    for matrix, info, theirs, other_info in paired_matrices(tensors, inventory, other_tensors, other_inventory):
        row = {"model": model, "other": other, **_identity(unit, matrix, info), "dtype": info["dtype"],
               "other_dtype": None if other_info is None else other_info["dtype"], "device": device}
        problem = counterpart_problem(matrix, theirs, other_info, f"the other model {other}")
        if problem is not None:
            row.update(problem)
        else:
            row.update(_timed(dense_distance, matrix.values, theirs.values, settings, backend))
        _log(row)
        rows.append(row)
    return table_from_rows(DISTANCE_COLUMNS, rows, {c: column_type(c) for c in DISTANCE_COLUMNS})
