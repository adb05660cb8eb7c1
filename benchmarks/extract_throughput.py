"""Extraction throughput and peak memory, per unit, against a named peer.

Peer: `safetensors.numpy.load_file` of the whole checkpoint (what a notebook does), timed in
the same run. Ours streams one unit at a time; the ratio says what streaming costs or saves.

    .venv/bin/python benchmarks/extract_throughput.py resources/models/smollm2-135m
"""

import subprocess
import sys
from pathlib import Path

CHILD_OURS = """
import sys, time, resource, os, tempfile
import pandas as pd
from blockscope.checkpoint.inventory import build_inventory
from blockscope.io.tensors import extract_unit
ckpt = sys.argv[1]
inv = build_inventory(ckpt)
out = tempfile.mkdtemp()
t = time.perf_counter(); total = written = 0
for unit, rows in inv.groupby('unit'):
    target = os.path.join(out, unit + '.parquet')
    total += extract_unit(ckpt, rows, target); written += os.path.getsize(target)
seconds = time.perf_counter() - t
print(total, written, seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
CHILD_PEER = """
import sys, time, resource, glob
from safetensors.numpy import load_file
t = time.perf_counter(); total = 0
for f in sorted(glob.glob(sys.argv[1] + '/*.safetensors')):
    total += sum(a.nbytes for a in load_file(f).values())
print(total, 0, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def measure(code, checkpoint):
    out = subprocess.run([sys.executable, "-c", code, checkpoint], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    total, written, seconds, rss_kb = out.stdout.split()
    return int(total), int(written), float(seconds), int(rss_kb) / 1024


def main():
    checkpoint = sys.argv[1] if len(sys.argv) > 1 else "resources/models/smollm2-135m"
    total, written, ours_s, ours_rss = measure(CHILD_OURS, checkpoint)
    _, _, peer_s, peer_rss = measure(CHILD_PEER, checkpoint)
    mib = total / 2**20
    print(f"checkpoint {checkpoint}: {mib:.1f} MiB of tensors")
    print(f"blockscope extract (all units, one process): {ours_s:.2f} s, {mib / ours_s:.0f} MiB/s, "
          f"peak RSS {ours_rss:.0f} MiB, Parquet {written / total:.3f}x of tensor bytes")
    print(f"peer safetensors.numpy.load_file (read only):  {peer_s:.2f} s, {mib / peer_s:.0f} MiB/s, "
          f"peak RSS {peer_rss:.0f} MiB")
    print(f"ratio time ours/peer {ours_s / peer_s:.2f}x; peak RSS ours/peer {ours_rss / peer_rss:.2f}x")


if __name__ == "__main__":
    main()
