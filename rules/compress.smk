# Per causal LM: the quantisation and pruning plans the spectra suggest, applied and evaluated on
# the base evaluation's corpus windows against uniform, mirrored and random controls of the same budget,
# and compared with them by window (comparisons.parquet).


rule compress_quant:
    input:
        checkpoint=layout.CHECKPOINT,
        dims=layout.MODEL_JSON,
        metrics=layout.METRICS,
        base=layout.EVAL_BASE,
        estimates=compress_estimates_input,
    output:
        **compress_variant(layout.COMPRESS_QUANT),
        summary=f"{layout.COMPRESS_QUANT}/summary.parquet",
        summary_csv=f"{layout.COMPRESS_QUANT}/summary.csv",
        comparisons=f"{layout.COMPRESS_QUANT}/comparisons.parquet",
        comparisons_csv=f"{layout.COMPRESS_QUANT}/comparisons.csv",
        plans=f"{layout.COMPRESS_QUANT}/plans.json",
        hints=[f"{layout.COMPRESS_QUANT}/hint_{preset}.json" for preset in COMPRESS_PRESETS],
    log:
        "logs/{model}/compress_quant.log",
    benchmark:
        benchmark("compress_quant")
    priority: MINUTES_LONG
    conda:
        "../envs/blockscope.yaml"
    resources:
        gpu=GPU_CLAIM,
        mem_mb=12000,
    params:
        settings={
            "quant": COMPRESS["quant"],
            "random_seeds": COMPRESS["random_seeds"],
            "budget_random_plans": COMPRESS["budget_random_plans"],
        },
        group_size=config["quantization"]["group_size"],
        evaluation=compress_comparison_settings(),
        device=BACKEND,
        code=code("compress_quant"),
    script:
        "../workflow_scripts/compress_quant.py"


rule compress_prune:
    input:
        checkpoint=layout.CHECKPOINT,
        dims=layout.MODEL_JSON,
        metrics=layout.METRICS,
        base=layout.EVAL_BASE,
    output:
        **compress_variant(layout.COMPRESS_PRUNE),
        summary=f"{layout.COMPRESS_PRUNE}/summary.parquet",
        summary_csv=f"{layout.COMPRESS_PRUNE}/summary.csv",
        allocations=f"{layout.COMPRESS_PRUNE}/allocations.parquet",
        allocations_csv=f"{layout.COMPRESS_PRUNE}/allocations.csv",
        comparisons=f"{layout.COMPRESS_PRUNE}/comparisons.parquet",
        comparisons_csv=f"{layout.COMPRESS_PRUNE}/comparisons.csv",
        plans=f"{layout.COMPRESS_PRUNE}/plans.json",
    log:
        "logs/{model}/compress_prune.log",
    benchmark:
        benchmark("compress_prune")
    priority: MINUTES_LONG
    conda:
        "../envs/blockscope.yaml"
    resources:
        gpu=GPU_CLAIM,
        mem_mb=12000,
    params:
        settings={
            "prune": {k: v for k, v in COMPRESS["prune"].items() if k not in ("targets", "gpu_targets")},
            "random_seeds": COMPRESS["random_seeds"],
        },
        targets=COMPRESS["prune"]["gpu_targets" if BACKEND == "cuda" else "targets"],
        evaluation=compress_comparison_settings(),
        device=BACKEND,
        code=code("compress_prune"),
    script:
        "../workflow_scripts/compress_prune.py"


# Drawing only: an edit to the plots reruns this rule, never the evaluations.
rule compress_plots:
    input:
        **sensitivity_plot_inputs(),
        quant=f"{layout.COMPRESS_QUANT}/summary.parquet",
        quant_plans=f"{layout.COMPRESS_QUANT}/plans.json",
        prune=f"{layout.COMPRESS_PRUNE}/summary.parquet",
        prune_plans=f"{layout.COMPRESS_PRUNE}/plans.json",
    output:
        **sensitivity_plot_outputs(),
        quant=figure(
            f"{layout.COMPRESS_QUANT}/pareto",
            category="{model}",
            subcategory="compression",
            caption="../report/compress_quant.rst",
        ),
        prune=figure(
            f"{layout.COMPRESS_PRUNE}/pareto",
            category="{model}",
            subcategory="compression",
            caption="../report/compress_prune.rst",
        ),
    log:
        "logs/{model}/compress_plots.log",
    benchmark:
        benchmark("compress_plots")
    conda:
        "../envs/blockscope.yaml"
    params:
        code=code("compress_plots"),
    script:
        "../workflow_scripts/compress_plots.py"
