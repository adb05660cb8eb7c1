"""rule model_report: results/{model}/report.md, written with whatever the earlier stages produced."""

import json
import os

import pandas as pd

from blockscope import layout
from blockscope.diagnostic_layout import COMPRESS_LOWRANK
from blockscope.io.atomic import atomic_path
from blockscope.layout import DETAIL_TABLES
from blockscope.reporting import findings as fd
from blockscope.reporting.compression_section import (
    compress_findings,
    compress_section,
    planned_source_dtypes,
    sensitivity_report_findings,
)
from blockscope.reporting.delta_section import delta_findings, delta_section
from blockscope.reporting.diagnostics_section import diagnostics_findings, diagnostics_section
from blockscope.reporting.measured_costs import read_benchmarks
from blockscope.reporting.model_report import model_report
from blockscope.reporting.sensitivity_section import sensitivity_section
from blockscope.runtime.run_step import run_step


def read_csv(path) -> pd.DataFrame:
    """A table written by aggregate; an empty one (no columns at all) reads as an empty frame."""
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def compress_lines(model, metrics, paths, target_dir, embedded, group_size) -> list:
    """The compression section, when the experiments ran (compress.enabled): the summaries, their
    comparisons, the quantisation plans (group size, what each format was evaluated as)."""
    paths = set(map(str, paths))
    folders = [folder.format(model=model) for folder in (layout.COMPRESS_QUANT, layout.COMPRESS_PRUNE)]
    if f"{folders[0]}/summary.parquet" not in paths:
        return []
    quant, prune = (pd.read_parquet(f"{folder}/summary.parquet") for folder in folders)
    low = COMPRESS_LOWRANK.format(model=model)
    comparisons = {kind: pd.read_parquet(f"{folder}/comparisons.parquet")
                   for kind, folder in zip(("quant", "prune", "lowrank"), [*folders, low])
                   if f"{folder}/comparisons.parquet" in paths}
    lowrank = pd.read_parquet(f"{low}/summary.parquet") if f"{low}/summary.parquet" in paths else None
    quant_plans = json.loads(open(f"{folders[0]}/plans.json").read())
    figures = [(os.path.relpath(p, layout.MODEL_RESULTS.format(model=model)), p)
               for p in sorted(paths) if p.endswith(f"pareto.{embedded}")]
    return compress_section(quant, prune, planned_source_dtypes(metrics), quant_plans.get("skipped"), figures,
                            link=lambda p: os.path.relpath(p, target_dir), comparisons=comparisons,
                            quant_plans=quant_plans, group_size=group_size, lowrank=lowrank)


def sensitivity_lines(model, paths, target_dir, embedded, level) -> list:
    """The per-matrix sensitivity section, when its tables are inputs (compress.sensitivity on)."""
    paths, folder = set(map(str, paths)), layout.COMPRESS_SENSITIVITY.format(model=model)
    matrices, correlations, agreement = (f"{folder}/{name}" for name in
                                         ("matrices.parquet", "metric_correlations.parquet", "agreement.json"))
    if matrices not in paths:
        return []
    figures = [(os.path.relpath(p, layout.MODEL_RESULTS.format(model=model)), p)
               for p in sorted(paths) if p.endswith(f".{embedded}")]
    return sensitivity_section(pd.read_parquet(matrices),
                               pd.read_parquet(correlations) if correlations in paths else None,
                               json.loads(open(agreement).read()) if agreement in paths else None,
                               lambda p: os.path.relpath(p, target_dir), figures, level)


def read_parquet(paths) -> pd.DataFrame | None:
    """The table of an optional input (a list of none or one path)."""
    return pd.read_parquet(paths[0]) if paths else None


