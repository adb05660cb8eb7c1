# A model against another: a fine-tune or an adapter against its base (dW per matrix), compare
# pairs (distances per matrix), series (summary metrics along ordered members).


# Once per model with a base: the two checkpoints hold the same tensors, checked from their
# inventories before any delta job starts (the first differing tensor is named).
rule delta_pairing:
    input:
        inventory=layout.INVENTORY,
        base_inventory=lambda w: layout.INVENTORY.format(model=BASES[w.model]),
    output:
        pair_layout.DELTA_PAIRING,
    log:
        "logs/{model}/deltas/pairing.log",
    conda:
        "../envs/blockscope.yaml"
    params:
        base=lambda w: BASES[w.model],
        code=code("delta_pairing"),
    script:
        "../workflow_scripts/delta_pairing.py"


rule deltas:
    input:
        unpack(delta_inputs),
    output:
        pair_layout.DELTAS_UNIT,
    log:
        "logs/{model}/deltas/{unit}.log",
    benchmark:
        benchmark("deltas", "{unit}")
    priority: delta_priority
    conda:
        "../envs/blockscope.yaml"
    resources:
        gpu=GPU_CLAIM,
        mem_mb=predicted_delta("mem_mb"),
        runtime=predicted_delta("runtime"),
    params:
        base=lambda w: BASES[w.model],
        backend=BACKEND,
        selected=delta_selected_names,
        settings=DELTA_SETTINGS,
        code=code("deltas"),
    script:
        "../workflow_scripts/deltas.py"


rule delta_tables:
    input:
        deltas=delta_unit_files,
    output:
        deltas=pair_layout.DELTAS,
        csv=pair_layout.DELTAS_CSV,
        by_layer=pair_layout.DELTAS_BY_LAYER,
    log:
        "logs/{model}/deltas/tables.log",
    benchmark:
        benchmark("delta_tables")
    conda:
        "../envs/blockscope.yaml"
    params:
        code=code("delta_tables"),
    script:
        "../workflow_scripts/delta_tables.py"


rule delta_plots:
    input:
        deltas=pair_layout.DELTAS,
        by_layer=pair_layout.DELTAS_BY_LAYER,
    output:
        **{
            name: figure(
                f"{pair_layout.DELTA_PLOTS}/{name}",
                category="{model}",
                subcategory="against its base",
                caption=f"../report/deltas_{name}.rst",
            )
            for name in pair_layout.DELTA_FIGURES
        },
    log:
        "logs/{model}/plots/deltas.log",
    benchmark:
        benchmark("delta_plots")
    conda:
        "../envs/blockscope.yaml"
    params:
        formats=FORMATS,
        code=code("delta_plots"),
    script:
        "../workflow_scripts/delta_plots.py"


rule distances:
    input:
        tensors=layout.TENSORS,
        inventory=layout.INVENTORY,
        other_tensors=lambda w: layout.TENSORS.format(model=w.other, unit=w.unit),
        other_inventory=lambda w: layout.INVENTORY.format(model=w.other),
    output:
        pair_layout.COMPARE_UNIT,
    log:
        "logs/summary/compare/{model}--{other}/{unit}.log",
    benchmark:
        pair_layout.COMPARE_BENCHMARK.format(model="{model}", other="{other}", rule="distances", job="{unit}")
    conda:
        "../envs/blockscope.yaml"
    resources:
        gpu=GPU_CLAIM,
    params:
        backend=BACKEND,
        selected=selected_names,
        settings=DELTA_SETTINGS,
        code=code("distances"),
    script:
        "../workflow_scripts/distances.py"


rule compare_tables:
    input:
        distances=distance_unit_files,
    output:
        distances=pair_layout.COMPARE_DISTANCES,
        csv=pair_layout.COMPARE_DISTANCES_CSV,
        by_layer=pair_layout.COMPARE_BY_LAYER,
    log:
        "logs/summary/compare/{model}--{other}/tables.log",
    benchmark:
        pair_layout.COMPARE_BENCHMARK.format(model="{model}", other="{other}", rule="compare_tables", job="pair")
    conda:
        "../envs/blockscope.yaml"
    params:
        code=code("compare_tables"),
    script:
        "../workflow_scripts/compare_tables.py"


rule compare_plots:
    input:
        by_layer=pair_layout.COMPARE_BY_LAYER,
    output:
        figure(
            pair_layout.COMPARE_FIGURE,
            category="across models",
            subcategory="distances",
            caption="../report/compare_distances.rst",
        ),
    log:
        "logs/summary/compare/{model}--{other}/plots.log",
    benchmark:
        pair_layout.COMPARE_BENCHMARK.format(model="{model}", other="{other}", rule="compare_plots", job="pair")
    conda:
        "../envs/blockscope.yaml"
    params:
        formats=FORMATS,
        code=code("compare_plots"),
    script:
        "../workflow_scripts/compare_plots.py"


rule series:
    input:
        metrics=lambda w: [layout.METRICS.format(model=m) for m in SERIES[w.series]],
        distances=lambda w: series_distance_files(w.series),
    output:
        table=pair_layout.SERIES_TABLE,
        csv=pair_layout.SERIES_CSV,
    log:
        "logs/summary/series/{series}.log",
    benchmark:
        layout.SUMMARY_BENCHMARK.format(rule="series_{series}")
    conda:
        "../envs/blockscope.yaml"
    params:
        members=lambda w: SERIES[w.series],
        code=code("series"),
    script:
        "../workflow_scripts/series.py"


rule series_plots:
    input:
        table=pair_layout.SERIES_TABLE,
    output:
        figure(
            pair_layout.SERIES_FIGURE,
            category="across models",
            subcategory="series",
            caption="../report/series_trend.rst",
        ),
    log:
        "logs/summary/series/{series}_plots.log",
    benchmark:
        layout.SUMMARY_BENCHMARK.format(rule="series_plots_{series}")
    conda:
        "../envs/blockscope.yaml"
    params:
        formats=FORMATS,
        code=code("series_plots"),
    script:
        "../workflow_scripts/series_plots.py"


# The report of an adapter-only model (source peft, merged false): it has no weights of its own,
# so its report is its update against the base.
rule adapter_report:
    input:
        deltas=pair_layout.DELTAS,
        by_layer=pair_layout.DELTAS_BY_LAYER,
        source=layout.CHECKPOINT,
        plots=lambda w: delta_plot_files(w.model, [EMBEDDED]),
        other_formats=lambda w: delta_plot_files(w.model, OTHER_FORMATS),
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
        benchmark("adapter_report")
    wildcard_constraints:
        model=ADAPTER_WILDCARD,
    conda:
        "../envs/blockscope.yaml"
    params:
        base=lambda w: BASES[w.model],
        level=EVALUATION["confidence"],
        code=code("adapter_report"),
    script:
        "../workflow_scripts/adapter_report.py"
