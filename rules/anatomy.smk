# Per unit, one job: all singular values and every per-matrix metric, the precision sweep of
# alpha-Hill, the per-head QK / OV kernels, WeightWatcher's other diagnostics (diagnostics.enabled).
# Each part is recomputed only when its own settings,
# code or inputs changed (blockscope/analysis/part_stamps.py): its outputs are update() so the job sees them.


rule anatomy:
    input:
        tensors=layout.TENSORS,
        inventory=layout.INVENTORY,
        dims=layout.MODEL_JSON,
    output:
        **anatomy_diagnostics_outputs(),
        spectra=update(layout.SPECTRA),
        metrics=update(layout.UNIT_METRICS),
        precision=update(layout.UNIT_PRECISION),
        heads=update(layout.UNIT_HEADS),
    log:
        "logs/{model}/anatomy/{unit}.log",
    benchmark:
        benchmark("anatomy", "{unit}")
    priority: longest_first("anatomy")
    conda:
        "../envs/blockscope.yaml"
    resources:
        gpu=GPU_CLAIM,
        mem_mb=predicted("anatomy", "mem_mb"),
        runtime=predicted("anatomy", "runtime"),
    params:
        backend=BACKEND,
        selected=selected_names,
        spectra={
            "compute_dtype": config["compute_dtype"],
            "svd_method": config["svd_method"],
            "hill_fraction": config["precision"]["k_fraction"],
            "sparsity_threshold": config["sparsity_threshold"],
            "code": part_code("spectra"),
        },
        precision={
            "precisions": config["precision"]["precisions"],
            "hill_fraction": config["precision"]["k_fraction"],
            "code": part_code("precision"),
        },
        heads={"code": part_code("heads")},
        diagnostics={**DIAGNOSTICS, "code": part_code("diagnostics")},
    script:
        "../workflow_scripts/anatomy.py"
