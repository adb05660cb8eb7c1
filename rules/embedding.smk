# Per model: k-means structure of the token embedding (and of an untied output head).


rule embedding:
    input:
        unpack(embedding_inputs),
        inventory=layout.INVENTORY,
        checkpoint=layout.CHECKPOINT,
    output:
        summary="results/{model}/embedding/summary.json",
        elbow="results/{model}/embedding/elbow.parquet",
        clusters="results/{model}/embedding/clusters.parquet",
        points="results/{model}/embedding/pca_points.parquet",
        token_clusters="results/{model}/embedding/token_clusters.parquet",
        token_clusters_csv="results/{model}/embedding/token_clusters.csv",
    log:
        "logs/{model}/embedding.log",
    benchmark:
        benchmark("embedding")
    priority: MINUTES_LONG
    conda:
        "../envs/blockscope.yaml"
    resources:
        mem_mb=8000,
    params:
        settings=config["embedding"],
        code=code("embedding"),
    script:
        "../workflow_scripts/embedding.py"


rule embedding_plots:
    input:
        summary="results/{model}/embedding/summary.json",
        elbow="results/{model}/embedding/elbow.parquet",
        points="results/{model}/embedding/pca_points.parquet",
    output:
        elbow=figure(
            "results/{model}/embedding/elbow",
            category="{model}",
            subcategory="embedding",
            caption="../report/embedding_elbow.rst",
        ),
        pca=figure(
            "results/{model}/embedding/pca",
            category="{model}",
            subcategory="embedding",
            caption="../report/embedding_pca.rst",
        ),
    log:
        "logs/{model}/plots/embedding.log",
    benchmark:
        benchmark("embedding_plots")
    conda:
        "../envs/blockscope.yaml"
    params:
        code=code("embedding_plots"),
    script:
        "../workflow_scripts/embedding_plots.py"
