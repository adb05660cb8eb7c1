"""rule deltas: one unit's dW = W - W_base per matrix (a fine-tune against its base, or a peft
adapter's update from its factors), measured like the spectra (blockscope.analysis.delta_unit)."""

import json

from blockscope.analysis.delta_unit import adapter_delta_table, unit_delta_table
from blockscope.checkpoint.adapters import adapter_factors
from blockscope.io.tables import read_rows, selected_rows, text_table, unit_inventory, write_table
from blockscope.runtime.gpu_slots import claim_gpu
from blockscope.runtime.run_step import run_step


def adapter_table(snakemake, base_inventory, device):
    """An adapter-only model: the updates of this unit's matrices, from the adapter's factors."""
    inp, params, model, unit = snakemake.input, snakemake.params, snakemake.wildcards.model, snakemake.wildcards.unit
    shapes = {row["param_name"]: tuple(row["shape"]) for row in read_rows(inp.base_inventory, ["param_name", "shape"])}
    names = {row["param_name"] for row in base_inventory}
    updates = {name: factors for name, factors in adapter_factors(inp.adapter, shapes, model=model).items()
               if name in names}
    return adapter_delta_table(model, params.base, unit, updates=updates, base_tensors=inp.base_tensors,
                               base_inventory=[row for row in base_inventory if row["param_name"] in updates],
                               settings=dict(params.settings), backend=params.backend, device=device)


def main(snakemake):
    gpu = claim_gpu(snakemake.params.backend)  # this job's own GPU, before torch loads
    inp, params, model, unit = snakemake.input, snakemake.params, snakemake.wildcards.model, snakemake.wildcards.unit
    base_inventory = unit_inventory(inp.base_inventory, unit)
    if "adapter" in inp.keys():
        table = adapter_table(snakemake, base_inventory, gpu.device)
    else:
        print(f"[{model}] against {params.base}: {json.loads(open(inp.pairing).read())['tensors']} tensors paired")
        table = unit_delta_table(model, params.base, unit, tensors=inp.tensors, base_tensors=inp.base_tensors,
                                 inventory=unit_inventory(inp.inventory, unit, params.selected),
                                 base_inventory=selected_rows(base_inventory, params.selected),
                                 settings=dict(params.settings), backend=params.backend, device=gpu.device)
    if table.num_rows:
        print(text_table(table.select(["param_name", "relative_change", "delta_numerical_rank",
                                       "delta_effective_rank", "status"])))
    write_table(table, snakemake.output[0])


run_step(snakemake, main)
