"""rule esd_plot: the ESDs of one layer's matrices with their power-law fits; a matrix without a
spectrum (non-finite weights, ...) gets a panel with its status."""

import numpy as np

from blockscope.aggregation.model_tables import spectral_rows
from blockscope.io.tables import read_frame
from blockscope.reporting.figures.spectra import esd
from blockscope.runtime.run_step import run_step


def main(snakemake):
    model = snakemake.wildcards.model
    spectra = read_frame(snakemake.input.spectra, model=model)
    metrics = spectral_rows(read_frame(snakemake.input.metrics, model=model))  # no 1-D statistics-only rows
    sigma = {name: group["sigma"].to_numpy(np.float64) for name, group in spectra.groupby("matrix", sort=False)} \
        if len(spectra) else {}
    panels = [(".".join(row.matrix.removesuffix(".weight").split(".")[-3:]), sigma.get(row.matrix, np.zeros(0)) ** 2,
               row.alpha, row.xmin, row.status) for row in metrics.itertuples()] if len(metrics) else []
    esd(panels, f"{snakemake.wildcards.model}: eigenvalue spectra of layer {snakemake.wildcards.layer}",
        list(snakemake.output), reason="no 2-D matrix in this layer")


run_step(snakemake, main)
