"""checkpoint inventory: tensors, units and dims from safetensors headers and config.json."""

import json
from pathlib import Path

from blockscope.checkpoint.inventory import (
    build_inventory,
    config_file,
    model_dims,
    model_identity,
    read_config,
    unit_table,
)
from blockscope.io.atomic import write_json, write_parquet
from blockscope.runtime.run_step import run_step


def main(snakemake):
    model, checkpoint = snakemake.wildcards.model, Path(snakemake.input[0])
    source = json.loads((checkpoint / "source.json").read_text())
    inventory = build_inventory(checkpoint, model=model, source_dtypes=source.get("source_dtypes"))
    # errors and warnings about config.json name the user's file for a local source, not the copy
    dims = model_dims(read_config(checkpoint, model), inventory, model=model, path=config_file(checkpoint))
    dims = {"model": model, **model_identity(source), **dims}  # provenance travels with the dims
    write_parquet(inventory, snakemake.output.inventory)
    write_json(dims, snakemake.output.dims)
    print(f"[{model}] " + ", ".join(f"{k}={v}" for k, v in dims.items() if k not in ("units", "model", "warnings")))
    for warning in dims["warnings"]:
        print(f"WARNING [{model}] {config_file(checkpoint)}: {warning}")
    print(unit_table(inventory).to_string(float_format=lambda x: f"{x:.2f}"))


run_step(snakemake, main)
