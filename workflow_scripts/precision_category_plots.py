"""rule precision_category_plots: the precision script's per-category charts (category_<type>) and, with
report.per_matrix_charts, one chart per matrix (individual_layers/), from precision.parquet."""

import os
import re

import pandas as pd

from blockscope.io.atomic import atomic_dir
from blockscope.layout import figure_files
from blockscope.reporting.figures.canvas import short_name
from blockscope.reporting.figures.precision import precision_category, precision_matrix
from blockscope.runtime.run_step import run_step


def file_stem(name: str) -> str:
    """A matrix or type name as a file name: anything but letters, digits, '.', '_' and '-' -> '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def main(snakemake):
    model, out, formats = snakemake.wildcards.model, snakemake.output, snakemake.params.formats
    precision = pd.read_parquet(snakemake.input.precision)
    # Each folder is drawn beside its final name and renamed into place whole: the next run would keep
    # a killed job's half folder (Snakemake checks for incomplete outputs only the jobs it finds before
    # evaluating the checkpoints, and this one comes after).
    with atomic_dir(out.categories) as folder:
        for kind, part in precision.groupby("block_type") if len(precision) else []:
            precision_category(part, f"{model}: α-Hill of {kind} by layer, per precision",
                               figure_files(os.path.join(folder, f"category_{file_stem(kind)}"), formats))
    if "matrices" in out.keys():
        with atomic_dir(out.matrices) as folder:
            for matrix, part in precision.groupby("matrix", sort=False) if len(precision) else []:
                alphas = dict(zip(part["precision"], part["alpha_hill"]))
                precision_matrix(alphas, f"{model}: {short_name(matrix)}",
                                 figure_files(os.path.join(folder, file_stem(matrix)), formats))
    print(f"[{model}] {precision['block_type'].nunique() if len(precision) else 0} category charts")


run_step(snakemake, main)
