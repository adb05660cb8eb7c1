# Per unit: all singular values and every per-matrix metric; the precision sweep of alpha-Hill.


rule spectra:
    input:
        tensors="results/{model}/tensors/{unit}.parquet",
        inventory="results/{model}/inventory.parquet",
    output:
        spectra="results/{model}/spectra/{unit}.parquet",
        metrics="results/{model}/metrics/{unit}.parquet",
    params:
        backend=BACKEND,
        compute_dtype=config["compute_dtype"],
        hill_fraction=config["precision"]["k_fraction"],
    log:
        "logs/{model}/spectra/{unit}.log",
    resources:
        gpu=GPU_CLAIM,
        mem_mb=scaled(1000, 4),
        runtime=scaled(10, 0.05),
    conda:
        "../envs/blockscope.yaml"
    script:
        "../workflow_scripts/spectra.py"


rule precision:
    input:
        tensors="results/{model}/tensors/{unit}.parquet",
        inventory="results/{model}/inventory.parquet",
        spectra="results/{model}/spectra/{unit}.parquet",
    output:
        "results/{model}/precision/{unit}.parquet",
    params:
        precisions=config["precision"]["precisions"],
        compute_dtype=config["compute_dtype"],
        hill_fraction=config["precision"]["k_fraction"],
    log:
        "logs/{model}/precision/{unit}.log",
    resources:
        mem_mb=scaled(1000, 4),
        runtime=scaled(10, 0.1),
    conda:
        "../envs/blockscope.yaml"
    script:
        "../workflow_scripts/precision.py"
