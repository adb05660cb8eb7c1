"""Embedding clustering: planted structure is found, results are deterministic, memory is chunked."""

import numpy as np

from blockscope.analysis.embedding import analyse_embedding, nearest_rows, sample_rows


def blobs(n_per, centers, dim, seed):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((centers, dim)) * 10
    return np.concatenate([m + rng.standard_normal((n_per, dim)) for m in means]).astype(np.float32)


def test_planted_clusters_are_found_and_deterministic():
    matrix = blobs(300, 5, 16, 0)
    first = analyse_embedding(matrix, range(2, 11), seed=0, sample_size=1000, silhouette_sample=500,
                              decode=lambda i: f"tok{i}")
    elbow, clusters, points, summary, _ = first
    assert summary["k"] == 5 and summary["silhouette_at_k"] > 0.8
    assert sorted(clusters["size"]) == [300] * 5
    assert all(len(set(np.array(rows) // 300)) == 1 for rows in clusters["nearest_rows"])  # same blob
    assert clusters["nearest_tokens"].iloc[0][0].startswith("tok")
    again = analyse_embedding(matrix, range(2, 11), seed=0, sample_size=1000, silhouette_sample=500)
    assert again[1]["size"].tolist() == clusters["size"].tolist() and again[3]["k"] == 5
    assert np.array_equal(again[2]["cluster"], points["cluster"])


def test_large_vocabularies_use_minibatch_on_a_sample():
    matrix = blobs(8000, 4, 8, 1)  # 32000 rows
    _, clusters, points, summary, _ = analyse_embedding(matrix, range(2, 7), seed=0, sample_size=4000,
                                                     silhouette_sample=1000)
    assert summary["algorithm"] == "MiniBatchKMeans" and summary["sample_rows"] == 4000 and len(points) == 4000
    assert clusters["size"].sum() == 32000 and summary["k"] == 4


def test_nearest_rows_chunked_equals_brute_force(monkeypatch):
    import blockscope.analysis.embedding as emb

    monkeypatch.setattr(emb, "CHUNK_ROWS", 37)
    rng = np.random.default_rng(2)
    matrix, centers = rng.standard_normal((500, 6)).astype(np.float32), rng.standard_normal((3, 6)).astype(np.float32)
    got = nearest_rows(matrix, centers, 5)
    for c, rows in enumerate(got):
        brute = np.argsort(((matrix - centers[c]) ** 2).sum(1), kind="stable")[:5]
        assert list(rows) == list(brute)
    assert list(sample_rows(10, 20, 0)) == list(range(10))


def test_non_finite_rows_are_left_out_and_counted(caplog):
    """NaN and Inf rows leave the clustering; row numbers stay those of the full matrix."""
    matrix = blobs(100, 3, 8, 3)
    bad = [5, 150, 299]
    matrix[5, 0], matrix[150], matrix[299, 7] = np.nan, np.nan, np.inf
    with caplog.at_level("WARNING"):
        elbow, clusters, points, summary, _ = analyse_embedding(matrix, range(2, 7), seed=0, sample_size=1000,
                                                             silhouette_sample=500)
    assert "3 of 300 rows have NaN or Inf values" in caplog.text
    assert summary["status"] == "ok" and summary["dropped_rows"] == 3 and summary["finite_rows"] == 297
    assert summary["total_rows"] == 300 and np.isfinite(summary["norm_max"]) and summary["k"] == 3
    assert clusters["size"].sum() == 297 and not set(points["row"]) & set(bad) and len(points) == 297
    nearest = {row for rows in clusters["nearest_rows"] for row in rows}
    assert not nearest & set(bad) and max(nearest) < 300


def test_too_few_finite_rows_skip_the_matrix_with_a_reason(caplog):
    matrix = blobs(10, 2, 4, 4)
    matrix[2:] = np.nan  # 2 finite rows: even the smallest k (2) needs 3
    with caplog.at_level("WARNING"):
        elbow, clusters, points, summary, _ = analyse_embedding(matrix, range(2, 7))
    assert summary["status"] == "skipped" and summary["dropped_rows"] == 18
    assert summary["reason"] == "2 finite rows of 20 (18 with NaN or Inf): k-means with k = 2 needs at least 3 rows"
    assert f"skipped: {summary['reason']}" in caplog.text
    assert len(elbow) == len(clusters) == len(points) == 0 and "k" not in summary
    all_nan = analyse_embedding(np.full((50, 4), np.nan, np.float32), range(2, 4))[3]
    assert all_nan["status"] == "skipped" and all_nan["finite_rows"] == 0
    assert all_nan["reason"] == "0 finite rows of 50 (50 with NaN or Inf): k-means with k = 2 needs at least 3 rows"


def test_k_max_above_the_rows_is_lowered_to_what_they_allow(caplog):
    """embedding.k_max 16 on a 12-row embedding: k runs 2..11 (a silhouette needs a cluster of
    two rows), the log and the summary say so, and the planted clusters are found."""
    matrix = blobs(4, 3, 8, 5)  # 12 rows in 3 well-separated clusters
    with caplog.at_level("WARNING"):
        elbow, clusters, points, summary, tokens = analyse_embedding(matrix, range(2, 17), seed=0, nearest=4)
    sentence = "k_max 16 lowered to 11: k-means on 12 rows allows k up to 11"
    assert summary["status"] == "ok" and summary["k_clamped"] == sentence and sentence in caplog.text
    assert summary["k_tried"] == [2, 11] and elbow["k"].tolist() == list(range(2, 12))
    assert summary["k"] == 3 and sorted(clusters["size"]) == [4, 4, 4] and (tokens["cluster"] >= 0).all()
    assert all(len(set(np.array(rows) // 4)) == 1 for rows in clusters["nearest_rows"])  # each cluster one blob
    # k_step: the largest k of the range that fits; NaN rows count out of what is clustered
    matrix[[0, 5]] = np.nan
    summary = analyse_embedding(matrix, range(2, 17, 4), seed=0)[3]  # k in 2, 6, 10, 14 on 10 finite rows
    assert summary["k_clamped"] == "k_max 14 lowered to 6: k-means on 10 rows allows k up to 9"
    assert summary["k_tried"] == [2, 6] and summary["finite_rows"] == 10
    # three rows: one k is left, no knee to look for
    assert analyse_embedding(blobs(3, 1, 4, 6), range(2, 7))[3]["k"] == 2
    unclamped = analyse_embedding(blobs(30, 2, 4, 3), range(2, 4), sample_size=500, silhouette_sample=50)[3]
    assert unclamped["k_clamped"] is None and unclamped["k_tried"] == [2, 3]


def _capture_fits(monkeypatch):
    """Record every fitted k-means model, to read the centroids the clustering used."""
    from blockscope.analysis import embedding

    fitted, real = [], embedding.fit_kmeans

    def recording(*args, **kwargs):
        fitted.append(real(*args, **kwargs))
        return fitted[-1]

    monkeypatch.setattr(embedding, "fit_kmeans", recording)
    return fitted


def test_token_clusters_label_every_row_with_its_centroid_distance(monkeypatch):
    fitted = _capture_fits(monkeypatch)
    matrix = blobs(60, 3, 6, 2)
    matrix[[5, 77]] = np.nan                       # left out of the clustering: cluster -1, distance NaN
    matrix[100, 2] = np.inf
    vocab = {i: f"t{i}" for i in range(150)}       # a tokenizer shorter than the embedding (padded rows)
    _, clusters, _, summary, tokens = analyse_embedding(matrix, range(2, 6), seed=0, sample_size=1000,
                                                        silhouette_sample=100, decode=lambda i: vocab[i])
    assert tokens.columns.tolist() == ["token_id", "token", "cluster", "distance"]
    assert tokens["token_id"].tolist() == list(range(180))
    assert tokens.loc[[5, 77, 100], "cluster"].tolist() == [-1, -1, -1]
    assert tokens.loc[[5, 77, 100], "distance"].isna().all()
    model = next(m for m in fitted if m.n_clusters == summary["k"])
    ok = tokens[tokens["cluster"] >= 0]
    assert len(ok) == 177 and ok["cluster"].between(0, summary["k"] - 1).all()
    centers = model.cluster_centers_.astype(np.float64)
    ids, labels = ok["token_id"].to_numpy(), ok["cluster"].to_numpy()
    expected = np.linalg.norm(matrix[ids].astype(np.float64) - centers[labels], axis=1)
    assert np.allclose(ok["distance"], expected, rtol=1e-12)
    nearest = np.argmin(((matrix[ids, None, :] - centers[None]) ** 2).sum(-1), axis=1)
    assert (nearest == labels).all()   # each row sits in its nearest centroid's cluster
    assert np.bincount(labels).tolist() == clusters["size"].tolist()
    assert tokens.loc[0, "token"] == "t0" and tokens.loc[149, "token"] == "t149"
    assert tokens.loc[150:, "token"].eq("").all()          # ids past the tokenizer: empty


def test_token_clusters_without_tokenizer_or_clustering():
    matrix = blobs(30, 2, 4, 3)
    tokens = analyse_embedding(matrix, range(2, 4), sample_size=500, silhouette_sample=50)[4]
    assert len(tokens) == 60 and tokens["token"].eq("").all() and (tokens["cluster"] >= 0).all()
    skipped = analyse_embedding(np.full((50, 4), np.nan, np.float32), range(2, 4))
    assert skipped[3]["status"] == "skipped"
    assert len(skipped[4]) == 50 and (skipped[4]["cluster"] == -1).all() and skipped[4]["distance"].isna().all()
