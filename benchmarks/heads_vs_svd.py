"""The head analysis of a layer against its projections' SVDs, in one run.

Peer: LAPACK singular values of the layer's q, k, v, o projections (what the spectra stage pays).
Ours: every query head's QK and OV kernel metrics (factored: QR of thin factors, d_head x d_head
SVDs and eigenvalues). Measured on the demo model's layer (when extracted) and on
Llama-3-8B-shaped random weights (hidden 4096, 32 heads, 8 kv heads, head_dim 128).

    .venv/bin/python benchmarks/heads_vs_svd.py
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from blockscope import read_unit
from blockscope.analysis.heads import AttentionWeights, attention_weights, heads_table
from blockscope.analysis.spectra import singular_values

ROOT = Path(__file__).resolve().parent.parent


def best_of(repeats, work):
    """Least wall time over repeats (the usual estimate of a short computation's cost)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def measure(label, weights: AttentionWeights, repeats=3):
    projections = (weights.q, weights.k, weights.v, weights.o)
    svd = best_of(repeats, lambda: [singular_values(np.array(m, dtype=np.float32)) for m in projections])
    fresh = lambda: AttentionWeights(*projections, weights.heads, weights.kv_heads, weights.head_dim)  # noqa: E731
    heads = best_of(repeats, lambda: heads_table("bench", "layer", 0, fresh()))
    print(f"{label}: projections' SVDs {svd:7.2f} s | all {weights.heads} heads' QK+OV metrics {heads:6.2f} s "
          f"| ratio heads/SVD {heads / svd:.3f}x")


def main():
    demo = ROOT / "results/smollm2-135m"
    if (demo / "tensors/layer_015.parquet").exists():
        dims = json.loads((demo / "model.json").read_text())
        inventory = pd.read_parquet(demo / "inventory.parquet", filters=[("unit", "==", "layer_015")])
        weights = attention_weights(read_unit(demo / "tensors/layer_015.parquet"), inventory, dims)
        measure("smollm2-135m layer 15 (576 hidden, 9 heads, 3 kv)", weights)
    rng = np.random.default_rng(0)
    hidden, heads, kv, d = 4096, 32, 8, 128
    scale = 1 / np.sqrt(hidden)
    weights = AttentionWeights(
        q=(rng.standard_normal((heads * d, hidden), dtype=np.float32) * scale),
        k=(rng.standard_normal((kv * d, hidden), dtype=np.float32) * scale),
        v=(rng.standard_normal((kv * d, hidden), dtype=np.float32) * scale),
        o=(rng.standard_normal((hidden, heads * d), dtype=np.float32) * scale),
        heads=heads, kv_heads=kv, head_dim=d)
    measure("Llama-3-8B-shaped random layer (4096 hidden, 32 heads, 8 kv)", weights, repeats=1)


if __name__ == "__main__":
    main()
