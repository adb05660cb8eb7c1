"""rule extract: one unit's tensors from the checkpoint into lossless Parquet."""

import os
import time

from blockscope.io.tables import unit_inventory
from blockscope.io.tensors import extract_unit
from blockscope.runtime.run_step import run_step


def main(snakemake):
    unit = snakemake.wildcards.unit
    inventory = unit_inventory(snakemake.input.inventory, unit)
    started = time.perf_counter()
    nbytes = extract_unit(snakemake.input.checkpoint, inventory, snakemake.output[0],
                          model=snakemake.wildcards.model, inventory=snakemake.input.inventory)
    seconds = time.perf_counter() - started
    size = os.path.getsize(snakemake.output[0])
    print(f"[{snakemake.wildcards.model}] {unit}: {len(inventory)} tensors, {nbytes / 2**20:.2f} MiB -> "
          f"{size / 2**20:.2f} MiB Parquet ({size / max(nbytes, 1):.3f}x) in {seconds:.2f} s")


run_step(snakemake, main)
