# Per causal LM: merge similar heads at each threshold, evaluate on WikiText-2 against controls.


rule fetch_corpus:
    output:
        "resources/corpus/wikitext-2-raw-test.txt",
    params:
        corpus=config["headmerge"]["corpus"],
    log:
        "logs/corpus.log",
    conda:
        "../envs/blockscope.yaml"
    script:
        "../workflow_scripts/fetch_corpus.py"


rule headmerge:
    input:
        checkpoint="resources/models/{model}",
        inventory="results/{model}/inventory.parquet",
        dims="results/{model}/model.json",
        corpus="resources/corpus/wikitext-2-raw-test.txt",
    output:
        thresholds=expand("results/{{model}}/headmerge/threshold_{t}.json", t=config["headmerge"]["thresholds"]),
        summary="results/{model}/headmerge/summary.parquet",
        similarities="results/{model}/headmerge/similarities.parquet",
    params:
        settings=config["headmerge"],
        device=BACKEND,
    log:
        "logs/{model}/headmerge.log",
    resources:
        gpu=GPU_CLAIM,
        mem_mb=12000,
    conda:
        "../envs/blockscope.yaml"
    script:
        "../workflow_scripts/headmerge.py"


# Drawing only: an edit to the plots reruns this rule, never the evaluation.
rule headmerge_plots:
    input:
        thresholds=expand("results/{{model}}/headmerge/threshold_{t}.json", t=config["headmerge"]["thresholds"]),
        summary="results/{model}/headmerge/summary.parquet",
        similarities="results/{model}/headmerge/similarities.parquet",
    output:
        sweep=report(
            "results/{model}/headmerge/sweep.png",
            category="{model}",
            subcategory="head merging",
            caption="../report/headmerge_sweep.rst",
        ),
        pairs=report(
            "results/{model}/headmerge/pairs_per_layer.png",
            category="{model}",
            subcategory="head merging",
            caption="../report/headmerge_pairs.rst",
        ),
        matrices=report(
            "results/{model}/headmerge/similarity_matrices.png",
            category="{model}",
            subcategory="head merging",
            caption="../report/headmerge_similarity.rst",
        ),
        histograms=report(
            "results/{model}/headmerge/similarity_histograms.png",
            category="{model}",
            subcategory="head merging",
            caption="../report/headmerge_histograms.rst",
        ),
    log:
        "logs/{model}/headmerge_plots.log",
    conda:
        "../envs/blockscope.yaml"
    script:
        "../workflow_scripts/headmerge_plots.py"
