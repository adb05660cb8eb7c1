"""rule model_report: results/{model}/report.md, written with whatever the earlier stages produced."""

import json
import os

import pandas as pd

from blockscope.atomic import atomic_path
from blockscope.job_costs import read_benchmarks
from blockscope.layout import VIEW_TABLES
from blockscope.report import model_report
from blockscope.workflow import run_step


def read_csv(path) -> pd.DataFrame:
    """A table written by aggregate; an empty one (no columns at all) reads as an empty frame."""
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def main(snakemake):
    inp = snakemake.input
    text = model_report(
        snakemake.wildcards.model, json.load(open(inp.dims)), pd.read_parquet(inp.metrics),
        pd.read_parquet(inp.heads), read_csv(inp.statistics), read_csv(inp.phases), read_csv(inp.hints),
        read_csv(inp.precision_summary), json.load(open(inp.embedding)),
        {os.path.basename(p).removesuffix(".parquet"): pd.read_parquet(p) for p in inp.deep_dive},
        list(inp.plots), os.path.dirname(snakemake.output[0]), read_benchmarks(inp.benchmarks), list(inp.files),
        precision_wide=read_csv(inp.precision_csv), sensitivity_threshold=snakemake.params.sensitivity_threshold,
        views=dict(zip(VIEW_TABLES, map(read_csv, inp.views))))
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_text(text)


run_step(snakemake, main)
