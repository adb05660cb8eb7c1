# Inventory from safetensors headers, then one lossless Parquet file per unit.


checkpoint inventory:
    input:
        "resources/models/{model}",
    output:
        inventory="results/{model}/inventory.parquet",
        dims="results/{model}/model.json",
    log:
        "logs/{model}/inventory.log",
    conda:
        "../envs/blockscope.yaml"
    script:
        "../workflow_scripts/inventory.py"


rule extract:
    input:
        checkpoint="resources/models/{model}",
        inventory="results/{model}/inventory.parquet",
    output:
        "results/{model}/tensors/{unit}.parquet",
    log:
        "logs/{model}/extract/{unit}.log",
    resources:
        mem_mb=scaled(500, 1.5),
        runtime=scaled(5, 0.02),
    conda:
        "../envs/blockscope.yaml"
    script:
        "../workflow_scripts/extract.py"
