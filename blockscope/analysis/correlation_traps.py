"""Correlation traps (WeightWatcher 0.7.7's randomize=True): the ESD of a seeded random elementwise
permutation of W beside W's own. A permutation keeps every entry and destroys every correlation, so
the permuted matrix is i.i.d. and its ESD a Marchenko-Pastur bulk, unless a few entries are so large
that no permutation can hide them: those leave a spike above the bulk edge, a correlation trap.

Sources: weightwatcher.py apply_random_esd / random_eigenvalues / mp_fit, RMT_Util.py permute_matrix,
jensen_shannon_distance. Where ours differs (the edge fit, one permutation for the distance) is in
docs/metrics.md, "WeightWatcher's diagnostics". The permuted matrices' SVDs are the caller's
(diagnostics.py, through spectra.compute_spectra, batched on a GPU)."""

import hashlib

import numpy as np

from blockscope.analysis.heavytail import MIN_EIGENVALUES, marchenko_pastur_edge, mp_bulk_fit

# WeightWatcher's "hack to improve random estimator": a matrix with fewer eigenvalues than SMALL_ESD
# is permuted REPLICAS times and the replicas' eigenvalues pooled into one randomised ESD.
SMALL_ESD, REPLICAS = 100, 5


def matrix_seed(seed: int, name: str) -> list:
    """The entropy of one matrix's permutations: the config seed and the first 8 bytes of the
    SHA-256 of its name (Python's hash() is salted per process, so it would not repeat)."""
    return [int(seed), int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")]


def replicas_for(n_eigs: int) -> int:
    """How many permutations a matrix with n_eigs eigenvalues gets (WeightWatcher: 5 under 100)."""
    return REPLICAS if n_eigs < SMALL_ESD else 1


def permute(w: np.ndarray, seed: list, replica: int = 0) -> np.ndarray:
    """W's entries in a random order, same shape and dtype: replica `replica` of matrix_seed's
    stream, drawn by its own Generator, so each is bit-identical on a rerun whatever else ran."""
    rng = np.random.default_rng([*seed, int(replica)])
    return rng.permutation(np.ravel(w)).reshape(w.shape)


def pooled_eigenvalues(sigmas: list) -> np.ndarray:
    """lambda = sigma^2 (float64) of every replica's singular values, pooled, ascending."""
    return np.sort(np.concatenate([np.asarray(s, np.float64) ** 2 for s in sigmas]))


def tracy_widom_margin(edge: float, mean_eig: float, rows: int, cols: int) -> float:
    """WeightWatcher's mp_fit margin above the bulk edge before an eigenvalue counts as a spike:
    on eigenvalues rescaled to mean 1, sqrt(Q^-1/2 lambda+^(2/3) M^(-2/3)) with Q = N / M >= 1 and
    M the short side, here scaled back by the mean eigenvalue (about 5 Tracy-Widom widths at
    576 x 576, so a clean matrix's largest eigenvalue, which fluctuates about the edge, is no spike)."""
    short, long = min(rows, cols), max(rows, cols)
    q = long / short
    tw = q ** -0.5 * (edge / mean_eig) ** (2 / 3) * short ** (-2 / 3)
    return float(mean_eig * np.sqrt(tw))


def rand_mp_fit(rand_eigs: np.ndarray, rows: int, cols: int) -> dict:
    """The permuted ESD against its MP bulk: rand_bulk_max (heavytail.mp_bulk_fit's edge: the
    element variance from the bulk's mean eigenvalue, spikes removed until stable), rand_num_spikes
    (eigenvalues above the edge plus tracy_widom_margin), rand_mp_softrank (edge / lambda_max, at
    most 1, as the metrics' mp_softrank), rand_max_eval."""
    eigs = np.asarray(rand_eigs, np.float64)
    _, softrank, variance = mp_bulk_fit(eigs, rows, cols)
    top = float(eigs.max()) if eigs.size else float("nan")
    if not np.isfinite(variance):  # an all-zero matrix: no bulk
        return {"rand_max_eval": top, "rand_bulk_max": float("nan"), "rand_num_spikes": None,
                "rand_mp_softrank": float("nan")}
    edge = marchenko_pastur_edge(variance, rows, cols)
    threshold = edge + tracy_widom_margin(edge, float(eigs.mean()), rows, cols)
    return {"rand_max_eval": top, "rand_bulk_max": float(edge),
            "rand_num_spikes": int(np.count_nonzero(eigs > threshold)), "rand_mp_softrank": softrank}


def jensen_shannon_distance(p: np.ndarray, q: np.ndarray) -> float:
    """WeightWatcher's jensen_shannon_distance(p, q) (RMT_Util.py) without scipy: m = (p + q) / 2,
    sqrt((KL(p || m) + KL(q || m)) / 2) in nats, where KL(a || b), as scipy.stats.entropy, first
    normalises a and b to sum 1 and counts 0 where a is 0. 0 for equal inputs, at most sqrt(ln 2)."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    m = (p + q) / 2
    return float(np.sqrt((_kl(p, m) + _kl(q, m)) / 2))


def _kl(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a / a.sum(), b / b.sum()
    held = a > 0
    return float(np.sum(a[held] * np.log(a[held] / b[held])))


def rand_distance(eigs: np.ndarray, rand_eigs: np.ndarray) -> float:
    """WeightWatcher's rand_distance: jensen_shannon_distance of W's ascending eigenvalues and one
    permutation's, index by index (the k-th smallest against the k-th smallest). Not a distance of
    histograms: each spectrum, divided by its sum (the same ||W||_F^2 for both, a permutation keeps
    it), is read as a distribution over the rank index, so it measures how differently the two
    ESDs spread the matrix's energy over their eigenvalues. NaN when the lengths differ or a sum is 0."""
    eigs, rand_eigs = np.sort(np.asarray(eigs, np.float64)), np.sort(np.asarray(rand_eigs, np.float64))
    if eigs.size != rand_eigs.size or eigs.size == 0 or not (eigs.sum() > 0 and rand_eigs.sum() > 0):
        return float("nan")
    return jensen_shannon_distance(eigs, rand_eigs)


def correlation_trap(rand_num_spikes) -> int | None:
    """1 when the permuted matrix still has a spike above its bulk, 0 when not, None unfitted."""
    return None if rand_num_spikes is None else int(rand_num_spikes > 0)


def trap_entries(w: np.ndarray, count: int) -> str:
    """The `count` largest |w_ij| of W with their (row, col), largest first: "(i, j) w; ...",
    w to 4 significant digits (ties broken by position, so the text repeats on a rerun)."""
    flat = np.abs(np.ravel(w))
    count = min(int(count), flat.size)
    if count <= 0:
        return ""
    top = np.argpartition(flat, flat.size - count)[flat.size - count:]
    top = top[np.lexsort((top, -flat[top]))]
    rows, cols = np.unravel_index(top, w.shape)
    return "; ".join(f"({i}, {j}) {float(w[i, j]):.4g}" for i, j in zip(rows.tolist(), cols.tolist()))


def trap_metrics(w: np.ndarray, eigs: np.ndarray, rand_sigmas: list, entries: int) -> dict:
    """TRAP_COLUMNS of one matrix from its eigenvalues and its permutations' singular values
    (replicas_for(len(eigs)) of them, the first for rand_distance). Fewer than MIN_EIGENVALUES
    eigenvalues: every column missing (no bulk to fit)."""
    if np.size(eigs) < MIN_EIGENVALUES:
        return {"rand_max_eval": float("nan"), "rand_bulk_max": float("nan"), "rand_num_spikes": None,
                "rand_mp_softrank": float("nan"), "rand_distance": float("nan"), "correlation_trap": None,
                "trap_entries": ""}
    out = rand_mp_fit(pooled_eigenvalues(rand_sigmas), *w.shape)
    out["rand_distance"] = rand_distance(eigs, np.asarray(rand_sigmas[0], np.float64) ** 2)
    out["correlation_trap"] = correlation_trap(out["rand_num_spikes"])
    out["trap_entries"] = trap_entries(w, entries) if out["correlation_trap"] == 1 else ""
    return out
