# Per model: k-means structure of the token embedding (and of an untied output head).


rule embedding:
    input:
        embed="results/{model}/tensors/embed.parquet",
        head="results/{model}/tensors/head.parquet",
        inventory="results/{model}/inventory.parquet",
        checkpoint="resources/models/{model}",
    output:
        summary="results/{model}/embedding/summary.json",
        elbow="results/{model}/embedding/elbow.parquet",
        clusters="results/{model}/embedding/clusters.parquet",
        points="results/{model}/embedding/pca_points.parquet",
        elbow_plot=report(
            "results/{model}/embedding/elbow.png",
            category="{model}",
            subcategory="embedding",
            caption="../report/embedding_elbow.rst",
        ),
        pca_plot=report(
            "results/{model}/embedding/pca.png",
            category="{model}",
            subcategory="embedding",
            caption="../report/embedding_pca.rst",
        ),
    params:
        settings=config["embedding"],
    log:
        "logs/{model}/embedding.log",
    resources:
        mem_mb=8000,
    conda:
        "../envs/blockscope.yaml"
    script:
        "../workflow_scripts/embedding.py"
