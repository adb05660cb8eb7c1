"""rule summary_report: results/summary/report.md, every model's findings first."""

import os

import pandas as pd

from blockscope import pair_layout
from blockscope.io.atomic import atomic_path
from blockscope.reporting.compression_section import compress_findings, sensitivity_report_findings
from blockscope.reporting.cross_model_report import summary_report
from blockscope.reporting.delta_section import compare_section, delta_findings
from blockscope.reporting.series_section import series_section
from blockscope.runtime.run_step import run_step


def relative(paths, target_dir) -> dict:
    """figure name -> its path relative to the summary report."""
    return {os.path.basename(p).rsplit(".", 1)[0]: os.path.relpath(p, target_dir) for p in paths}


def pair_sections(snakemake, target_dir) -> list:
    """A section per compare pair (and per series' consecutive pair), then one per series."""
    files, sections = set(map(str, snakemake.input.compare)), []
    for model, other in snakemake.params.pairs:
        distances = pair_layout.COMPARE_DISTANCES.format(model=model, other=other)
        by_layer = pair_layout.COMPARE_BY_LAYER.format(model=model, other=other)
        stem = pair_layout.COMPARE_FIGURE.format(model=model, other=other)
        figures = relative([p for p in files if p.startswith(stem + ".")], target_dir)
        sections.append(compare_section(pd.read_parquet(distances), pd.read_csv(by_layer), figures, model, other))
    for name in snakemake.params.series:
        stem = pair_layout.SERIES_FIGURE.format(series=name)
        figures = relative([p for p in map(str, snakemake.input.series) if p.startswith(stem + ".")], target_dir)
        sections.append(series_section(pd.read_parquet(pair_layout.SERIES_TABLE.format(series=name)), figures,
                                       level=snakemake.params.level))
    return sections


def base_findings(snakemake) -> dict:
    """model -> the findings on its update against its base (a model with `base:` or an adapter)."""
    paths = list(snakemake.input.deltas)
    return {os.path.basename(os.path.dirname(deltas)): delta_findings(
                pd.read_parquet(deltas), pd.read_csv(by_layer), level=snakemake.params.level,
                prefix=f"../{os.path.basename(os.path.dirname(deltas))}/")
            for deltas, by_layer in zip(paths[::2], paths[1::2])}


def main(snakemake):
    inp, params = snakemake.input, snakemake.params
    metrics = pd.read_parquet(inp.metrics)
    models = [os.path.basename(os.path.dirname(path)) for path in inp.reports]
    models = [model for model in models if model not in params.adapters]  # their findings: base_findings
    headmerge = {os.path.basename(os.path.dirname(os.path.dirname(p))): pd.read_parquet(p) for p in inp.headmerge}
    target_dir = os.path.dirname(snakemake.output[0])
    against_base = base_findings(snakemake)
    compressed = {model: [*compress_findings(model, [*inp.compress, *inp.comparisons], target_dir),
                          *sensitivity_report_findings(model, inp.sensitivity, target_dir, params.level),
                          *against_base.get(model, [])]
                  for model in models}
    text = summary_report(models, metrics, pd.read_parquet(inp.precision), headmerge, params.controls,
                          params.findings, params.sensitivity_threshold, params.embedded, list(inp.plots),
                          target_dir, compressed, adapters={model: against_base.get(model, [])
                                                            for model in params.adapters},
                          sections=pair_sections(snakemake, target_dir))
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_text(text)


run_step(snakemake, main)
