"""A unit's matrices -> its spectra, metrics and precision-sweep tables.

The per-unit jobs import this module, so it never imports pandas (see blockscope.io.tables): the
inventory comes in as row dicts (or a DataFrame, turned into them), the tables go out as Arrow
tables; analyse_unit and precision_sweep give the same tables as DataFrames.
"""

import logging

import numpy as np

from blockscope.analysis.gram import GRAM_OVERFLOW
from blockscope.analysis.heavytail import alpha_hill, hill_k, tail_eigenvalues
from blockscope.analysis.matrices import Matrix, matrices_of, not_a_matrix, upcast
from blockscope.analysis.matrix_formulas import SPARSITY_THRESHOLD, element_stats, sparsity
from blockscope.analysis.metrics_row import check_matrix, matrix_metrics
from blockscope.analysis.round_trip import RoundTrip, round_trip_is_exact, svd_dtype
from blockscope.analysis.spectra import compute_spectra, svd_method_for
from blockscope.io.dtypes import numpy_dtype
from blockscope.io.tables import is_missing, records, table_from_rows, table_of
from blockscope.io.tensors import iter_unit
from blockscope.layout import (
    ELEMENT_COLUMNS,
    METRICS_COLUMNS,
    PRECISION_COLUMNS,
    SPECTRA_COLUMNS,
    SPECTRAL_METRIC_COLUMNS,
    STATISTICS_ONLY,
)
from blockscope.runtime.gpu_slots import NO_GPU

log = logging.getLogger(__name__)
NO_METRICS = dict.fromkeys([*SPECTRAL_METRIC_COLUMNS, *ELEMENT_COLUMNS], float("nan"))


def refused_tensors(inventory_rows) -> list:
    """(inventory row, why) for every tensor of rank 2 or more that holds no weight matrix:
    integer and bool tensors, 3-D tensors that are not expert stacks, rank 4 and more."""
    refused = []
    for info in records(inventory_rows):
        if len(info["shape"]) >= 2:
            why = not_a_matrix(info["dtype"], info["shape"], info["block_type"])
            if why is not None:
                refused.append((info, why))
    return refused


class UnitReader:
    """reader(dtype) -> the unit's (matrix, inventory row) pairs in that dtype (unit_matrices),
    read once while the same dtype is asked again: the spectra and the precision sweep of one job
    share what they read. Only the last dtype is held; clear() lets it go."""

    def __init__(self, tensor_path, inventory_rows):
        self.tensor_path, self.inventory_rows, self.held = tensor_path, inventory_rows, None

    def __call__(self, dtype):
        if self.held is None or self.held[0] != dtype:
            self.held = None  # the previous dtype's copies go before the next are read
            self.held = (dtype, list(unit_matrices(self.tensor_path, self.inventory_rows, dtype)))
        return self.held[1]

    def clear(self):
        self.held = None


def unit_matrices(tensor_path, inventory_rows, compute_dtype):
    """(Matrix upcast to compute_dtype, its inventory row) for every weight matrix of the unit;
    the refused tensors (refused_tensors) are not read."""
    meta = {info["param_name"]: info for info in records(inventory_rows)}
    refused = {info["param_name"] for info, _ in refused_tensors(inventory_rows)}
    names = [n for n, info in meta.items() if len(info["shape"]) >= 2 and n not in refused]
    for name, array in iter_unit(tensor_path, names=names):
        for matrix in matrices_of(name, array, meta[name]["layout"], meta[name]["block_type"]):
            matrix.values = upcast(matrix.values, compute_dtype)
            yield matrix, meta[name]


def _refused_row(model, unit, info, why) -> dict:
    """The identity of a refused tensor with its reason as status; rows and cols are its
    out x in for a 2-D tensor and NA for rank 3 and more (no matrix is defined), every metric NaN."""
    shape = list(info["shape"])
    rows, cols = (shape[::-1] if info["layout"] == "in_out" else shape) if len(shape) == 2 else (None, None)
    whole = Matrix(info["param_name"], None, np.zeros((0, 0)))  # the tensor as a whole: no expert
    return {**_identity(model, unit, whole, info), "rows": rows, "cols": cols, "design_rank": None,
            **NO_METRICS, "status": why, "warning": "", "source_dtype": info["source_dtype"], "svd_method": "none"}


