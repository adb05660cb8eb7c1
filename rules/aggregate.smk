# Per model: one table per kind from the per-unit files. Across models: stacked tables.


rule aggregate:
    input:
        metrics=per_unit("results/{model}/metrics/{unit}.parquet"),
        heads=per_unit("results/{model}/heads/{unit}.parquet"),
        precision=per_unit("results/{model}/precision/{unit}.parquet"),
        dims="results/{model}/model.json",
        checkpoint="resources/models/{model}",
    output:
        metrics="results/{model}/metrics.parquet",
        metrics_csv="results/{model}/metrics.csv",
        metrics_json="results/{model}/metrics.json",
        heads="results/{model}/heads.parquet",
        precision="results/{model}/precision.parquet",
        precision_csv="results/{model}/precision_alpha_hill.csv",
        precision_summary="results/{model}/precision_summary_statistics.csv",
        statistics="results/{model}/statistics_by_type.csv",
        phases="results/{model}/phase_analysis.csv",
        hints="results/{model}/quantization_hints.csv",
        hints_json="results/{model}/quantization_config.json",
    params:
        quantization=config["quantization"],
    log:
        "logs/{model}/aggregate.log",
    conda:
        "../envs/blockscope.yaml"
    script:
        "../workflow_scripts/aggregate.py"


rule summary:
    input:
        metrics=expand("results/{model}/metrics.parquet", model=MODELS),
        heads=expand("results/{model}/heads.parquet", model=MODELS),
        precision=expand("results/{model}/precision.parquet", model=MODELS),
        dims=expand("results/{model}/model.json", model=MODELS),
    output:
        metrics="results/summary/metrics.parquet",
        heads="results/summary/heads.parquet",
        precision="results/summary/precision.parquet",
        depth="results/summary/depth_comparison.csv",
    params:
        controls=CONTROLS,
    log:
        "logs/summary/summary.log",
    conda:
        "../envs/blockscope.yaml"
    script:
        "../workflow_scripts/summary.py"
