"""rule aggregate: a model's per-unit files -> its tables (Parquet, CSV, JSON)."""

from blockscope.aggregation import model_tables as agg
from blockscope.aggregation.diagnostic_tables import with_diagnostics
from blockscope.compression import hints as qh
from blockscope.io.atomic import atomic_path, write_csv, write_json, write_parquet
from blockscope.io.manifests import read_model_json
from blockscope.io.tables import check_tables, read_frame
from blockscope.layout import HEAD_COLUMNS, METRICS_COLUMNS, PRECISION_COLUMNS
from blockscope.runtime.run_step import run_step


def main(snakemake):
    model, out = snakemake.wildcards.model, snakemake.output
    inp = snakemake.input
    check_tables([*inp.metrics, *inp.heads, *inp.precision, *inp.diagnostics], model)  # damaged files named first
    dims = read_model_json(inp.dims, model)
    metrics = agg.stack((read_frame(p, model=model) for p in inp.metrics), METRICS_COLUMNS)
    metrics = agg.with_provenance(metrics, dims)
    if inp.diagnostics:  # diagnostics.enabled: WeightWatcher's remaining diagnostics, per matrix
        metrics = with_diagnostics(metrics, agg.stack(read_frame(p, model=model) for p in inp.diagnostics))
    write_parquet(metrics, out.metrics)
    write_csv(metrics, out.metrics_csv)
    with atomic_path(out.metrics_json) as tmp:
        metrics.to_json(tmp, orient="records", indent=1)
    heads = agg.stack((read_frame(p, model=model) for p in inp.heads), HEAD_COLUMNS)
    write_parquet(agg.tag_heads_across_layers(heads), out.heads)
    precision = agg.stack((read_frame(p, model=model) for p in inp.precision), PRECISION_COLUMNS)
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
    matrices = len(agg.spectral_rows(metrics))
    print(f"[{model}] {matrices} matrices, {len(metrics) - matrices} statistics-only rows; "
          f"formats suggested: {formats}")
    alpha = phases[phases["metric"] == "alpha"]
    if len(alpha):
        print(alpha.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    else:  # no weight matrix with a spectrum: the statistics and phase tables hold only their headers
        print(f"[{model}] no alpha of any weight matrix: statistics_by_type.csv and phase_analysis.csv are empty")


run_step(snakemake, main)
