"""rule model_report: results/{model}/report.md, written with whatever the earlier stages produced."""

import json
import os

import pandas as pd

from blockscope import layout
from blockscope.io.atomic import atomic_path
from blockscope.layout import DETAIL_TABLES
from blockscope.reporting import findings as fd
from blockscope.reporting.compression_section import compress_findings, compress_section, planned_source_dtypes
from blockscope.reporting.measured_costs import read_benchmarks
from blockscope.reporting.model_report import model_report
from blockscope.runtime.run_step import run_step


def read_csv(path) -> pd.DataFrame:
    """A table written by aggregate; an empty one (no columns at all) reads as an empty frame."""
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def compress_lines(model, metrics, paths, target_dir, embedded) -> list:
    """The compression section, when the experiments ran (compress.enabled)."""
    paths = set(map(str, paths))
    quant, prune = (f"{folder.format(model=model)}/summary.parquet" for folder in (layout.COMPRESS_QUANT,
                                                                                   layout.COMPRESS_PRUNE))
    if quant not in paths:
        return []
    skipped = json.loads(open(f"{layout.COMPRESS_QUANT.format(model=model)}/plans.json").read()).get("skipped")
    figures = [(os.path.relpath(p, layout.MODEL_RESULTS.format(model=model)), p)
               for p in sorted(paths) if p.endswith(f"pareto.{embedded}")]
    return compress_section(pd.read_parquet(quant), pd.read_parquet(prune), planned_source_dtypes(metrics),
                            skipped, figures, link=lambda p: os.path.relpath(p, target_dir))


def read_parquet(paths) -> pd.DataFrame | None:
    """The table of an optional input (a list of none or one path)."""
    return pd.read_parquet(paths[0]) if paths else None


def findings(snakemake, metrics, precision_wide) -> list:
    """The findings opening report.md, from the tables this report summarises."""
    inp, params = snakemake.input, snakemake.params
    sensitivity = precision_wide.rename(columns={"layer_name": "matrix"}) if len(precision_wide) else None
    return fd.model_findings(metrics, params.findings, fd.links("", params.embedded), control=read_parquet(inp.control),
                             sensitivity=sensitivity, sensitivity_threshold=params.sensitivity_threshold,
                             headmerge=read_parquet(inp.headmerge),
                             extra=compress_findings(snakemake.wildcards.model, inp.compress,
                                                     os.path.dirname(snakemake.output[0])))


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
        details=dict(zip(DETAIL_TABLES, map(read_csv, inp.details))),
        compress=compress_lines(snakemake.wildcards.model, metrics, inp.compress, os.path.dirname(snakemake.output[0]),
                                snakemake.params.embedded),
        findings=findings(snakemake, metrics, precision_wide))
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_text(text)


run_step(snakemake, main)
