"""rule summary_report: results/summary/report.md, every model's findings first."""

import os

import pandas as pd

from blockscope.io.atomic import atomic_path
from blockscope.reporting.compression_section import compress_findings, sensitivity_report_findings
from blockscope.reporting.cross_model_report import summary_report
from blockscope.runtime.run_step import run_step


def main(snakemake):
    inp, params = snakemake.input, snakemake.params
    metrics = pd.read_parquet(inp.metrics)
    models = [os.path.basename(os.path.dirname(path)) for path in inp.reports]
    headmerge = {os.path.basename(os.path.dirname(os.path.dirname(p))): pd.read_parquet(p) for p in inp.headmerge}
    target_dir = os.path.dirname(snakemake.output[0])
    compressed = {model: [*compress_findings(model, [*inp.compress, *inp.comparisons], target_dir),
                          *sensitivity_report_findings(model, inp.sensitivity, target_dir, params.level)]
                  for model in models}
    text = summary_report(models, metrics, pd.read_parquet(inp.precision), headmerge, params.controls,
                          params.findings, params.sensitivity_threshold, params.embedded, list(inp.plots),
                          target_dir, compressed)
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_text(text)


run_step(snakemake, main)
