# Per causal LM: merge similar heads at each threshold, evaluate on the corpus (eval) against
# controls. fetch_corpus runs only when some model will be evaluated (evaluation_corpus).


rule fetch_corpus:
    output:
        layout.CORPUS,
    log:
        "logs/corpus.log",
    benchmark:
        layout.SUMMARY_BENCHMARK.format(rule="fetch_corpus")
    conda:
        "../envs/blockscope.yaml"
    params:
        corpus=EVALUATION["corpus"],
        code=code("fetch_corpus"),
    script:
        "../workflow_scripts/fetch_corpus.py"


rule headmerge:
    input:
        checkpoint=layout.CHECKPOINT,
        inventory=layout.INVENTORY,
        dims=headmerge_dims,
        base=layout.EVAL_BASE,
    output:
        thresholds=expand("results/{{model}}/headmerge/threshold_{t}.json", t=config["headmerge"]["thresholds"]),
        summary="results/{model}/headmerge/summary.parquet",
        comparisons="results/{model}/headmerge/comparisons.parquet",
        comparisons_csv="results/{model}/headmerge/comparisons.csv",
        similarities="results/{model}/headmerge/similarities.parquet",
    log:
        "logs/{model}/headmerge.log",
    benchmark:
        benchmark("headmerge")
    priority: MINUTES_LONG
    conda:
        "../envs/blockscope.yaml"
    resources:
        gpu=GPU_CLAIM,
        mem_mb=12000,
    params:
        # headmerge.layers only when set: runs from before the key existed stay up to date;
        # kl_cache_mb no more (the base evaluation's file replaced that cache); plot_layers
        # only chooses what headmerge_plots draws; of the eval keys, those it scores and compares
        # with (report.findings.ppl_tolerance chooses the headline in the report, not here)
        settings={
            **{
                k: v
                for k, v in HEADMERGE.items()
                if (k != "layers" or v is not None) and k not in ("kl_cache_mb", "plot_layers")
            },
            **{key: EVALUATION[key] for key in ("batch_size", "dtype", "bootstrap", "min_effect", "confidence")},
        },
        device=BACKEND,
        code=code("headmerge"),
    script:
        "../workflow_scripts/headmerge.py"


# Drawing only: an edit to the plots reruns this rule, never the evaluation.
rule headmerge_plots:
    input:
        thresholds=expand("results/{{model}}/headmerge/threshold_{t}.json", t=config["headmerge"]["thresholds"]),
        summary="results/{model}/headmerge/summary.parquet",
        similarities="results/{model}/headmerge/similarities.parquet",
    output:
        sweep=figure(
            "results/{model}/headmerge/sweep",
            category="{model}",
            subcategory="head merging",
            caption="../report/headmerge_sweep.rst",
        ),
        pairs=figure(
            "results/{model}/headmerge/pairs_per_layer",
            category="{model}",
            subcategory="head merging",
            caption="../report/headmerge_pairs.rst",
        ),
        matrices=figure(
            "results/{model}/headmerge/similarity_matrices",
            category="{model}",
            subcategory="head merging",
            caption="../report/headmerge_similarity.rst",
        ),
        histograms=figure(
            "results/{model}/headmerge/similarity_histograms",
            category="{model}",
            subcategory="head merging",
            caption="../report/headmerge_histograms.rst",
        ),
        # Per threshold: original vs merged vs the random control, and the merged pairs by layer.
        thresholds_figures=[
            path
            for t in config["headmerge"]["thresholds"]
            for stem in headmerge_threshold_stems(t)
            for path in figure(
                stem,
                category="{model}",
                subcategory="head merging per threshold",
                caption="../report/headmerge_threshold.rst",
            )
        ],
    log:
        "logs/{model}/headmerge_plots.log",
    benchmark:
        benchmark("headmerge_plots")
    conda:
        "../envs/blockscope.yaml"
    params:
        plot_layers=HEADMERGE["plot_layers"],
        formats=FORMATS,
        code=code("headmerge_plots"),
    script:
        "../workflow_scripts/headmerge_plots.py"
