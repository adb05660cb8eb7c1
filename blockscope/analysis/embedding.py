"""Token-embedding structure: k-means over rows, the elbow, silhouettes, nearest tokens, PCA.

Large vocabularies are fitted with MiniBatchKMeans on a fixed random sample of rows and then
every row is assigned in chunks, so memory stays at the sample plus one chunk. Every random
choice uses `seed`: the same inputs give the same clusters. Rows with a NaN or Inf are left out
(counted in the summary). k stops at one less than the rows clustered (the silhouette needs a
cluster with two rows): a larger k_max is lowered to that, and said so; a matrix with too few
finite rows for the smallest k is skipped, with its reason in the summary instead of clusters.
"""

import logging

import numpy as np
import pandas as pd

CHUNK_ROWS = 8192
log = logging.getLogger(__name__)


def sample_rows(n_rows: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a fixed random sample of rows (all rows when size >= n_rows)."""
    if size >= n_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=size, replace=False))


def finite_rows(matrix) -> np.ndarray:
    """Whether each row is all finite (checked chunk by chunk)."""
    return np.concatenate([np.isfinite(np.asarray(matrix[i:i + CHUNK_ROWS])).all(axis=1)
                           for i in range(0, matrix.shape[0], CHUNK_ROWS)] or [np.zeros(0, bool)])


def row_norm_stats(matrix: np.ndarray) -> dict:
    norms = np.concatenate([np.linalg.norm(np.asarray(matrix[i:i + CHUNK_ROWS], np.float32), axis=1)
                            for i in range(0, matrix.shape[0], CHUNK_ROWS)])
    q = np.quantile(norms, [0.01, 0.25, 0.5, 0.75, 0.99])
    return {"rows": int(norms.size), "norm_mean": float(norms.mean()), "norm_std": float(norms.std()),
            "norm_min": float(norms.min()), "norm_p01": float(q[0]), "norm_q25": float(q[1]),
            "norm_median": float(q[2]), "norm_q75": float(q[3]), "norm_p99": float(q[4]),
            "norm_max": float(norms.max())}


def fit_kmeans(sample: np.ndarray, k: int, seed: int, minibatch: bool):
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if minibatch:
        return MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=4096, n_init=3).fit(sample)
    return KMeans(n_clusters=k, random_state=seed, n_init=4).fit(sample)


def knee(ks, inertias) -> int:
    """The elbow by the Kneedle method (Satopää et al. 2011) on the convex, decreasing curve;
    the middle k when the curve has no knee or fewer than three points (a k_max lowered to what
    a few rows allow)."""
    from kneed import KneeLocator

    ks = list(ks)
    found = KneeLocator(ks, list(inertias), curve="convex", direction="decreasing").knee if len(ks) >= 3 else None
    return int(found) if found is not None else int(ks[len(ks) // 2])


def elbow_table(sample, ks, seed, minibatch, silhouette_sample):
    """inertia and silhouette (on a fixed subsample) for each k."""
    from sklearn.metrics import silhouette_score

    rows, models = [], {}
    sil_index = sample_rows(len(sample), silhouette_sample, seed + 1)
    for k in ks:
        fitted = fit_kmeans(sample, k, seed, minibatch)
        models[k] = fitted
        labels = fitted.labels_[sil_index]
        silhouette = (float(silhouette_score(sample[sil_index], labels, random_state=seed))
                      if len(set(labels)) > 1 else float("nan"))
        rows.append({"k": k, "inertia": float(fitted.inertia_), "silhouette": silhouette})
    return pd.DataFrame(rows), models


def assign_all(matrix, fitted) -> np.ndarray:
    """Cluster of every row, predicted chunk by chunk."""
    return np.concatenate([fitted.predict(np.asarray(matrix[i:i + CHUNK_ROWS], np.float32))
                           for i in range(0, matrix.shape[0], CHUNK_ROWS)])


def nearest_rows(matrix, centers: np.ndarray, count: int) -> list:
    """For each centroid, the `count` row indices nearest to it (Euclidean), over all rows."""
    best = [np.empty(0, int) for _ in centers]
    best_d = [np.empty(0) for _ in centers]
    for start in range(0, matrix.shape[0], CHUNK_ROWS):
        chunk = np.asarray(matrix[start:start + CHUNK_ROWS], np.float32)
        d = ((chunk**2).sum(1)[:, None] - 2 * chunk @ centers.T + (centers**2).sum(1)[None, :])
        for c in range(len(centers)):
            idx = np.concatenate([best[c], start + np.arange(len(chunk))])
            dist = np.concatenate([best_d[c], d[:, c]])
            keep = np.argsort(dist, kind="stable")[:count]
            best[c], best_d[c] = idx[keep], dist[keep]
    return best


def pca_2d(sample: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=seed).fit_transform(sample)


TOKEN_CLUSTER_COLUMNS = ["token_id", "token", "cluster", "distance"]  # the workflow adds `matrix`


def centroid_distances(matrix, centers: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Euclidean distance (float64) of every row to the centroid of its cluster, chunk by chunk."""
    out = np.empty(matrix.shape[0])
    for i in range(0, matrix.shape[0], CHUNK_ROWS):
        chunk = np.asarray(matrix[i:i + CHUNK_ROWS], np.float64)
        out[i:i + len(chunk)] = np.linalg.norm(chunk - centers[labels[i:i + CHUNK_ROWS]].astype(np.float64), axis=1)
    return out


def token_clusters(total: int, kept: np.ndarray, labels, distances, decode=None) -> pd.DataFrame:
    """One row per embedding row: token_id, decoded token ("" without a tokenizer or for an id it
    does not know), cluster (-1 for a row left out for NaN or Inf, or when nothing was clustered)
    and distance to its centroid (NaN then)."""
    cluster = np.full(total, -1, np.int64)
    distance = np.full(total, np.nan)
    if labels is not None:
        cluster[kept], distance[kept] = labels, distances
    return pd.DataFrame({"token_id": np.arange(total), "token": [_decoded(decode, i) for i in range(total)],
                         "cluster": cluster, "distance": distance}, columns=TOKEN_CLUSTER_COLUMNS)


def _decoded(decode, i) -> str:
    if decode is None:
        return ""
    try:
        return decode(int(i)) or ""
    except Exception:  # an id past the tokenizer's vocabulary (padded embedding rows)
        return ""


def empty_results(summary: dict, tokens: pd.DataFrame) -> tuple:
    """What analyse_embedding returns for a matrix it skips: empty tables, every token in cluster -1, the summary."""
    return (pd.DataFrame(columns=["k", "inertia", "silhouette"]),
            pd.DataFrame(columns=["cluster", "size", "nearest_rows", "nearest_tokens"]),
            pd.DataFrame(columns=["row", "pc1", "pc2", "cluster"]), summary, tokens)


def k_max_clamp(ks, usable, rows: int):
    """The sentence saying k_max was lowered to the largest of `ks` that `rows` clustered rows allow
    (usable), or None when every k is usable."""
    if len(usable) == len(ks):
        return None
    return f"k_max {max(ks)} lowered to {max(usable)}: k-means on {rows} rows allows k up to {rows - 1}"


def analyse_embedding(matrix, ks, seed=0, sample_size=20000, silhouette_sample=5000, nearest=8,
                      minibatch_above=20000, decode=None):
    """Everything the embedding stage writes: (elbow, clusters, points, summary, tokens).

    summary["status"] is "ok" or "skipped" (then summary["reason"] says why and the tables are
    empty); summary["dropped_rows"] counts the rows left out for a NaN or Inf; summary["k_tried"]
    is the first and last k fitted, and summary["k_clamped"] the sentence saying k_max was lowered
    to what the rows allow (None when it was not). Row numbers in the tables are those of the
    full matrix.
    """
    ks = list(ks)
    finite = finite_rows(matrix)
    kept, total = np.flatnonzero(finite), int(matrix.shape[0])
    counts = {"total_rows": total, "finite_rows": int(kept.size), "dropped_rows": total - int(kept.size)}
    if counts["dropped_rows"]:
        log.warning("%d of %d rows have NaN or Inf values: left out of the clustering", counts["dropped_rows"], total)
        matrix = np.asarray(matrix[kept])  # a copy of the finite rows only
    index = sample_rows(kept.size, sample_size, seed)
    usable = [k for k in ks if k < len(index)]  # the most clusters the sampled rows allow: one row fewer
    if not usable:
        nan = f" ({counts['dropped_rows']} with NaN or Inf)" if counts["dropped_rows"] else ""
        reason = (f"{kept.size} finite rows of {total}{nan}: k-means with k = {min(ks, default=0)} needs at least "
                  f"{min(ks, default=0) + 1} rows")
        log.warning("skipped: %s", reason)
        return empty_results({"status": "skipped", "reason": reason, **counts},
                             token_clusters(total, kept, None, None, decode))
    clamped = k_max_clamp(ks, usable, len(index))
    if clamped:
        log.warning("%s", clamped)
    ks = usable
    original = lambda rows: kept[np.asarray(rows, dtype=int)]  # noqa: E731  row numbers in the full matrix
    sample = np.asarray(matrix[index], dtype=np.float32)
    minibatch = matrix.shape[0] > minibatch_above
    elbow, models = elbow_table(sample, ks, seed, minibatch, silhouette_sample)
    k = knee(elbow["k"], elbow["inertia"])
    fitted = models[k]
    labels = assign_all(matrix, fitted)
    tokens = token_clusters(total, kept, labels, centroid_distances(matrix, fitted.cluster_centers_, labels), decode)
    sizes = np.bincount(labels, minlength=k)
    near = [original(n) for n in nearest_rows(matrix, fitted.cluster_centers_.astype(np.float32), nearest)]
    clusters = pd.DataFrame({
        "cluster": np.arange(k), "size": sizes,
        "nearest_rows": [list(map(int, n)) for n in near],
        "nearest_tokens": [[_decoded(decode, i) for i in n] if decode else [] for n in near],
    })
    coords = pca_2d(sample, seed)
    points = pd.DataFrame({"row": original(index), "pc1": coords[:, 0], "pc2": coords[:, 1],
                           "cluster": fitted.predict(sample)})
    summary = {"status": "ok", "k": k, "knee_method": "Kneedle (Satopää et al. 2011) on k-means inertia, via kneed",
               "k_tried": [int(ks[0]), int(ks[-1])], "k_clamped": clamped,
               "algorithm": "MiniBatchKMeans" if minibatch else "KMeans", "seed": seed,
               "sample_rows": int(len(index)), "silhouette_rows": int(min(silhouette_sample, len(index))),
               "silhouette_at_k": float(elbow.set_index("k").loc[k, "silhouette"]), **counts,
               **row_norm_stats(matrix)}
    return elbow, clusters, points, summary, tokens
