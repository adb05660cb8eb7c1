"""rule precision: alpha-Hill of each matrix after casting it to each precision and back."""

import pandas as pd

from blockscope.atomic import write_parquet
from blockscope.gpu_slots import claim_gpu
from blockscope.unit_analysis import precision_sweep
from blockscope.workflow import run_step


def main(snakemake):
    gpu = claim_gpu(snakemake.params.backend)  # this job's own GPU, before torch loads
    unit = snakemake.wildcards.unit
    inventory = pd.read_parquet(snakemake.input.inventory, filters=[("unit", "==", unit)])
    metrics = pd.read_parquet(snakemake.input.metrics, columns=["matrix", "backend", "svd_method"])
    inventory = inventory[inventory["param_name"].isin(snakemake.params.selected)]  # what `select` chose
    table = precision_sweep(snakemake.wildcards.model, unit, snakemake.input.tensors, inventory,
                            pd.read_parquet(snakemake.input.spectra), snakemake.params.precisions,
                            compute_dtype=snakemake.params.compute_dtype,
                            hill_fraction=snakemake.params.hill_fraction, backend=snakemake.params.backend,
                            spectra_backend=dict(zip(metrics["matrix"], metrics["backend"])),
                            svd_method=snakemake.params.svd_method,
                            spectra_method=dict(zip(metrics["matrix"], metrics["svd_method"])), device=gpu.device)
    write_parquet(table, snakemake.output[0])
    if len(table):
        wide = table.pivot_table(index="matrix", columns="precision", values="alpha_hill", sort=False)
        print(wide.to_string(float_format=lambda x: f"{x:.3f}"))


run_step(snakemake, main)
