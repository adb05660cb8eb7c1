# Per unit: all singular values and every per-matrix metric; the precision sweep of alpha-Hill.


rule spectra:
    input:
        tensors=layout.TENSORS,
        inventory=layout.INVENTORY,
    output:
        spectra=layout.SPECTRA,
        metrics=layout.UNIT_METRICS,
    params:
        backend=BACKEND,
        compute_dtype=config["compute_dtype"],
        svd_method=config["svd_method"],
        hill_fraction=config["precision"]["k_fraction"],
        selected=selected_names,
        sparsity_threshold=config["sparsity_threshold"],
        code=code("spectra"),
    log:
        "logs/{model}/spectra/{unit}.log",
    benchmark:
        benchmark("spectra", "{unit}")
    resources:
        gpu=GPU_CLAIM,
        mem_mb=predicted("spectra", "mem_mb"),
        runtime=predicted("spectra", "runtime"),
    conda:
        "../envs/blockscope.yaml"
    script:
        "../workflow_scripts/spectra.py"


rule precision:
    input:
        tensors=layout.TENSORS,
        inventory=layout.INVENTORY,
        spectra=layout.SPECTRA,
        metrics=layout.UNIT_METRICS,
    output:
        layout.UNIT_PRECISION,
    params:
        backend=BACKEND,
        precisions=config["precision"]["precisions"],
        compute_dtype=config["compute_dtype"],
        svd_method=config["svd_method"],
        hill_fraction=config["precision"]["k_fraction"],
        selected=selected_names,
        code=code("precision"),
    log:
        "logs/{model}/precision/{unit}.log",
    benchmark:
        benchmark("precision", "{unit}")
    resources:
        gpu=GPU_CLAIM,
        mem_mb=predicted("precision", "mem_mb"),
        runtime=predicted("precision", "runtime"),
    conda:
        "../envs/blockscope.yaml"
    script:
        "../workflow_scripts/precision.py"
