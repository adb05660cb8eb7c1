# Download or build each model's canonical checkpoint under resources/models/{model}/.
from blockscope.checkpoint.sources import source_fingerprint


rule fetch:
    input:
        unpack(fetch_inputs),
    output:
        directory(layout.CHECKPOINT),
    log:
        "logs/{model}/fetch.log",
    benchmark:
        benchmark("fetch")
    conda:
        "../envs/blockscope.yaml"
    resources:
        mem_mb=8000,
    params:
        spec=lambda wildcards: model_spec(wildcards.model),
        # local: sizes and mtimes of the user's files, read at DAG time; a change reruns this model
        source_files=lambda wildcards: source_fingerprint(model_spec(wildcards.model)),
        code=code("fetch"),
    script:
        "../workflow_scripts/fetch.py"
