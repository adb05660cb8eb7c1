"""rule esd_plot: the ESDs of one layer's matrices with their power-law fits."""

import numpy as np
import pandas as pd

from blockscope.plots import esd
from blockscope.workflow import run_step


def main(snakemake):
    spectra = pd.read_parquet(snakemake.input.spectra)
    metrics = pd.read_parquet(snakemake.input.metrics).set_index("matrix")
    panels = [(".".join(name.removesuffix(".weight").split(".")[-3:]),
               group["sigma"].to_numpy(np.float64) ** 2, metrics.loc[name, "alpha"], metrics.loc[name, "xmin"])
              for name, group in spectra.groupby("matrix", sort=False)]
    esd(panels, f"{snakemake.wildcards.model}: eigenvalue spectra of layer {snakemake.wildcards.layer}",
        snakemake.output[0])


run_step(snakemake, main)
