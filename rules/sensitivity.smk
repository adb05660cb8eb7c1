# Per causal LM: per-matrix ground truth. Each planned projection matrix alone quantised (the hints'
# lowest format, a harsher one) or pruned at the first target sparsity, scored against the base; on
# the CPU a stratified sample is measured and the rest estimated from an output-error proxy.


rule compress_sensitivity:
    input:
        checkpoint=layout.CHECKPOINT,
        dims=layout.MODEL_JSON,
        metrics=layout.METRICS,
        base=layout.EVAL_BASE,
        precision="results/{model}/precision_alpha_hill.csv",
    output:
        estimates=f"{layout.COMPRESS_SENSITIVITY}/estimates.parquet",
        estimates_csv=f"{layout.COMPRESS_SENSITIVITY}/estimates.csv",
        matrices=f"{layout.COMPRESS_SENSITIVITY}/matrices.parquet",
        matrices_csv=f"{layout.COMPRESS_SENSITIVITY}/matrices.csv",
        agreement=f"{layout.COMPRESS_SENSITIVITY}/agreement.json",
    log:
        "logs/{model}/compress_sensitivity.log",
    benchmark:
        benchmark("compress_sensitivity")
    priority: MINUTES_LONG
    conda:
        "../envs/blockscope.yaml"
    resources:
        gpu=GPU_CLAIM,
        mem_mb=12000,
    params:
        settings={
            "formats": COMPRESS["quant"]["formats"],
            "harsh_format": SENSITIVITY["harsh_format"],
            "matrices": SENSITIVITY["gpu_matrices" if BACKEND == "cuda" else "matrices"],
        },
        prune_target=COMPRESS["prune"]["gpu_targets" if BACKEND == "cuda" else "targets"][0],
        group_size=config["quantization"]["group_size"],
        evaluation=sensitivity_evaluation(),
        device=BACKEND,
        code=code("compress_sensitivity"),
    script:
        "../workflow_scripts/compress_sensitivity.py"


# Which metric predicts the measured sensitivity: a few seconds of statistics on matrices.parquet, so
# a change to the correlations never reruns the measurements.
rule sensitivity_metrics:
    input:
        matrices=f"{layout.COMPRESS_SENSITIVITY}/matrices.parquet",
    output:
        correlations=f"{layout.COMPRESS_SENSITIVITY}/metric_correlations.parquet",
        correlations_csv=f"{layout.COMPRESS_SENSITIVITY}/metric_correlations.csv",
    log:
        "logs/{model}/sensitivity_metrics.log",
    benchmark:
        benchmark("sensitivity_metrics")
    conda:
        "../envs/blockscope.yaml"
    params:
        samples=EVALUATION["bootstrap"],
        seed=0,
        level=EVALUATION["confidence"],
        code=code("sensitivity_metrics"),
    script:
        "../workflow_scripts/sensitivity_metrics.py"
