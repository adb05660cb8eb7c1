# Per causal LM: the quantisation, pruning and low-rank plans the spectra suggest, applied and evaluated on
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


# Low-rank edits (truncated SVDs of the planned matrices, compress.lowrank): the energy, alpha and
# effective-rank allocations with their mirrored, uniform and random controls at each parameter budget,
# and LASER's single late-MLP reductions against the base and a random matrix reduced alike.
rule compress_lowrank:
    input:
        checkpoint=layout.CHECKPOINT,
        dims=layout.MODEL_JSON,
        metrics=layout.METRICS,
        base=layout.EVAL_BASE,
    output:
        **compress_variant(COMPRESS_LOWRANK),
        summary=f"{COMPRESS_LOWRANK}/summary.parquet",
        summary_csv=f"{COMPRESS_LOWRANK}/summary.csv",
        allocations=f"{COMPRESS_LOWRANK}/allocations.parquet",
        allocations_csv=f"{COMPRESS_LOWRANK}/allocations.csv",
        comparisons=f"{COMPRESS_LOWRANK}/comparisons.parquet",
        comparisons_csv=f"{COMPRESS_LOWRANK}/comparisons.csv",
        plans=f"{COMPRESS_LOWRANK}/plans.json",
    log:
        "logs/{model}/compress_lowrank.log",
    benchmark:
        benchmark("compress_lowrank")
    priority: MINUTES_LONG
    conda:
        "../envs/blockscope.yaml"
    resources:
        gpu=GPU_CLAIM,
        mem_mb=12000,
    params:
        settings=lowrank_settings(),
        evaluation=lowrank_evaluation(),
        device=BACKEND,
        code=code("compress_lowrank"),
    script:
        "../workflow_scripts/compress_lowrank.py"


# Drawing only: an edit to the plots reruns this rule, never the evaluations.
rule compress_plots:
    input:
        **sensitivity_plot_inputs(),
        **lowrank_plot_inputs(),
        quant=f"{layout.COMPRESS_QUANT}/summary.parquet",
        quant_plans=f"{layout.COMPRESS_QUANT}/plans.json",
        prune=f"{layout.COMPRESS_PRUNE}/summary.parquet",
        prune_plans=f"{layout.COMPRESS_PRUNE}/plans.json",
    output:
        **sensitivity_plot_outputs(),
        **lowrank_plot_outputs(),
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
