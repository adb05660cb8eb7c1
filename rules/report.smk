# Plots and reports, per model and across models. All read tables; none recomputes a spectrum.

PLOT_METRICS = ["alpha", "alpha_hill", "effective_rank", "stable_rank", "svd_90_percent_rank"]


rule metric_plots:
    input:
        metrics="results/{model}/metrics.parquet",
        control=control_metrics,
    output:
        report(
            expand("results/{{model}}/plots/{metric}_by_layer.png", metric=PLOT_METRICS),
            category="{model}",
            subcategory="metrics by layer",
            caption="../report/metric_by_layer.rst",
        ),
    log:
        "logs/{model}/plots/metrics.log",
    conda:
        "../envs/blockscope.yaml"
    script:
        "../workflow_scripts/metric_plots.py"


rule esd_plot:
    input:
        spectra=lambda w: f"results/{w.model}/spectra/layer_{int(w.layer):03d}.parquet",
        metrics=lambda w: f"results/{w.model}/metrics/layer_{int(w.layer):03d}.parquet",
    output:
        report(
            "results/{model}/plots/esd_layer_{layer}.png",
            category="{model}",
            subcategory="eigenvalue spectra",
            caption="../report/esd.rst",
        ),
    log:
        "logs/{model}/plots/esd_layer_{layer}.log",
    conda:
        "../envs/blockscope.yaml"
    script:
        "../workflow_scripts/esd_plot.py"


rule head_and_precision_plots:
    input:
        heads="results/{model}/heads.parquet",
        precision="results/{model}/precision.parquet",
        precision_wide="results/{model}/precision_alpha_hill.csv",
    output:
        heatmap=report(
            "results/{model}/plots/heads_heatmap.png",
            category="{model}",
            subcategory="attention heads",
            caption="../report/heads_heatmap.rst",
        ),
        distributions=report(
            "results/{model}/plots/precision_distributions.png",
            category="{model}",
            subcategory="precision",
            caption="../report/precision_distributions.rst",
        ),
        pages=report(
            directory("results/{model}/plots/precision"),
            patterns=["{name}.png"],
            category="{model}",
            subcategory="precision",
            caption="../report/precision_pages.rst",
        ),
    params:
        layers_per_page=config["report"]["layers_per_page"],
    log:
        "logs/{model}/plots/heads_precision.log",
    conda:
        "../envs/blockscope.yaml"
    script:
        "../workflow_scripts/head_precision_plots.py"


rule model_report:
    input:
        dims="results/{model}/model.json",
        metrics="results/{model}/metrics.parquet",
        heads="results/{model}/heads.parquet",
        statistics="results/{model}/statistics_by_type.csv",
        phases="results/{model}/phase_analysis.csv",
        hints="results/{model}/quantization_hints.csv",
        precision_summary="results/{model}/precision_summary_statistics.csv",
        embedding="results/{model}/embedding/summary.json",
        deep_dive=lambda w: deep_dive_files(w.model, "parquet"),
        plots=lambda w: model_plot_files(w.model),
    output:
        "results/{model}/report.md",
    log:
        "logs/{model}/report.log",
    conda:
        "../envs/blockscope.yaml"
    script:
        "../workflow_scripts/model_report.py"


rule summary_plots:
    input:
        "results/summary/metrics.parquet",
    output:
        report(
            expand("results/summary/plots/{metric}_by_depth.png", metric=PLOT_METRICS),
            category="across models",
            caption="../report/depth_overlay.rst",
        ),
    log:
        "logs/summary/plots.log",
    conda:
        "../envs/blockscope.yaml"
    script:
        "../workflow_scripts/summary_plots.py"
