# Per model: the deep-dive heads (table, then plot). The per-unit heads table is rule anatomy's.


rule head_deep_dive:
    input:
        tensors=layer_file("tensors"),
        inventory=layout.INVENTORY,
        dims=layout.MODEL_JSON,
    output:
        layout.DEEP_DIVE.replace("{ext}", "parquet"),
    log:
        "logs/{model}/heads/deep_dive_layer_{layer}_head_{head}.log",
    benchmark:
        benchmark("head_deep_dive", "layer_{layer}_head_{head}")
    conda:
        "../envs/blockscope.yaml"
    params:
        # True when the user named this pair in heads.deep_dive: a pair that names no head is then
        # their error; the default pair (middle layer, head 0) gets an empty table and a placeholder.
        user_set=lambda w: [int(w.layer), int(w.head)]
        in [[int(layer), int(head)] for layer, head in config["heads"]["deep_dive"]],
        selected=lambda w: selected(w.model).get(layout.layer_unit(int(w.layer)), []),
        code=code("head_deep_dive"),
    script:
        "../workflow_scripts/head_deep_dive.py"


# Drawing only: an edit to the plots reruns this rule, never the eigendecomposition.
rule head_deep_dive_plot:
    input:
        table=layout.DEEP_DIVE.replace("{ext}", "parquet"),
        dims=layout.MODEL_JSON,
    output:
        figure(
            "results/{model}/heads/deep_dive/layer_{layer}_head_{head}",
            category="{model}",
            subcategory="attention heads",
            caption="../report/head_deep_dive.rst",
        ),
    log:
        "logs/{model}/heads/deep_dive_plot_layer_{layer}_head_{head}.log",
    benchmark:
        benchmark("head_deep_dive_plot", "layer_{layer}_head_{head}")
    conda:
        "../envs/blockscope.yaml"
    params:
        code=code("head_deep_dive_plot"),
    script:
        "../workflow_scripts/head_deep_dive_plot.py"
