"""rule spectra: singular values and per-matrix metrics of one unit."""

import pandas as pd

from blockscope.atomic import write_parquet
from blockscope.gpu_slots import claim_gpu
from blockscope.unit_analysis import analyse_unit
from blockscope.workflow import run_step


def main(snakemake):
    gpu = claim_gpu(snakemake.params.backend)  # this job's own GPU, before torch loads
    unit = snakemake.wildcards.unit
    inventory = pd.read_parquet(snakemake.input.inventory, filters=[("unit", "==", unit)])
    inventory = inventory[inventory["param_name"].isin(snakemake.params.selected)]  # what `select` chose
    metrics, spectra = analyse_unit(snakemake.wildcards.model, unit, snakemake.input.tensors, inventory,
                                    backend=snakemake.params.backend,
                                    compute_dtype=snakemake.params.compute_dtype,
                                    svd_method=snakemake.params.svd_method,
                                    hill_fraction=snakemake.params.hill_fraction,
                                    sparsity_threshold=snakemake.params.sparsity_threshold, device=gpu.device)
    write_parquet(spectra, snakemake.output.spectra)
    write_parquet(metrics, snakemake.output.metrics)


run_step(snakemake, main)
