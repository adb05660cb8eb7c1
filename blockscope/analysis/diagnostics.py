"""The anatomy's diagnostics part: WeightWatcher 0.7.7's remaining diagnostics for every weight
matrix of a unit (diagnostic_layout.DIAGNOSTIC_COLUMNS): correlation traps (correlation_traps.py),
the clipped and truncated power-law fits (fingers.py, truncated_power_law.py), detX (detx.py) and,
when asked, the localisation of the top singular vectors (singular_vectors.py); and the permuted
matrices' singular values (layout.SPECTRA_COLUMNS) that the ESD figures overlay.

W's own singular values come in from the spectra part (`sigmas`), never recomputed; the only SVDs
here are the permuted matrices', through spectra.compute_spectra as the anatomy's (LAPACK on the
CPU one matrix at a time, so that a unit's permuted copies are not all held at once; torch on a GPU,
batched over the unit). Like anatomy.py this module never imports pandas: Arrow tables go out.
"""

import logging
import time

import numpy as np

from blockscope.analysis.anatomy import UnitReader, _identity, _refused_row, refused_tensors
from blockscope.analysis.correlation_traps import matrix_seed, permute, replicas_for, trap_metrics
from blockscope.analysis.detx import detx
from blockscope.analysis.fingers import clipped_fit
from blockscope.analysis.heavytail import MIN_EIGENVALUES, powerlaw_fit
from blockscope.analysis.singular_vectors import singular_vector_pairs, vector_metrics
from blockscope.analysis.spectra import compute_spectra
from blockscope.analysis.truncated_power_law import truncated_power_law_fit
from blockscope.diagnostic_layout import (
    DIAGNOSTIC_COLUMNS,
    DIAGNOSTIC_IDENTITY_COLUMNS,
    DIAGNOSTIC_METRIC_COLUMNS,
    FINGER_COLUMNS,
    TPL_COLUMNS,
    VECTOR_COLUMNS,
    column_type,
)
from blockscope.io.dtypes import numpy_dtype
from blockscope.io.tables import table_from_rows, table_of
from blockscope.layout import SPECTRA_COLUMNS

log = logging.getLogger(__name__)
NO_SPECTRUM = "no spectrum from the spectra part"
TYPES = {column: column_type(column) for column in DIAGNOSTIC_COLUMNS}


def missing(columns) -> dict:
    """Every column missing: NaN, or None for a text or integer column ("" for trap_entries)."""
    return {c: "" if c == "trap_entries" else float("nan") if TYPES[c] == "float64" else None for c in columns}


def ascending_eigenvalues(sigma) -> np.ndarray:
    """lambda = sigma^2 in float64, ascending (WeightWatcher's evals)."""
    return np.sort(np.asarray(sigma, np.float64) ** 2)


def spectrum_of(sigmas: dict, name: str):
    """The spectra part's singular values of a matrix, None where it has none (a non-finite matrix,
    a Gram overflow: the metrics row says why)."""
    sigma = sigmas.get(name)
    if sigma is None or np.size(sigma) == 0 or not np.isfinite(sigma).all():
        return None
    return np.asarray(sigma, np.float64)


def fit_metrics(eigs: np.ndarray, settings: dict) -> tuple:
    """FINGER_COLUMNS and TPL_COLUMNS (fingers.clipped_fit; truncated_power_law_fit on the plain
    fit's xmin) and why they are missing ("" when computed)."""
    fit = powerlaw_fit(eigs)
    if not np.isfinite(fit.alpha):
        return missing([*FINGER_COLUMNS, *TPL_COLUMNS]), "no power-law fit: clipped and TPL fits NA"
    clipped = clipped_fit(eigs, int(settings["max_fingers"]), float(settings["finger_threshold"]))
    tpl = truncated_power_law_fit(eigs, fit.xmin, float(settings["tpl_level"]))
    return {**{c: clipped[c] for c in FINGER_COLUMNS}, **{c: tpl[c] for c in TPL_COLUMNS}}, ""


