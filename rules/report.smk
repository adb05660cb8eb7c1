# Plots and reports, per model and across models. All read tables; none recomputes a spectrum.


rule metric_plots:
    input:
        metrics=layout.METRICS,
        control=control_metrics,
    output:
        **{
            metric: figure(
                f"results/{{model}}/plots/{metric}_by_layer",
                category="{model}",
                subcategory="metrics by layer",
                caption="../report/metric_by_layer.rst",
            )
            for metric in layout.PLOT_METRICS
        },
    log:
        "logs/{model}/plots/metrics.log",
    benchmark:
        benchmark("metric_plots")
    conda:
        "../envs/blockscope.yaml"
    params:
        metrics=layout.PLOT_METRICS,
        code=code("metric_plots"),
    script:
        "../workflow_scripts/metric_plots.py"


rule esd_plot:
    input:
        unpack(layer_diagnostics),
        spectra=layer_file("spectra"),
        metrics=layer_file("metrics"),
    output:
        figure(
            "results/{model}/plots/esd_layer_{layer}",
            category="{model}",
            subcategory="eigenvalue spectra",
            caption="../report/esd.rst",
        ),
    log:
        "logs/{model}/plots/esd_layer_{layer}.log",
    benchmark:
        benchmark("esd_plot", "layer_{layer}")
    conda:
        "../envs/blockscope.yaml"
    params:
        code=code("esd_plot"),
    script:
        "../workflow_scripts/esd_plot.py"


rule head_and_precision_plots:
    input:
        heads=layout.HEADS,
        precision=layout.PRECISION,
    output:
        heatmap=figure(
            "results/{model}/plots/heads_heatmap",
            category="{model}",
            subcategory="attention heads",
            caption="../report/heads_heatmap.rst",
        ),
        distributions=figure(
            "results/{model}/plots/precision_distributions",
            category="{model}",
            subcategory="precision",
            caption="../report/precision_distributions.rst",
        ),
        sensitivity=figure(
            "results/{model}/plots/precision_sensitivity",
            category="{model}",
            subcategory="precision",
            caption="../report/precision_sensitivity.rst",
        ),
        pages=figure_folder(
            "results/{model}/plots/precision",
            category="{model}",
            subcategory="precision",
            caption="../report/precision_pages.rst",
        ),
    log:
        "logs/{model}/plots/heads_precision.log",
    benchmark:
        benchmark("head_and_precision_plots")
    conda:
        "../envs/blockscope.yaml"
    params:
        distribution_kind=config["report"]["distribution_kind"],
        layers_per_page=config["report"]["layers_per_page"],
        formats=FORMATS,
        sensitivity_threshold=config["precision"]["sensitivity_threshold"],
        code=code("head_precision_plots"),
    script:
        "../workflow_scripts/head_precision_plots.py"


rule model_report:
    input:
        dims=layout.MODEL_JSON,
        metrics=layout.METRICS,
        heads=layout.HEADS,
        statistics="results/{model}/statistics_by_type.csv",
        phases="results/{model}/phase_analysis.csv",
        hints="results/{model}/quantization_hints.csv",
        precision_summary="results/{model}/precision_summary_statistics.csv",
        precision_csv="results/{model}/precision_alpha_hill.csv",
        embedding="results/{model}/embedding/summary.json",
        deep_dive=lambda w: deep_dive_files(w.model, "parquet"),
        details=list(layout.DETAIL_TABLES.values()),
        control=control_metrics,
        headmerge=lambda w: headmerge_summaries([w.model]),
        plots=lambda w: model_plot_files(w.model, [EMBEDDED]),  # linked from report.md
        other_formats=lambda w: model_plot_files(w.model, OTHER_FORMATS),
        benchmarks=lambda w: benchmark_files(w.model),
        files=lambda w: model_files(w.model),
        compress=lambda w: compress_targets(w.model),
        comparisons=lambda w: compress_comparisons([w.model]),
        sensitivity=lambda w: sensitivity_report_files([w.model]),
        deltas=delta_report_files,
        delta_plots=lambda w: delta_plot_files(w.model, [EMBEDDED]) if w.model in BASES else [],
    output:
        report=report(
            layout.REPORT,
            category="Findings",
            labels={"model": "{model}"},
            caption="../report/model_findings.rst",
        ),
    log:
        "logs/{model}/report.log",
    benchmark:
        benchmark("model_report")
    wildcard_constraints:
        model=CHECKPOINT_WILDCARD,
    conda:
        "../envs/blockscope.yaml"
    params:
        sensitivity_threshold=config["precision"]["sensitivity_threshold"],
        findings=config["report"]["findings"],
        embedded=EMBEDDED,
        group_size=config["quantization"]["group_size"],
        level=EVALUATION["confidence"],
        base=lambda w: BASES.get(w.model, ""),
        tpl_level=DIAGNOSTICS["tpl_level"],
        code=code("model_report"),
    script:
        "../workflow_scripts/model_report.py"


rule summary_plots:
    input:
        f"{layout.SUMMARY}/metrics.parquet",
    output:
        **{
            metric: figure(
                f"{layout.SUMMARY}/plots/{metric}_by_depth",
                category="across models",
                caption="../report/depth_overlay.rst",
            )
            for metric in layout.PLOT_METRICS
        },
    log:
        "logs/summary/plots.log",
    benchmark:
        layout.SUMMARY_BENCHMARK.format(rule="summary_plots")
    conda:
        "../envs/blockscope.yaml"
    params:
        metrics=layout.PLOT_METRICS,
        code=code("summary_plots"),
    script:
        "../workflow_scripts/summary_plots.py"


rule summary_report:
    input:
        metrics=f"{layout.SUMMARY}/metrics.parquet",
        precision=f"{layout.SUMMARY}/precision.parquet",
        headmerge=headmerge_summaries(CHECKPOINTS),
        compress=compress_summaries(CHECKPOINTS),
        comparisons=compress_comparisons(CHECKPOINTS),
        sensitivity=sensitivity_report_files(CHECKPOINTS, figures=False),
        reports=expand(layout.REPORT, model=MODELS),
        compare=compare_files(formats=[EMBEDDED]),
        series=series_files(formats=[EMBEDDED]),
        deltas=[path.format(model=m) for m in BASES for path in (pair_layout.DELTAS, pair_layout.DELTAS_BY_LAYER)],
        plots=summary_plot_files([EMBEDDED]),  # linked from the report
        other_formats=summary_plot_files(OTHER_FORMATS),
    output:
        report=report(
            layout.SUMMARY_REPORT,
            category="Findings",
            labels={"model": "all models"},
            caption="../report/summary_findings.rst",
        ),
    log:
        "logs/summary/report.log",
    benchmark:
        layout.SUMMARY_BENCHMARK.format(rule="summary_report")
    conda:
        "../envs/blockscope.yaml"
    params:
        sensitivity_threshold=config["precision"]["sensitivity_threshold"],
        findings=config["report"]["findings"],
        embedded=EMBEDDED,
        controls=CONTROLS,
        level=EVALUATION["confidence"],
        pairs=PAIRS,
        series=SERIES,
        adapters=ADAPTERS,
        code=code("summary_report"),
    script:
        "../workflow_scripts/summary_report.py"


# `snakemake --report report.html finished_reports`: the HTML report of what finished, when some
# model did not (the default target would ask for the missing files and refuse).
rule finished_reports:
    input:
        lambda wildcards: finished_reports(),
