"""rule spectra: singular values and per-matrix metrics of one unit."""

from blockscope.gpu_slots import claim_gpu
from blockscope.tables import unit_inventory, write_table
from blockscope.unit_analysis import unit_tables
from blockscope.workflow import run_step


def main(snakemake):
    gpu = claim_gpu(snakemake.params.backend)  # this job's own GPU, before torch loads
    inventory = unit_inventory(snakemake.input.inventory, snakemake.wildcards.unit, snakemake.params.selected)
    metrics, spectra = unit_tables(snakemake.wildcards.model, snakemake.wildcards.unit, snakemake.input.tensors,
                                   inventory, backend=snakemake.params.backend,
                                   compute_dtype=snakemake.params.compute_dtype,
                                   svd_method=snakemake.params.svd_method,
                                   hill_fraction=snakemake.params.hill_fraction,
                                   sparsity_threshold=snakemake.params.sparsity_threshold, device=gpu.device)
    write_table(spectra, snakemake.output.spectra)
    write_table(metrics, snakemake.output.metrics)


run_step(snakemake, main)
