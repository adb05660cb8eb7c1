# Download or build each model's canonical checkpoint under resources/models/{model}/.


rule fetch:
    input:
        unpack(fetch_inputs),
    output:
        directory(layout.CHECKPOINT),
    params:
        spec=lambda wildcards: model_spec(wildcards.model),
        code=code("fetch"),
    log:
        "logs/{model}/fetch.log",
    benchmark:
        benchmark("fetch")
    resources:
        mem_mb=8000,
    conda:
        "../envs/blockscope.yaml"
    script:
        "../workflow_scripts/fetch.py"