def vector_rows(model, unit, tensor_path, inventory_rows, sparsity_threshold=SPARSITY_THRESHOLD) -> list:
    """A statistics-only metrics row for every floating 1-D parameter (norm weights, biases):
    mean, std, var, sparsity; rows = its length, cols and design_rank NA, every spectral metric
    NaN, status STATISTICS_ONLY. Non-finite entries leave the statistics NaN, with their count
    in `warning`. Never a spectrum or precision row."""
    meta = {info["param_name"]: info for info in records(inventory_rows)}
    names = [n for n, info in meta.items() if len(info["shape"]) == 1 and numpy_dtype(info["dtype"]).kind not in "iub"]
    rows = []
    for name, array in iter_unit(tensor_path, names=names):
        info = meta[name]
        values = np.asarray(array, dtype=np.float64)
        finite = np.isfinite(values)
        stats = ({**element_stats(values), "sparsity": sparsity(values, sparsity_threshold)} if finite.all()
                 else dict.fromkeys(ELEMENT_COLUMNS, float("nan")))
        warning = "" if finite.all() else f"non-finite entries ({int((~finite).sum())}): statistics NaN"
        whole = Matrix(name, None, np.zeros((0, 0)))
        rows.append({**_identity(model, unit, whole, info), "rows": int(values.size), "cols": None,
                     "design_rank": None, **NO_METRICS, **stats, "status": STATISTICS_ONLY, "warning": warning,
                     "dtype": info["dtype"], "source_dtype": info["source_dtype"], "backend": "none",
                     "svd_method": "none", "seconds": 0.0})
    return rows


def _identity(model, unit, matrix, info) -> dict:
    layer = info["layer_index"]
    return {"model": model, "unit": unit, "param_name": matrix.param_name,
            "expert": matrix.expert, "matrix": matrix.name,
            "layer_index": None if is_missing(layer) else int(layer), "block_type": info["block_type"]}


def analyse_unit(*args, **kwargs):
    """unit_tables as (metrics, spectra) DataFrames."""
    return tuple(table.to_pandas() for table in unit_tables(*args, **kwargs))


def unit_tables(model, unit, tensor_path, inventory_rows, backend="cpu", compute_dtype="float32",
                hill_fraction=0.1, sparsity_threshold=SPARSITY_THRESHOLD, svd_method="auto", device=NO_GPU,
                reader=None):
    """(metrics, spectra) Arrow tables for one unit: a row per matrix (with its spectrum), per
    refused tensor and per 1-D parameter (statistics only, see vector_rows). svd_method: auto,
    gesdd or gram (spectra.svd_method_for); each row records the method that ran. device: the GPU
    the job held (blockscope.runtime.gpu_slots), recorded in every row. reader: dtype -> the unit's
    (matrix, inventory row) pairs, for a caller that reads a unit once for several tables
    (UnitReader); by default they are read here."""
    dtype = numpy_dtype(compute_dtype).type
    items = (reader or UnitReader(tensor_path, inventory_rows))(dtype)
    finite = [i for i, (m, _) in enumerate(items) if check_matrix(m.values) is None]
    sigmas, seconds, used = compute_spectra([items[i][0].values for i in finite], backend, svd_method)
    by_item = {i: (s, t) for i, s, t in zip(finite, sigmas, seconds)}
    overflowed = {i for i, (sigma, _) in by_item.items() if not np.isfinite(sigma).all()}  # GRAM_OVERFLOW
    metric_rows, spectra = [], {column: [] for column in SPECTRA_COLUMNS}
    for i, (matrix, info) in enumerate(items):
        sigma, secs = (np.zeros(0), 0.0) if i in overflowed else by_item.get(i, (np.zeros(0), 0.0))
        row = {**_identity(model, unit, matrix, info),
               **matrix_metrics(matrix.values, sigma, info["source_dtype"], hill_fraction, sparsity_threshold),
               "dtype": info["dtype"], "source_dtype": info["source_dtype"], "compute_dtype": compute_dtype,
               "backend": used if i in by_item else "none",
               "svd_method": svd_method_for(svd_method, matrix.values.shape, dtype) if i in by_item else "none",
               "seconds": secs}
        if i in overflowed:  # no spectrum: every spectral metric NaN, the element statistics kept
            row.update({**dict.fromkeys(SPECTRAL_METRIC_COLUMNS, float("nan")), "status": GRAM_OVERFLOW, "warning": ""})
        metric_rows.append(row)
        for column in SPECTRA_COLUMNS[:5]:
            spectra[column] += [row[column]] * len(sigma)
        spectra["index"].append(np.arange(len(sigma)))
        spectra["sigma"].append(np.asarray(sigma, np.float64))
        log.info("%-55s %6dx%-6d rank %5s/%-5d 90%% %5s eff %8.1f alpha %6.2f sparsity %.3f %7.3fs %s",
                 matrix.name, row["rows"], row["cols"], row["actual_rank"], row["design_rank"],
                 row["svd_90_percent_rank"], row["effective_rank"], row["alpha"], row["sparsity"], secs,
                 row["status"] if row["status"] != "ok" else row["warning"])
    for info, why in refused_tensors(inventory_rows):
        metric_rows.append({**_refused_row(model, unit, info, why), "dtype": info["dtype"],
                            "compute_dtype": compute_dtype, "backend": "none", "seconds": 0.0})
        log.warning("%-55s %s", info["param_name"], why)
    vectors = vector_rows(model, unit, tensor_path, inventory_rows, sparsity_threshold)
    for row in vectors:
        row["compute_dtype"] = compute_dtype
    metric_rows += vectors
    for row in metric_rows:
        row["device"] = device
    for column in ("index", "sigma"):
        spectra[column] = np.concatenate(spectra[column]) if spectra[column] else np.zeros(0)
    return table_from_rows(METRICS_COLUMNS, metric_rows), table_of(SPECTRA_COLUMNS, spectra)


