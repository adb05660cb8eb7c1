# Per model: one table per kind from the per-unit files. Across models: stacked tables.


rule aggregate:
    input:
        metrics=per_unit("metrics"),
        heads=per_unit("heads"),
        precision=per_unit("precision"),
        diagnostics=diagnostics_files(),
        dims=layout.MODEL_JSON,
    output:
        metrics=layout.METRICS,
        metrics_csv="results/{model}/metrics.csv",
        metrics_json="results/{model}/metrics.json",
        heads=layout.HEADS,
        precision=layout.PRECISION,
        precision_csv="results/{model}/precision_alpha_hill.csv",
        precision_summary="results/{model}/precision_summary_statistics.csv",
        statistics="results/{model}/statistics_by_type.csv",
        phases="results/{model}/phase_analysis.csv",
        hints="results/{model}/quantization_hints.csv",
        hints_json="results/{model}/quantization_config.json",
    log:
        "logs/{model}/aggregate.log",
    benchmark:
        benchmark("aggregate")
    conda:
        "../envs/blockscope.yaml"
    params:
        quantization=config["quantization"],
        sensitivity_threshold=config["precision"]["sensitivity_threshold"],
        code=code("aggregate"),
    script:
        "../workflow_scripts/aggregate.py"


rule summary:
    input:
        metrics=expand(layout.METRICS, model=CHECKPOINTS),
        heads=expand(layout.HEADS, model=CHECKPOINTS),
        precision=expand(layout.PRECISION, model=CHECKPOINTS),
        dims=expand(layout.MODEL_JSON, model=CHECKPOINTS),
    output:
        metrics=f"{layout.SUMMARY}/metrics.parquet",
        heads=f"{layout.SUMMARY}/heads.parquet",
        precision=f"{layout.SUMMARY}/precision.parquet",
        depth=f"{layout.SUMMARY}/depth_comparison.csv",
    log:
        "logs/summary/summary.log",
    benchmark:
        layout.SUMMARY_BENCHMARK.format(rule="summary")
    conda:
        "../envs/blockscope.yaml"
    params:
        controls=CONTROLS,
        code=code("summary"),
    script:
        "../workflow_scripts/summary.py"
