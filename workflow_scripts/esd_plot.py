"""rule esd_plot: the ESDs of one layer's matrices with their power-law fits; a matrix without a
spectrum (non-finite weights, ...) gets a panel with its status. With the diagnostics' optional
inputs (rand_spectra: the unit's permuted singular values; diagnostics: its table, for
rand_bulk_max when the metrics lack it) each panel overlays the permuted matrix's ESD and its
Marchenko-Pastur bulk edge."""

import numpy as np
import pandas as pd

from blockscope.aggregation.model_tables import spectral_rows
from blockscope.io.tables import read_frame
from blockscope.reporting.figures.spectra import esd
from blockscope.runtime.run_step import run_step


def optional_paths(snakemake, name) -> list:
    """The paths of an optional input: none when the rule does not name it or gives it no file."""
    paths = snakemake.input.get(name, [])
    return [paths] if isinstance(paths, str) else list(paths or [])


def by_matrix(frame) -> dict:
    """matrix -> its sigma (descending as stored) of a spectra table."""
    if not len(frame):
        return {}
    return {name: group["sigma"].to_numpy(np.float64) for name, group in frame.groupby("matrix", sort=False)}


def bulk_edges(snakemake, model, metrics) -> dict:
    """matrix -> rand_bulk_max (lambda units): from the metrics when they carry it, else from the
    optional diagnostics input."""
    if "rand_bulk_max" in metrics:
        return dict(zip(metrics["matrix"], pd.to_numeric(metrics["rand_bulk_max"], errors="coerce")))
    frames = [read_frame(p, columns=["matrix", "rand_bulk_max"], model=model)
              for p in optional_paths(snakemake, "diagnostics")]
    edges = {}
    for frame in frames:
        edges.update(zip(frame["matrix"], pd.to_numeric(frame["rand_bulk_max"], errors="coerce")))
    return edges


def randomised(snakemake, model, metrics) -> list | None:
    """Per metrics row, (permuted eigenvalues, bulk edge) or None; None for all without rand_spectra."""
    paths = optional_paths(snakemake, "rand_spectra")
    if not paths or not len(metrics):
        return None
    rand_sigma = {}
    for path in paths:
        rand_sigma.update(by_matrix(read_frame(path, model=model)))
    edges = bulk_edges(snakemake, model, metrics)
    return [(rand_sigma[row.matrix] ** 2, edges.get(row.matrix, np.nan)) if row.matrix in rand_sigma else None
            for row in metrics.itertuples()]


def main(snakemake):
    model = snakemake.wildcards.model
    spectra = read_frame(snakemake.input.spectra, model=model)
    metrics = spectral_rows(read_frame(snakemake.input.metrics, model=model))  # no 1-D statistics-only rows
    sigma = by_matrix(spectra)
    panels = [(".".join(row.matrix.removesuffix(".weight").split(".")[-3:]), sigma.get(row.matrix, np.zeros(0)) ** 2,
               row.alpha, row.xmin, row.status) for row in metrics.itertuples()] if len(metrics) else []
    esd(panels, f"{snakemake.wildcards.model}: eigenvalue spectra of layer {snakemake.wildcards.layer}",
        list(snakemake.output), reason="no 2-D matrix in this layer",
        randomised=randomised(snakemake, model, metrics) if panels else None)


run_step(snakemake, main)
