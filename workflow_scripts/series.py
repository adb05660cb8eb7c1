"""rule series: the members of a series in order, their summary metrics and each one's change from the
one before (members.parquet, members.csv)."""

import os

import pandas as pd

from blockscope.aggregation.series_tables import series_table
from blockscope.io.atomic import write_csv, write_parquet
from blockscope.runtime.run_step import run_step


def pair_of(path):
    """(model, other) of a compare pair's distances file: results/summary/compare/{model}/{other}/..."""
    folder = os.path.dirname(path)
    return os.path.basename(os.path.dirname(folder)), os.path.basename(folder)


def main(snakemake):
    name, members, out = snakemake.wildcards.series, list(snakemake.params.members), snakemake.output
    metrics = {model: pd.read_parquet(path) for model, path in zip(members, snakemake.input.metrics)}
    distances = {pair_of(path): pd.read_parquet(path) for path in snakemake.input.distances}
    table = series_table(name, members, metrics, distances)
    write_parquet(table, out.table)
    write_csv(table, out.csv)
    print(table.to_string(index=False))


run_step(snakemake, main)
