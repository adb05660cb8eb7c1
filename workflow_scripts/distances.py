"""rule distances: one unit's matrices of a compare pair (or of a series' consecutive members),
how far apart they are (blockscope.analysis.delta_unit.unit_distance_table)."""

from blockscope.analysis.delta_unit import unit_distance_table
from blockscope.io.tables import text_table, unit_inventory, write_table
from blockscope.runtime.gpu_slots import claim_gpu
from blockscope.runtime.run_step import run_step


def main(snakemake):
    gpu = claim_gpu(snakemake.params.backend)
    inp, params, wildcards = snakemake.input, snakemake.params, snakemake.wildcards
    table = unit_distance_table(wildcards.model, wildcards.other, wildcards.unit, tensors=inp.tensors,
                                other_tensors=inp.other_tensors,
                                inventory=unit_inventory(inp.inventory, wildcards.unit, params.selected),
                                other_inventory=unit_inventory(inp.other_inventory, wildcards.unit),
                                settings=dict(params.settings), backend=params.backend, device=gpu.device)
    if table.num_rows:
        print(text_table(table.select(["param_name", "relative_distance", "weight_cosine", "subspace_overlap_left",
                                       "status"])))
    write_table(table, snakemake.output[0])


run_step(snakemake, main)
