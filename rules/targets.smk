# The default target's files: every model's files up to its report, and the benchmark files.

# Rules that run once per unit, and once per model, with a benchmark file each (the report's
# "where the time went" reads them all).
PER_UNIT_RULES = list(PRICED_RULES)
PER_MODEL_RULES = [
    "fetch",
    "inventory",
    "selection",
    "plan",
    "embedding",
    "embedding_plots",
    "aggregate",
    "metric_plots",
    "head_and_precision_plots",
    "detail_tables",
    "down_proj_plot",
    "precision_category_plots",
]


def benchmark_files(model):
    """Every benchmark file of a model's jobs up to its report."""
    files = [benchmark(rule).replace("{model}", model) for rule in PER_MODEL_RULES]
    files += [benchmark(rule, unit).replace("{model}", model) for rule in PER_UNIT_RULES for unit in units(model)]
    files += [benchmark("esd_plot", f"layer_{layer}").replace("{model}", model) for layer in esd_layers(model)]
    files += [
        benchmark(rule, f"layer_{layer}_head_{head}").replace("{model}", model)
        for rule in ("head_deep_dive", "head_deep_dive_plot")
        for layer, head in deep_dive_heads(model)
    ]
    if HEADMERGE["enabled"] or COMPRESS["enabled"]:
        files += [benchmark("evaluate_base").replace("{model}", model)]
    if HEADMERGE["enabled"]:
        files += [benchmark(rule).replace("{model}", model) for rule in ("headmerge", "headmerge_plots")]
    if COMPRESS["enabled"]:
        files += [
            benchmark(rule).replace("{model}", model) for rule in ("compress_quant", "compress_prune", "compress_plots")
        ]
    return files


def model_files(model, dims=None):
    """Every data file of a model up to its tables (the report indexes them); dims: its model.json,
    when read without the checkpoint."""
    dims = dims or model_dims(model)
    return [
        layout.INVENTORY.format(model=model),
        layout.MODEL_JSON.format(model=model),
        layout.SELECTION.format(model=model),
        *[layout.per_unit(kind, model, unit) for kind in layout.PER_UNIT_KINDS for unit in units(model, dims)],
        *[layout.deep_dive(model, layer, head, "parquet") for layer, head in deep_dive_heads(model, dims)],
        *expand("results/{model}/embedding/{name}.parquet", model=model, name=["elbow", "clusters", "pca_points"]),
    ]


def inventoried_model_files(model):
    """model_files of a model whose inventory exists, read without evaluating the checkpoint.

    Rule all must never wait on a checkpoint: a model whose fetch or inventory fails would hold
    every other model back (its input function raises until that checkpoint is done, and it
    never is). A model still to be inventoried needs no file list here: its report reaches
    every file through its own inputs. An inventoried one lists them, so that a deleted
    intermediate file is made again (Snakemake does not rebuild the missing inputs of a job
    that is up to date)."""
    path = layout.MODEL_JSON.format(model=model)
    if not (os.path.exists(path) and os.path.exists(layout.INVENTORY.format(model=model))):
        return []
    with open(path) as fh:
        return model_files(model, json.load(fh))


def per_model_targets(model):
    return [
        layout.REPORT.format(model=model),
        layout.PLAN.format(model=model),
        *headmerge_targets(model),
        *compress_targets(model),
        *inventoried_model_files(model),
    ]


def all_targets(wildcards):
    return [target for model in MODELS for target in per_model_targets(model)] + [
        f"{layout.SUMMARY}/metrics.parquet",
        f"{layout.SUMMARY}/depth_comparison.csv",
        *summary_plot_files(),
        layout.SUMMARY_REPORT,
    ]


def finished_reports():
    """The report.md of every model that has one, and the cross-model report when every model has
    one: the target of an HTML report after a partial run (a missing report or figure flagged for
    the report fails `snakemake --report` as a whole)."""
    reports = [layout.REPORT.format(model=model) for model in MODELS]
    done = [path for path in reports if os.path.exists(path)]
    return done + ([layout.SUMMARY_REPORT] if len(done) == len(reports) else [])
