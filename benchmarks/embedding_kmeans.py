"""Embedding k-means at Llama-3 vocabulary scale (128256 x 4096, bf16) on this machine.

Ours: the embedding stage's full analysis (k = 2..16 on a 20000-row sample with MiniBatchKMeans,
silhouettes, every row assigned in chunks, nearest tokens, PCA). Peer, in the same run: one
scikit-learn KMeans(k=8, n_init=1) over every row, the plain approach. Prints wall times, peak
RSS of each (separate processes) and the ratio.

    .venv/bin/python benchmarks/embedding_kmeans.py [rows] [dim]
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETUP = """
import sys, time, resource
import numpy as np, ml_dtypes
rows, dim = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
centers = rng.standard_normal((12, dim)).astype(np.float32)
matrix = np.empty((rows, dim), ml_dtypes.bfloat16)
for i in range(0, rows, 8192):  # 12 planted clusters plus noise, built in chunks
    n = min(8192, rows - i)
    matrix[i:i + n] = (centers[rng.integers(0, 12, n)] + 2 * rng.standard_normal((n, dim), dtype=np.float32))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
"""
OURS = SETUP + """
from blockscope.analysis.embedding import analyse_embedding
elbow, clusters, points, summary, _tokens = analyse_embedding(matrix, range(2, 17), seed=0)
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base, summary['k'])
"""
PEER = SETUP + """
from sklearn.cluster import KMeans
KMeans(n_clusters=8, n_init=1, random_state=0).fit(matrix.astype(np.float32))
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base, 8)
"""


def run(code, rows, dim):
    out = subprocess.run([sys.executable, "-c", code, str(rows), str(dim)], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    seconds, rss_kb, k = out.stdout.split()
    return float(seconds), int(rss_kb) / 1024, int(k)


def main():
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 128256
    dim = int(sys.argv[2]) if len(sys.argv) > 2 else 4096
    ours, ours_rss, k = run(OURS, rows, dim)
    print(f"embedding {rows} x {dim} bf16 ({rows * dim * 2 / 2**30:.2f} GiB)")
    print(f"blockscope analyse_embedding, k = 2..16 (knee k = {k}): {ours:7.1f} s, extra peak RSS {ours_rss:7.0f} MiB")
    peer, peer_rss, _ = run(PEER, rows, dim)
    print(f"peer sklearn KMeans(k=8, n_init=1) on all rows:      {peer:7.1f} s, extra peak RSS {peer_rss:7.0f} MiB")
    print(f"ratio time ours/peer {ours / peer:.2f}x (ours fits 15 values of k); "
          f"peak RSS ours/peer {ours_rss / peer_rss:.2f}x")


if __name__ == "__main__":
    main()
