"""rule embedding_plots: the k-means elbow and the PCA scatter of the embedding rows."""

import json

import pandas as pd

from blockscope.reporting.figures.embedding import embedding_elbow, embedding_pca
from blockscope.runtime.run_step import run_step


def by_matrix(frame: pd.DataFrame) -> dict:
    return {name: part for name, part in frame.groupby("matrix", sort=False)} if len(frame) else {}


def why_empty(summary: dict) -> str:
    """Why no matrix was clustered: none found, or each one skipped (with its reason)."""
    skipped = [f"{name} skipped: {info.get('reason', info.get('status'))}"
               for name, info in summary["matrices"].items() if info.get("status", "ok") != "ok"]
    return "; ".join(skipped) or summary.get("reason") or "no embedding matrix was clustered"


def main(snakemake):
    model = snakemake.wildcards.model
    summary = json.load(open(snakemake.input.summary))
    chosen = {name: info["k"] for name, info in summary["matrices"].items() if "k" in info}
    reason = why_empty(summary)
    embedding_elbow(by_matrix(pd.read_parquet(snakemake.input.elbow)), chosen,
                    f"{model}: k-means elbow of embedding rows", snakemake.output.elbow, reason=reason)
    embedding_pca(by_matrix(pd.read_parquet(snakemake.input.points)), f"{model}: embedding rows, PCA",
                  snakemake.output.pca, reason=reason)


run_step(snakemake, main)