def sigmas_by_matrix(spectra) -> dict:
    """matrix -> its singular values, from a spectra table (Arrow or pandas) in its stored order."""
    if not len(spectra):
        return {}
    def values(name):  # to_pylist for Arrow: its numpy conversion imports pandas
        column = spectra[name]
        return column.to_pylist() if hasattr(column, "to_pylist") else column.tolist()

    names = np.array(values("matrix"), dtype=object)
    sigma = np.array(values("sigma"), dtype=np.float64)
    return {name: sigma[names == name] for name in dict.fromkeys(names)}


def _hill(sigma, hill_fraction):
    """(alpha_hill, k, status) of one spectrum."""
    eigs = np.asarray(sigma, np.float64) ** 2
    k = hill_k(tail_eigenvalues(eigs).size, hill_fraction)
    value = alpha_hill(eigs, k)
    return value, k, "ok" if np.isfinite(value) else "too few eigenvalues"


# Rows an unchecked verdict compares first: a round trip that changes a matrix changes these.
VERDICT_PROBE_ROWS = 8


def round_trip_verdict(rounded: RoundTrip, compare: bool = True, check: bool = True) -> tuple:
    """(problem, unchanged) of a rounded matrix in one pass over its row blocks, never held whole,
    that stops as soon as what was asked is known: with check, check_matrix's reason it cannot be
    analysed (an overflow to Inf, say; None when it can or unchecked); with compare, whether the
    round trip changed no value (False unasked). Unchecked and compared, a changed matrix costs
    its first VERDICT_PROBE_ROWS rows: the sweep leaves the check to the Gram product, which
    reads every block anyway, so a matrix is rounded about once."""
    probe = slice(0, VERDICT_PROBE_ROWS)
    if compare and not check and not np.array_equal(rounded[probe], rounded.source[probe]):
        return None, False  # (an empty matrix compares equal and goes on to check_matrix below)
    finite, unchanged = True, compare
    for source, block in rounded.row_blocks() if check or compare else ():
        finite = not check or bool(np.isfinite(block).all())
        unchanged = unchanged and finite and np.array_equal(block, source)
        if not (finite and (check or unchanged)):
            break
    problem = None if finite and rounded.size else check_matrix(np.asarray(rounded))
    return problem, unchanged and problem is None


def gram_shows_overflow(backend: str, svd_method: str, shape, dtype) -> bool:
    """True when the matrix's SVD is the LAPACK Gram path, whose singular values come out NaN for
    a non-finite matrix (gram.singular_values_gram): the sweep then needs no pass of its own to
    find an overflow. gesdd and torch are given finite matrices only."""
    return backend == "cpu" and svd_method_for(svd_method, shape, dtype) == "gram"


def precision_sweep(*args, **kwargs):
    """precision_table as a DataFrame."""
    return precision_table(*args, **kwargs).to_pandas()


