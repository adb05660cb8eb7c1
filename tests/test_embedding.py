"""Embedding clustering: planted structure is found, results are deterministic, memory is chunked."""

import numpy as np
import pytest

from blockscope.embedding import analyse_embedding, nearest_rows, sample_rows


def blobs(n_per, centers, dim, seed):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((centers, dim)) * 10
    return np.concatenate([m + rng.standard_normal((n_per, dim)) for m in means]).astype(np.float32)


def test_planted_clusters_are_found_and_deterministic():
    matrix = blobs(300, 5, 16, 0)
    first = analyse_embedding(matrix, range(2, 11), seed=0, sample_size=1000, silhouette_sample=500,
                              decode=lambda i: f"tok{i}")
    elbow, clusters, points, summary = first
    assert summary["k"] == 5 and summary["silhouette_at_k"] > 0.8
    assert sorted(clusters["size"]) == [300] * 5
    assert all(len(set(np.array(rows) // 300)) == 1 for rows in clusters["nearest_rows"])  # same blob
    assert clusters["nearest_tokens"].iloc[0][0].startswith("tok")
    again = analyse_embedding(matrix, range(2, 11), seed=0, sample_size=1000, silhouette_sample=500)
    assert again[1]["size"].tolist() == clusters["size"].tolist() and again[3]["k"] == 5
    assert np.array_equal(again[2]["cluster"], points["cluster"])


def test_large_vocabularies_use_minibatch_on_a_sample():
    matrix = blobs(8000, 4, 8, 1)  # 32000 rows
    _, clusters, points, summary = analyse_embedding(matrix, range(2, 7), seed=0, sample_size=4000,
                                                     silhouette_sample=1000)
    assert summary["algorithm"] == "MiniBatchKMeans" and summary["sample_rows"] == 4000 and len(points) == 4000
    assert clusters["size"].sum() == 32000 and summary["k"] == 4


def test_nearest_rows_chunked_equals_brute_force(monkeypatch):
    import blockscope.embedding as emb

    monkeypatch.setattr(emb, "CHUNK_ROWS", 37)
    rng = np.random.default_rng(2)
    matrix, centers = rng.standard_normal((500, 6)).astype(np.float32), rng.standard_normal((3, 6)).astype(np.float32)
    got = nearest_rows(matrix, centers, 5)
    for c, rows in enumerate(got):
        brute = np.argsort(((matrix - centers[c]) ** 2).sum(1), kind="stable")[:5]
        assert list(rows) == list(brute)
    assert list(sample_rows(10, 20, 0)) == list(range(10))
