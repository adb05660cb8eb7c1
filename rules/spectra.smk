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
    script:
        "../workflow_scripts/precision.py"
