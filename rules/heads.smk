# Per unit: QK / OV kernels of every query head. Per model: the deep-dive heads (table, then plot).

from blockscope.layout import layer_unit


rule heads:
    input:
        tensors="results/{model}/tensors/{unit}.parquet",
        inventory="results/{model}/inventory.parquet",
        dims="results/{model}/model.json",
    output:
        "results/{model}/heads/{unit}.parquet",
    log:
        "logs/{model}/heads/{unit}.log",
    resources:
        mem_mb=scaled(500, 2),
        runtime=scaled(5, 0.02),
    conda:
        "../envs/blockscope.yaml"
    script:
        "../workflow_scripts/heads.py"


rule head_deep_dive:
    input:
        tensors=lambda w: f"results/{w.model}/tensors/{layer_unit(w.layer)}.parquet",
        inventory="results/{model}/inventory.parquet",
        dims="results/{model}/model.json",
    output:
        "results/{model}/heads/deep_dive/layer_{layer}_head_{head}.parquet",
    log:
        "logs/{model}/heads/deep_dive_layer_{layer}_head_{head}.log",
    conda:
        "../envs/blockscope.yaml"
    script:
        "../workflow_scripts/head_deep_dive.py"


# Drawing only: an edit to the plots reruns this rule, never the eigendecomposition.
rule head_deep_dive_plot:
    input:
        table="results/{model}/heads/deep_dive/layer_{layer}_head_{head}.parquet",
        dims="results/{model}/model.json",
    output:
        report(
            "results/{model}/heads/deep_dive/layer_{layer}_head_{head}.png",
            category="{model}",
            subcategory="attention heads",
            caption="../report/head_deep_dive.rst",
        ),
    log:
        "logs/{model}/heads/deep_dive_plot_layer_{layer}_head_{head}.log",
    conda:
        "../envs/blockscope.yaml"
    script:
        "../workflow_scripts/head_deep_dive_plot.py"