def matrix_row(values, eigs, rand_sigmas, settings) -> tuple:
    """DIAGNOSTIC_METRIC_COLUMNS but the vectors' for one matrix with a spectrum, and its status."""
    why = []
    if eigs.size < MIN_EIGENVALUES:  # no MP bulk nor tail to fit (the fits' own floor as well)
        row = {**missing(DIAGNOSTIC_METRIC_COLUMNS)}
        why.append(f"fewer than {MIN_EIGENVALUES} eigenvalues ({eigs.size}): traps and fits NA")
    else:
        row = trap_metrics(values, eigs, rand_sigmas, int(settings["trap_entries"]))
        fits, reason = fit_metrics(eigs, settings)
        row.update(fits)
        why += [reason] if reason else []
    row["detx_num"], row["detx_val"] = detx(eigs)
    return row, "; ".join(why) or "ok"


def permuted_spectra(items: list, backend: str, svd_method: str, seed: int) -> dict:
    """index -> (the permutations' singular values, seconds) for the items [(index, matrix, eigs)]
    with MIN_EIGENVALUES or more eigenvalues: replicas_for(n) seeded permutations each (matrix_seed
    of the config seed and the matrix's name), their SVDs by compute_spectra: on the CPU one matrix's
    permutations at a time, on a GPU all of them in one batched call."""
    todo = [(i, m) for i, m, eigs in items if eigs.size >= MIN_EIGENVALUES]
    groups = [todo] if backend != "cpu" else [[item] for item in todo]
    found, spent = {}, {}
    for group in groups:
        perms, owner = [], []
        for i, matrix in group:
            started = time.perf_counter()
            count = replicas_for(min(matrix.values.shape))
            perms += [permute(matrix.values, matrix_seed(seed, matrix.name), r) for r in range(count)]
            owner += [i] * count
            spent[i] = time.perf_counter() - started
        sigmas, seconds, _ = compute_spectra(perms, backend, svd_method)
        del perms
        for i, sigma, secs in zip(owner, sigmas, seconds):
            found.setdefault(i, []).append(np.asarray(sigma, np.float64))
            spent[i] += secs
    return {i: (found[i], spent[i]) for i in found}


def vector_rows(items: list, settings: dict, backend: str) -> dict:
    """index -> (VECTOR_COLUMNS, seconds) for the items [(index, matrix, eigs)] when
    settings["vectors"]: on the CPU one matrix at a time, on a GPU one batched call whose seconds
    are shared out evenly."""
    if not settings.get("vectors") or not items:
        return {}
    k, top = int(settings["vector_k"]), int(settings["vector_top_entries"])
    out = {}
    for group in [items] if backend != "cpu" else [[item] for item in items]:
        started = time.perf_counter()
        pairs = singular_vector_pairs([m.values for _, m, _ in group], k, backend)
        for (i, _, _), (left, right) in zip(group, pairs):
            out[i] = (vector_metrics(left, right, top), 0.0)
        share = (time.perf_counter() - started) / len(group)
        out.update({i: (out[i][0], share) for i, _, _ in group})
    return out


def rand_spectra_table(rows: list, permuted: dict):
    """layout.SPECTRA_COLUMNS of the permuted matrices: each matrix's pooled permuted singular
    values (all its replicas), descending, index 0 up."""
    data = {column: [] for column in SPECTRA_COLUMNS}
    sigma_parts, index_parts = [], []
    for i, row in enumerate(rows):
        if i not in permuted:
            continue
        sigma = np.sort(np.concatenate(permuted[i][0]))[::-1]
        for column in SPECTRA_COLUMNS[:5]:
            data[column] += [row[column]] * sigma.size
        sigma_parts.append(sigma)
        index_parts.append(np.arange(sigma.size))
    data["sigma"] = np.concatenate(sigma_parts) if sigma_parts else np.zeros(0)
    data["index"] = np.concatenate(index_parts) if index_parts else np.zeros(0, np.int64)
    return table_of(SPECTRA_COLUMNS, data)


