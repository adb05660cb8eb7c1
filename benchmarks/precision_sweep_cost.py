"""Per-unit cost of the precision sweep (fp32, fp16, bf16) for one Llama-3.1-8B-shaped layer, on this CPU.

Random float32 matrices of the real shapes (hidden 4096, ffn 14336, 32 heads, 8 kv heads:
q 4096x4096, k/v 1024x4096, o 4096x4096, gate/up 14336x4096, down 4096x14336) go through
blockscope.analysis.anatomy.precision_sweep exactly as the workflow's `anatomy` rule runs it
(backend cpu = LAPACK; the spectra part's singular values given, so the fp32 round trip, which
changes no bit of float32 weights, reuses them and fp16 and bf16 each cost one SVD per matrix).

Each svd_method of --methods (gesdd, gram) in turn: the spectra and the sweep run with it.
A full 14336x4096 SVD takes minutes on a 2-core machine, so by default every dimension is
divided by --scale (4) and times are extrapolated with the O(m n^2) cost of an SVD of an
m x n matrix, m >= n (factor scale^3; the Gram path's m n^2 product and n^3 eigensolver scale
alike); --scale 1 measures the real shapes. The extrapolation to
Llama-3.1-8B is 32 such layers plus the 128256x4096 embedding (measured at its scaled shape,
same cost model; lm_head is untied in Llama-3.1-8B and costs the same again).

Peer: the original precision-sweep script's run time for Llama-3.1-8B on CPU, 2-3 h, is QUOTED
from its description, not measured here. Times are wall seconds on a shared machine.

    python benchmarks/precision_sweep_cost.py [--scale 4] [--precisions fp32,fp16,bf16] [--methods gesdd,gram]
"""

import argparse
import os
import tempfile
import time

import numpy as np
import pandas as pd

from blockscope.analysis.anatomy import analyse_unit, precision_sweep
from blockscope.analysis.round_trip import cast_round_trip
from blockscope.analysis.spectra import compute_spectra
from blockscope.io.tensors import write_unit

