"""rule delta_tables: a model's per-unit deltas stacked (deltas.parquet, deltas.csv) and per layer and
block type (deltas_by_layer.csv)."""

from blockscope.aggregation.delta_tables import deltas_by_layer, stack_deltas
from blockscope.io.atomic import write_csv, write_parquet
from blockscope.runtime.run_step import run_step


def main(snakemake):
    out, model = snakemake.output, snakemake.wildcards.model
    deltas = stack_deltas(list(snakemake.input.deltas), model=model)
    by_layer = deltas_by_layer(deltas)
    write_parquet(deltas, out.deltas)
    write_csv(deltas, out.csv)
    write_csv(by_layer, out.by_layer)
    print(f"[{model}] {len(deltas)} matrices: {deltas['status'].value_counts().to_dict()}")


run_step(snakemake, main)
