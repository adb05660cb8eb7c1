"""rule precision: alpha-Hill of each matrix after casting it to each precision and back."""

from blockscope.gpu_slots import claim_gpu
from blockscope.tables import read_rows, read_table, unit_inventory, write_table
from blockscope.unit_analysis import alpha_hill_grid, precision_table
from blockscope.workflow import run_step


def main(snakemake):
    gpu = claim_gpu(snakemake.params.backend)  # this job's own GPU, before torch loads
    inventory = unit_inventory(snakemake.input.inventory, snakemake.wildcards.unit, snakemake.params.selected)
    spectra_rows = read_rows(snakemake.input.metrics, columns=["matrix", "backend", "svd_method"])
    table = precision_table(snakemake.wildcards.model, snakemake.wildcards.unit, snakemake.input.tensors, inventory,
                            read_table(snakemake.input.spectra, columns=["matrix", "sigma"]),
                            snakemake.params.precisions, compute_dtype=snakemake.params.compute_dtype,
                            hill_fraction=snakemake.params.hill_fraction, backend=snakemake.params.backend,
                            spectra_backend={row["matrix"]: row["backend"] for row in spectra_rows},
                            svd_method=snakemake.params.svd_method,
                            spectra_method={row["matrix"]: row["svd_method"] for row in spectra_rows},
                            device=gpu.device)
    write_table(table, snakemake.output[0])
    print(alpha_hill_grid(table.to_pylist(), snakemake.params.precisions))


run_step(snakemake, main)