HIDDEN, FFN, HEADS, KV_HEADS, LAYERS, VOCAB = 4096, 14336, 32, 8, 32, 128256
HEAD_DIM = HIDDEN // HEADS
LAYER_SHAPES = {  # out x in, as stored
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.k_proj": (KV_HEADS * HEAD_DIM, HIDDEN),
    "self_attn.v_proj": (KV_HEADS * HEAD_DIM, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (FFN, HIDDEN),
    "mlp.up_proj": (FFN, HIDDEN),
    "mlp.down_proj": (HIDDEN, FFN),
}
EMBEDDING = (VOCAB, HIDDEN)
QUOTED_PEER_HOURS = (2.0, 3.0)  # the original script, Llama-3.1-8B, CPU: quoted, not measured
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def seconds_of(run) -> float:
    started = clock()
    run()
    return clock() - started


def svd_cost(shape) -> float:
    """m n^2 with m >= n: the flop count of an SVD up to a constant."""
    m, n = max(shape), min(shape)
    return float(m) * n * n


def scaled(shape, scale):
    return tuple(max(1, d // scale) for d in shape)


def unit_files(work, shapes: dict, rng):
    """A unit file of random float32 matrices and its inventory rows."""
    tensors = {f"model.layers.0.{name}.weight": rng.standard_normal(shape, dtype=np.float32) * 0.02
               for name, shape in shapes.items()}
    path = os.path.join(work, "layer_000.parquet")
    write_unit(((n, "F32", a) for n, a in tensors.items()), path)
    inventory = pd.DataFrame({
        "param_name": list(tensors), "unit": "layer_000", "layer_index": 0,
        "block_type": [n.split(".")[-2] for n in tensors], "shape": [list(a.shape) for a in tensors.values()],
        "dtype": "F32", "source_dtype": "F32", "layout": "out_in"})
    return path, inventory, tensors


def eight_b_seconds(method, shapes, scale, precisions, rng) -> float:
    """The sweep's seconds for Llama-3.1-8B with `method` (gesdd or gram), extrapolated from one
    scaled layer and the scaled embedding; prints the per-shape lines on the way."""
    factor = scale ** 3
    with tempfile.TemporaryDirectory() as work:
        path, inventory, tensors = unit_files(work, shapes, rng)
        started = clock()
        _, spectra = analyse_unit("llama", "layer_000", path, inventory, svd_method=method)
        spectra_seconds = clock() - started
        started = clock()
        sweep = precision_sweep("llama", "layer_000", path, inventory, spectra, precisions, svd_method=method)
        unit_seconds = clock() - started
    svds_per_matrix = sweep.groupby("matrix")["backend"].apply(lambda b: int((b == "cpu").sum())).iloc[0]
    print(f"\n[{method}] per unit (one layer, {len(shapes)} matrices): precision sweep {unit_seconds:.2f} s measured "
          f"({svds_per_matrix} SVDs per matrix; fp32 reuses the spectra part's), spectra part {spectra_seconds:.2f} s")

    print(f"[{method}] per matrix shape (one SVD after the fp16 round trip, then x SVDs per matrix):")
    print(f"{'matrix':20s} {'measured shape':>15s} {'s / SVD':>9s} {'real shape':>12s} {'s extrapolated':>15s}")
    per_layer = 0.0
    for name, shape in shapes.items():
        rounded = cast_round_trip(tensors[f"model.layers.0.{name}.weight"], "fp16", np.float32)
        seconds = seconds_of(lambda: compute_spectra([rounded], "cpu", method))
        real = LAYER_SHAPES[name]
        extrapolated = seconds * svd_cost(real) / svd_cost(shape) * svds_per_matrix
        per_layer += extrapolated
        print(f"{name:20s} {'x'.join(map(str, shape)):>15s} {seconds:9.3f} {'x'.join(map(str, real)):>12s} "
              f"{extrapolated:15.1f}")
    measured_layer = unit_seconds * factor
    print(f"[{method}] one layer at the real shapes: {measured_layer:.0f} s from the measured unit x {factor}, "
          f"{per_layer:.0f} s from the per-shape SVDs")

    small_embedding = scaled(EMBEDDING, scale)
    matrix = rng.standard_normal(small_embedding, dtype=np.float32) * 0.02
    rounded = cast_round_trip(matrix, "fp16", np.float32)
    seconds = seconds_of(lambda: compute_spectra([rounded], "cpu", method))
    embedding = seconds * svd_cost(EMBEDDING) / svd_cost(small_embedding) * svds_per_matrix
    print(f"[{method}] embedding {'x'.join(map(str, EMBEDDING))}: {seconds:.2f} s / SVD at "
          f"{'x'.join(map(str, small_embedding))} -> {embedding:.0f} s extrapolated")
    total = LAYERS * measured_layer + 2 * embedding  # embed_tokens and the untied lm_head
    print(f"[{method}] Llama-3.1-8B, {LAYERS} layers + embed_tokens + lm_head: {total:.0f} s = {total / 3600:.2f} h "
          f"(blockscope precision sweep, CPU, extrapolated)")
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--precisions", default="fp32,fp16,bf16")
    parser.add_argument("--methods", default="gesdd,gram", help="svd_method values to extrapolate, in turn")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="cpu: this process's CPU seconds (with OPENBLAS_NUM_THREADS=1 on a shared machine)")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    precisions, scale = args.precisions.split(","), args.scale
    shapes = {name: scaled(shape, scale) for name, shape in LAYER_SHAPES.items()}
    print(f"{args.clock} seconds, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    print(f"precision sweep cost on this CPU ({os.cpu_count()} cores), precisions {precisions}, "
          f"shapes divided by {scale} (x{scale ** 3} by the m n^2 cost model)" if scale > 1 else
          f"precision sweep cost on this CPU ({os.cpu_count()} cores), precisions {precisions}, real shapes")
    totals = {method: eight_b_seconds(method, shapes, scale, precisions, np.random.default_rng(0))
              for method in args.methods.split(",")}

    low, high = QUOTED_PEER_HOURS
    print()
    for method, total in totals.items():
        print(f"Llama-3.1-8B precision sweep, svd_method {method}: {total / 3600:.2f} h; peer (QUOTED, not measured): "
              f"the original script, 2-3 h on CPU -> ratio {total / 3600 / high:.2f} (vs 3 h) to "
              f"{total / 3600 / low:.2f} (vs 2 h)")
    if {"gesdd", "gram"} <= set(totals):
        print(f"gram / gesdd: {totals['gram'] / totals['gesdd']:.2f}")
    print("note: weights stored in bf16 make the bf16 round trip bit-exact too (reused): one SVD per matrix fewer")


if __name__ == "__main__":
    main()
