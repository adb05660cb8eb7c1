"""rule compare_tables: a compare pair's per-unit distances stacked (distances.parquet, .csv), and per
layer and block type (by_layer.csv)."""

from blockscope.aggregation.delta_tables import distances_by_layer, stack_distances
from blockscope.io.atomic import write_csv, write_parquet
from blockscope.runtime.run_step import run_step


def main(snakemake):
    out, model, other = snakemake.output, snakemake.wildcards.model, snakemake.wildcards.other
    distances = stack_distances(list(snakemake.input.distances), model=model)
    by_layer = distances_by_layer(distances)
    write_parquet(distances, out.distances)
    write_csv(distances, out.csv)
    write_csv(by_layer, out.by_layer)
    print(f"[{model}] against {other}: {len(distances)} matrices, {distances['status'].value_counts().to_dict()}")


run_step(snakemake, main)