def unit_diagnostics(model, unit, tensor_path, inventory_rows, sigmas: dict, settings: dict, backend="cpu",
                     device="cpu", compute_dtype="float32", svd_method="auto", reader=None) -> dict:
    """{"diagnostics": an Arrow table of DIAGNOSTIC_COLUMNS (typed per diagnostic_layout.column_type),
    a row per weight matrix and per refused tensor (1-D parameters have none); "rand_spectra": the
    permuted matrices' singular values (rand_spectra_table)}.

    sigmas: matrix name -> W's singular values from the spectra part (anatomy.sigmas_by_matrix);
    settings: the config block `diagnostics` (seed, max_fingers, finger_threshold, tpl_level,
    trap_entries, vectors, vector_k, vector_top_entries). Matrices are read in compute_dtype as the
    spectra part reads them (reader: anatomy.UnitReader, to share that read); the permuted SVDs run
    by svd_method on `backend` (spectra.compute_spectra). device: the GPU the job held, logged."""
    dtype = numpy_dtype(compute_dtype).type
    items = (reader or UnitReader(tensor_path, inventory_rows))(dtype)
    rows, spectra = [], {}
    for i, (matrix, info) in enumerate(items):
        rows.append({**_identity(model, unit, matrix, info), "rows": matrix.values.shape[0],
                     "cols": matrix.values.shape[1]})
        sigma = spectrum_of(sigmas, matrix.name)
        if sigma is not None:
            spectra[i] = ascending_eigenvalues(sigma)
    ready = [(i, items[i][0], eigs) for i, eigs in spectra.items()]
    permuted = permuted_spectra(ready, backend, svd_method, int(settings["seed"]))
    vectors = vector_rows(ready, settings, backend)
    for i, (matrix, _) in enumerate(items):
        if i not in spectra:
            rows[i].update({**missing(DIAGNOSTIC_METRIC_COLUMNS), "diagnostics_status": NO_SPECTRUM,
                            "diagnostics_seconds": 0.0})
            continue
        started = time.perf_counter()
        rand_sigmas, seconds = permuted.get(i, ([], 0.0))
        metrics, status = matrix_row(matrix.values, spectra[i], rand_sigmas, settings)
        vector, vector_seconds = vectors.get(i, (missing(VECTOR_COLUMNS), 0.0))
        rows[i].update({**metrics, **vector, "diagnostics_status": status,
                        "diagnostics_seconds": seconds + vector_seconds + time.perf_counter() - started})
        log.info("%-55s %6dx%-6d trap %s rand spikes %s dist %.3f fingers %s tpl %s detX %s %7.3fs %s",
                 matrix.name, *matrix.values.shape, rows[i]["correlation_trap"], rows[i]["rand_num_spikes"],
                 rows[i]["rand_distance"], rows[i]["num_fingers"], rows[i]["tpl_preferred"], rows[i]["detx_num"],
                 rows[i]["diagnostics_seconds"], status if status != "ok" else rows[i]["trap_entries"])
    rand = rand_spectra_table(rows, permuted)
    for info, why in refused_tensors(inventory_rows):
        refused = _refused_row(model, unit, info, why)
        rows.append({**{c: refused[c] for c in DIAGNOSTIC_IDENTITY_COLUMNS}, **missing(DIAGNOSTIC_METRIC_COLUMNS),
                     "diagnostics_status": why, "diagnostics_seconds": 0.0})
    log.debug("diagnostics of %s/%s on %s (%s)", model, unit, backend, device)
    return {"diagnostics": table_from_rows(DIAGNOSTIC_COLUMNS, rows, TYPES), "rand_spectra": rand}
