"""rule embedding_plots: the k-means elbow and the PCA scatter of the embedding rows."""

import json

import pandas as pd

from blockscope.plots import embedding_elbow, embedding_pca
from blockscope.workflow import run_step


def by_matrix(frame: pd.DataFrame) -> dict:
    return {name: part for name, part in frame.groupby("matrix", sort=False)} if len(frame) else {}


def main(snakemake):
    model = snakemake.wildcards.model
    chosen = {name: info["k"] for name, info in json.load(open(snakemake.input.summary))["matrices"].items()}
    embedding_elbow(by_matrix(pd.read_parquet(snakemake.input.elbow)), chosen,
                    f"{model}: k-means elbow of embedding rows", snakemake.output.elbow)
    embedding_pca(by_matrix(pd.read_parquet(snakemake.input.points)), f"{model}: embedding rows, PCA",
                  snakemake.output.pca)


run_step(snakemake, main)
