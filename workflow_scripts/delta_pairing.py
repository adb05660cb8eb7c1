"""rule delta_pairing: the model and its base hold the same tensors (names and shapes), checked once
from their inventories before any delta job; the first differing tensor is named."""

import json

from blockscope.checkpoint.pairing import check_same_tensors
from blockscope.io.atomic import atomic_path
from blockscope.io.tables import read_rows
from blockscope.runtime.run_step import run_step

COLUMNS = ["param_name", "shape", "dtype"]


def main(snakemake):
    model, base = snakemake.wildcards.model, snakemake.params.base
    rows = read_rows(snakemake.input.inventory, COLUMNS)
    base_rows = read_rows(snakemake.input.base_inventory, COLUMNS)
    check_same_tensors(model, base, rows, base_rows)
    dtypes = sorted({(row["dtype"], other["dtype"]) for row, other in zip(rows, base_rows)})
    record = {"model": model, "base": base, "tensors": len(rows), "dtypes": [list(pair) for pair in dtypes]}
    print(f"[{model}] {len(rows)} tensors, the same names and shapes as {base}")
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")


run_step(snakemake, main)
