"""rule selection: what the model's `select` chose, as results/{model}/selection.json."""

import json

import pandas as pd

from blockscope.checkpoint.selection import describe, is_everything, selected_units
from blockscope.io.atomic import write_json
from blockscope.runtime.run_step import run_step


def main(snakemake):
    model, selection = snakemake.wildcards.model, snakemake.params.selection
    dims = json.loads(open(snakemake.input.dims).read())
    inventory = pd.read_parquet(snakemake.input.inventory, columns=["param_name", "unit", "layer_index", "shape"])
    chosen = selected_units(inventory, selection, dims["layers"], model=model, path="config.yaml")
    record = {"model": model, "selection": selection, "everything": is_everything(selection),
              "selected_units": list(chosen), "selected_tensors": sum(map(len, chosen.values())),
              "tensors": len(inventory), "selected_params": chosen}
    write_json(record, snakemake.output[0])
    print(f"[{model}] select {describe(selection)}: {record['selected_tensors']} of {record['tensors']} tensors "
          f"in {len(chosen)} units: {', '.join(chosen)}")


run_step(snakemake, main)
