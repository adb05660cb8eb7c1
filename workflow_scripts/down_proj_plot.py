"""rule down_proj_plot: variance explained per component of the chosen layers' down projections
(report.down_proj_layers), from their spectra."""

import pandas as pd

from blockscope.aggregation.model_tables import spectral_rows
from blockscope.io.tables import read_frame
from blockscope.reporting.figures.canvas import short_name
from blockscope.reporting.figures.spectra import down_proj_variance
from blockscope.runtime.run_step import run_step


def main(snakemake):
    metrics = spectral_rows(pd.read_parquet(snakemake.input.metrics, columns=["matrix", "block_type", "layer_index",
                                                                              "status"]))
    down = metrics[metrics["block_type"] == "down_proj"]
    spectra = {}  # legend label -> sigma: "layer L", or the matrix's name where a layer has several
    for layer, path in zip(snakemake.params.layers, snakemake.input.spectra):
        table = read_frame(path, columns=["matrix", "sigma"], model=snakemake.wildcards.model)
        matrices = down.loc[down["layer_index"] == layer, "matrix"].tolist()
        for matrix in matrices:
            sigma = table.loc[table["matrix"] == matrix, "sigma"].to_numpy()
            if sigma.size:
                spectra[f"layer {layer}" if len(matrices) == 1 else short_name(matrix)] = sigma
    down_proj_variance(spectra, f"{snakemake.wildcards.model}: down projections (W_down), variance explained",
                       list(snakemake.output), reason=f"no down projection with a spectrum in the chosen layers "
                                                      f"{snakemake.params.layers} (report.down_proj_layers: "
                                                      f"{snakemake.params.requested or 'first, middle, last'})")


run_step(snakemake, main)
