# Inventory from safetensors headers, then one lossless Parquet file per unit.


checkpoint inventory:
    input:
        layout.CHECKPOINT,
    output:
        inventory=layout.INVENTORY,
        dims=layout.MODEL_JSON,
    log:
        "logs/{model}/inventory.log",
    benchmark:
        benchmark("inventory")
    conda:
        "../envs/blockscope.yaml"
    params:
        code=code("inventory"),
    script:
        "../workflow_scripts/inventory.py"


# What `select` chose, beside the inventory (which describes the whole checkpoint and never
# reruns for a new selection): a change of selection reruns this small job and the report only.
rule selection:
    input:
        inventory=layout.INVENTORY,
        dims=layout.MODEL_JSON,
    output:
        layout.SELECTION,
    log:
        "logs/{model}/selection.log",
    benchmark:
        benchmark("selection")
    conda:
        "../envs/blockscope.yaml"
    params:
        selection=lambda w: model_selection(w.model),
        code=code("selection"),
    script:
        "../workflow_scripts/selection.py"


rule extract:
    input:
        checkpoint=layout.CHECKPOINT,
        inventory=layout.INVENTORY,
    output:
        layout.TENSORS,
    log:
        "logs/{model}/extract/{unit}.log",
    benchmark:
        benchmark("extract", "{unit}")
    priority: longest_first("extract")
    conda:
        "../envs/blockscope.yaml"
    resources:
        mem_mb=predicted("extract", "mem_mb"),
        runtime=predicted("extract", "runtime"),
    params:
        code=code("extract"),
    script:
        "../workflow_scripts/extract.py"