def precision_table(model, unit, tensor_path, inventory_rows, spectra, precisions,
                    compute_dtype="float32", hill_fraction=0.1, backend="cpu", spectra_backend=None,
                    svd_method="auto", spectra_method=None, device=NO_GPU, reader=None):
    """An Arrow table: alpha_hill of every matrix after a round trip through each precision.

    Each precision's SVD runs in svd_dtype (fp64: float64, the others: compute_dtype), all the
    unit's rounded matrices of one precision in one compute_spectra call (batched torch on
    `backend` cuda or torch-cpu, LAPACK on cpu or after a CUDA out-of-memory). Matrices are read
    in the widest of those dtypes, so the fp64 row is the stored weights' own spectrum. Where the
    round trip changes no bit and the SVD dtype is compute_dtype, the singular values of the
    spectra part are reused (backend: spectra_backend[matrix], the spectra part's, else "spectra";
    svd_method likewise from spectra_method). Each SVD uses svd_method_for(svd_method, shape,
    svd_dtype): under auto, a float64 (fp64) row keeps gesdd. A matrix whose stored dtype the
    precision holds exactly (round_trip.round_trip_is_exact) is not even cast. device: the GPU this
    job held (blockscope.runtime.gpu_slots), recorded in every row. reader: as for unit_tables.
    """
    compute = np.dtype(compute_dtype)
    dtypes = {precision: svd_dtype(precision, compute) for precision in precisions}
    read = max([compute, *dtypes.values()], key=lambda d: d.itemsize)
    items = (reader or UnitReader(tensor_path, inventory_rows))(read.type)
    known = sigmas_by_matrix(spectra)
    spectra_backend, spectra_method = spectra_backend or {}, spectra_method or {}
    found = {}  # (item, precision) -> (alpha_hill, k, status, backend, svd_method)
    for precision in precisions:
        dtype, todo = dtypes[precision], []
        for i, (matrix, info) in enumerate(items):
            reusable = dtype == compute and matrix.name in known
            exact = reusable and round_trip_is_exact(info["dtype"], precision)  # then not even cast
            rounded = None if exact else RoundTrip(matrix.values, precision, dtype)
            check = not gram_shows_overflow(backend, svd_method, matrix.values.shape, dtype)
            problem, unchanged = (None, True) if exact else round_trip_verdict(rounded, reusable, check)
            if problem is not None:
                found[i, precision] = (float("nan"), 0, f"{precision}: {problem}", "none", "none")
            elif reusable and unchanged:
                found[i, precision] = (*_hill(known[matrix.name], hill_fraction),
                                       spectra_backend.get(matrix.name, "spectra"),
                                       spectra_method.get(matrix.name, "spectra"))
            else:
                todo.append((i, rounded))
        sigmas, _, used = compute_spectra([rounded for _, rounded in todo], backend, svd_method)
        for (i, rounded), sigma in zip(todo, sigmas):
            if not np.isfinite(sigma).all():  # an overflow the Gram found (gram_shows_overflow)
                problem = check_matrix(np.asarray(rounded)) or GRAM_OVERFLOW
                found[i, precision] = (float("nan"), 0, f"{precision}: {problem}", "none", "none")
                continue
            found[i, precision] = (*_hill(sigma, hill_fraction), used,
                                   svd_method_for(svd_method, rounded.shape, rounded.dtype))
        del todo, sigmas
    rows = []
    for i, (matrix, info) in enumerate(items):
        base = {**_identity(model, unit, matrix, info), "rows": matrix.values.shape[0],
                "cols": matrix.values.shape[1], "source_dtype": info["source_dtype"]}
        for precision in precisions:
            value, k, status, used, method = found[i, precision]
            rows.append({**base, "precision": precision, "svd_dtype": dtypes[precision].name, "backend": used,
                         "svd_method": method, "alpha_hill": value, "k": k, "status": status})
    for info, why in refused_tensors(inventory_rows):  # one row per precision, as for a matrix
        base = {k: v for k, v in _refused_row(model, unit, info, why).items() if k in PRECISION_COLUMNS}
        rows += [{**base, "precision": precision, "svd_dtype": "", "backend": "none", "alpha_hill": float("nan"),
                  "k": 0} for precision in precisions]  # svd_method "none" from _refused_row
    for row in rows:
        row["device"] = device
    return table_from_rows(PRECISION_COLUMNS, rows)


def alpha_hill_grid(rows, precisions) -> str:
    """alpha-Hill per matrix (lines) and precision (columns) of precision_table's rows, for the log."""
    by_matrix = {}
    for row in rows:
        value = row["alpha_hill"]  # NaN is stored as null
        by_matrix.setdefault(row["matrix"], {})[row["precision"]] = float("nan") if value is None else value
    width = max(map(len, by_matrix), default=6)
    lines = [f"{'matrix':<{width}} " + " ".join(f"{p:>8}" for p in precisions)]
    lines += [f"{matrix:<{width}} " + " ".join(f"{values.get(p, float('nan')):8.3f}" for p in precisions)
              for matrix, values in by_matrix.items()]
    return "\n".join(lines)
