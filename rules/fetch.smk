# Download or build each model's canonical checkpoint under resources/models/{model}/.
from blockscope.checkpoint.sources import source_fingerprint
from blockscope.checkpoint.adapter_fetch import adapter_fingerprint


rule fetch:
    input:
        unpack(fetch_inputs),
    output:
        directory(layout.CHECKPOINT),
    log:
        "logs/{model}/fetch.log",
    benchmark:
        benchmark("fetch")
    wildcard_constraints:
        model=FETCHED_WILDCARD,
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


# A peft adapter: checked against its base's checkpoint (with merged: true, merged into it).
rule fetch_adapter:
    input:
        base=lambda w: layout.CHECKPOINT.format(model=MODELS[w.model]["base"]),
    output:
        directory(layout.CHECKPOINT),
    log:
        "logs/{model}/fetch.log",
    benchmark:
        benchmark("fetch")
    wildcard_constraints:
        model=PEFT_WILDCARD,
    conda:
        "../envs/blockscope.yaml"
    resources:
        mem_mb=8000,
    params:
        spec=lambda wildcards: model_spec(wildcards.model),
        # a local adapter's files, read at DAG time: a rewritten adapter refetches
        source_files=lambda wildcards: adapter_fingerprint(model_spec(wildcards.model)),
        code=code("fetch_adapter"),
    script:
        "../workflow_scripts/fetch_adapter.py"
