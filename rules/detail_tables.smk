# Detail tables read from the aggregated ones (heads by head and by layer, deep dives, down
# projections, phases; no spectrum is recomputed), and their figures. Drawing rules read tables only, so a plot edit reruns them alone.


rule detail_tables:
    input:
        metrics=layout.METRICS,
        heads=layout.HEADS,
        dims=layout.MODEL_JSON,
        spectra=per_unit("spectra"),
        deep_dive=lambda w: deep_dive_files(w.model, "parquet"),
    output:
        **layout.DETAIL_TABLES,
    log:
        "logs/{model}/detail_tables.log",
    benchmark:
        benchmark("detail_tables")
    conda:
        "../envs/blockscope.yaml"
    params:
        pairs=lambda w: deep_dive_heads(w.model),  # (layer, head) of each deep-dive table, in input order
        code=code("detail_tables"),
    script:
        "../workflow_scripts/detail_tables.py"


rule down_proj_plot:
    input:
        metrics=layout.METRICS,
        spectra=lambda w: [
            layout.per_unit("spectra", w.model, layout.layer_unit(layer)) for layer in down_proj_layers(w.model)
        ],
    output:
        figure(
            layout.DOWN_PROJ_FIGURE,
            category="{model}",
            subcategory="down projections",
            caption="../report/down_proj_variance.rst",
        ),
    log:
        "logs/{model}/plots/down_proj.log",
    benchmark:
        benchmark("down_proj_plot")
    conda:
        "../envs/blockscope.yaml"
    params:
        layers=lambda w: down_proj_layers(w.model),
        requested=config["report"]["down_proj_layers"],
        code=code("down_proj_plot"),
    script:
        "../workflow_scripts/down_proj_plot.py"


rule precision_category_plots:
    input:
        precision=layout.PRECISION,
    output:
        # one chart per matrix, only when report.per_matrix_charts asks for them
        **(
            {
                "matrices": report(
                    directory(layout.PRECISION_MATRICES),
                    patterns=[f"{{name}}.{layout.embedded_format(FORMATS)}"],
                    category="{model}",
                    subcategory="precision per matrix",
                    caption="../report/precision_matrices.rst",
                )
            }
            if config["report"]["per_matrix_charts"]
            else {}
        ),
        categories=report(
            directory(layout.PRECISION_CATEGORIES),
            patterns=[f"category_{{name}}.{layout.embedded_format(FORMATS)}"],
            category="{model}",
            subcategory="precision",
            caption="../report/precision_categories.rst",
        ),
    log:
        "logs/{model}/plots/precision_categories.log",
    benchmark:
        benchmark("precision_category_plots")
    conda:
        "../envs/blockscope.yaml"
    params:
        formats=FORMATS,
        code=code("precision_category_plots"),
    script:
        "../workflow_scripts/precision_category_plots.py"
