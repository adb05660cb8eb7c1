"""rule aggregate: a model's per-unit files -> its tables (Parquet, CSV, JSON)."""

import json
from pathlib import Path

import pandas as pd

from blockscope.aggregation import model_tables as agg
from blockscope.compression import hints as qh
from blockscope.io.atomic import atomic_path, write_csv, write_json, write_parquet
from blockscope.layout import HEAD_COLUMNS, METRICS_COLUMNS, PRECISION_COLUMNS
from blockscope.runtime.run_step import run_step


def main(snakemake):
    model, out = snakemake.wildcards.model, snakemake.output
    dims = json.loads(Path(snakemake.input.dims).read_text())
    metrics = agg.stack((pd.read_parquet(p) for p in snakemake.input.metrics), METRICS_COLUMNS)
    metrics = agg.with_provenance(metrics, dims)
    write_parquet(metrics, out.metrics)
    write_csv(metrics, out.metrics_csv)
    with atomic_path(out.metrics_json) as tmp:
        metrics.to_json(tmp, orient="records", indent=1)
    heads = agg.stack((pd.read_parquet(p) for p in snakemake.input.heads), HEAD_COLUMNS)
    write_parquet(agg.tag_heads_across_layers(heads), out.heads)
    precision = agg.stack((pd.read_parquet(p) for p in snakemake.input.precision), PRECISION_COLUMNS)
    write_parquet(precision, out.precision)
    threshold = snakemake.params.sensitivity_threshold
    write_csv(agg.precision_wide(precision, threshold), out.precision_csv)
    write_csv(agg.precision_summary(precision, threshold), out.precision_summary)
    statistics = agg.statistics_by_type(metrics)
    write_csv(statistics, out.statistics)
    phases = agg.phase_analysis(metrics, dims["layers"])
    write_csv(phases, out.phases)
    settings = snakemake.params.quantization
    hints = qh.quantization_hints(metrics, settings)
    write_csv(hints, out.hints)
    write_json(qh.quantization_config(model, hints, settings), out.hints_json)
    formats = hints["suggested_format"].value_counts(dropna=False).to_dict()
    print(f"[{model}] {len(metrics)} matrices; formats suggested: {formats}")
    print(phases[phases["metric"] == "alpha"].to_string(index=False, float_format=lambda x: f"{x:.3f}"))


run_step(snakemake, main)
