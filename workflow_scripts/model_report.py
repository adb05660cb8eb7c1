"""rule model_report: results/{model}/report.md, written with whatever the earlier stages produced."""

import json
import os

import pandas as pd

from blockscope import findings as fd
from blockscope.atomic import atomic_path
from blockscope.job_costs import read_benchmarks
from blockscope.report import model_report
from blockscope.workflow import run_step


def read_csv(path) -> pd.DataFrame:
    """A table written by aggregate; an empty one (no columns at all) reads as an empty frame."""
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def read_parquet(paths) -> pd.DataFrame | None:
    """The table of an optional input (a list of none or one path)."""
    return pd.read_parquet(paths[0]) if paths else None


def findings(snakemake, metrics, precision_wide) -> list:
    """The findings opening report.md, from the tables this report summarises."""
    inp, params = snakemake.input, snakemake.params
    sensitivity = precision_wide.rename(columns={"layer_name": "matrix"}) if len(precision_wide) else None
    return fd.model_findings(metrics, params.findings, fd.links("", params.embedded), control=read_parquet(inp.control),
                             sensitivity=sensitivity, sensitivity_threshold=params.sensitivity_threshold,
                             headmerge=read_parquet(inp.headmerge))


def main(snakemake):
    inp = snakemake.input
    metrics, precision_wide = pd.read_parquet(inp.metrics), read_csv(inp.precision_csv)
    text = model_report(
        snakemake.wildcards.model, json.load(open(inp.dims)), metrics,
        pd.read_parquet(inp.heads), read_csv(inp.statistics), read_csv(inp.phases), read_csv(inp.hints),
        read_csv(inp.precision_summary), json.load(open(inp.embedding)),
        {os.path.basename(p).removesuffix(".parquet"): pd.read_parquet(p) for p in inp.deep_dive},
        list(inp.plots), os.path.dirname(snakemake.output[0]), read_benchmarks(inp.benchmarks), list(inp.files),
        precision_wide=precision_wide, sensitivity_threshold=snakemake.params.sensitivity_threshold,
        findings=findings(snakemake, metrics, precision_wide))
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_text(text)


run_step(snakemake, main)