def findings(snakemake, metrics, precision_wide) -> list:
    """The findings opening report.md, from the tables this report summarises."""
    inp, params = snakemake.input, snakemake.params
    sensitivity = precision_wide.rename(columns={"layer_name": "matrix"}) if len(precision_wide) else None
    links = fd.links("", params.embedded)
    return fd.model_findings(metrics, params.findings, fd.links("", params.embedded), control=read_parquet(inp.control),
                             sensitivity=sensitivity, sensitivity_threshold=params.sensitivity_threshold,
                             headmerge=read_parquet(inp.headmerge),
                             extra=[*diagnostics_findings(metrics, params.tpl_level, link=links),
                                    *compression_findings(snakemake)])


def compression_findings(snakemake) -> list:
    """The compression experiments' findings, then the per-matrix sensitivity's (when they ran)."""
    model, report_dir = snakemake.wildcards.model, os.path.dirname(snakemake.output[0])
    inp = snakemake.input
    return [*compress_findings(model, [*inp.compress, *inp.comparisons], report_dir),
            *sensitivity_report_findings(model, inp.sensitivity, report_dir, snakemake.params.level)]


def diagnostics_lines(metrics, plots, target_dir, params) -> list:
    """WeightWatcher's remaining diagnostics (the anatomy's diagnostics part), with the ESD figures that overlay the
    permuted spectra; one line saying they were not computed when the metrics lack them."""
    figures = {os.path.basename(p).rsplit(".", 1)[0]: p for p in plots
               if "/esd_layer_" in p and p.endswith(f".{params.embedded}")}
    return diagnostics_section(metrics, figures, lambda p: os.path.relpath(p, target_dir), level=params.tpl_level)


def delta_tables(snakemake):
    """(deltas, by layer) of a model with a base; (None, None) otherwise."""
    paths = list(snakemake.input.deltas)
    if not paths:
        return None, None
    return pd.read_parquet(paths[0]), pd.read_csv(paths[1])


def delta_report_findings(snakemake) -> list:
    deltas, by_layer = delta_tables(snakemake)
    return [] if deltas is None else delta_findings(deltas, by_layer, level=snakemake.params.level)


def delta_lines(snakemake, target_dir) -> str:
    """The section on the model against its base (a model with `base:`)."""
    deltas, by_layer = delta_tables(snakemake)
    if deltas is None:
        return ""
    figures = {os.path.basename(p).rsplit(".", 1)[0]: os.path.relpath(p, target_dir)
               for p in snakemake.input.delta_plots}
    return delta_section(deltas, by_layer, figures, snakemake.wildcards.model, snakemake.params.base,
                         level=snakemake.params.level, with_findings=False)  # they open the report


def main(snakemake):
    inp, params, model = snakemake.input, snakemake.params, snakemake.wildcards.model
    target_dir = os.path.dirname(snakemake.output[0])
    metrics, precision_wide = pd.read_parquet(inp.metrics), read_csv(inp.precision_csv)
    text = model_report(
        model, json.load(open(inp.dims)), metrics,
        pd.read_parquet(inp.heads), read_csv(inp.statistics), read_csv(inp.phases), read_csv(inp.hints),
        read_csv(inp.precision_summary), json.load(open(inp.embedding)),
        {os.path.basename(p).removesuffix(".parquet"): pd.read_parquet(p) for p in inp.deep_dive},
        list(inp.plots), target_dir, read_benchmarks(inp.benchmarks), list(inp.files),
        precision_wide=precision_wide, sensitivity_threshold=params.sensitivity_threshold,
        details=dict(zip(DETAIL_TABLES, map(read_csv, inp.details))),
        compress=[*diagnostics_lines(metrics, inp.plots, target_dir, params),
                  *compress_lines(model, metrics, [*inp.compress, *inp.comparisons], target_dir, params.embedded,
                                  params.group_size),
                  *sensitivity_lines(model, inp.sensitivity, target_dir, params.embedded, params.level)],
        findings=findings(snakemake, metrics, precision_wide) + delta_report_findings(snakemake),
        deltas=delta_lines(snakemake, target_dir))
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_text(text)


run_step(snakemake, main)
