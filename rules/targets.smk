# The default target's files: every model's files up to its report, and the benchmark files.
from blockscope.io.tables import damaged, parquet_damage

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
    if COMPRESS["enabled"] and SENSITIVITY["enabled"]:
        files += [benchmark("compress_sensitivity").replace("{model}", model)]
    if lowrank_on():
        files += [benchmark("compress_lowrank").replace("{model}", model)]
    if model in BASES:
        files += [benchmark("deltas", unit).replace("{model}", model) for unit in delta_units(model)]
        files += [benchmark(rule).replace("{model}", model) for rule in ("delta_tables", "delta_plots")]
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
        *[
            path.format(model=model, unit=unit)
            for path in (diagnostic_layout.DIAGNOSTICS, diagnostic_layout.RAND_SPECTRA)
            for unit in units(model, dims)
            if DIAGNOSTICS["enabled"]
        ],
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
    that is up to date), and a damaged one is named (name_damaged_files)."""
    try:
        dims = read_manifest(model)[0]
    except FileNotFoundError:
        return []
    files = model_files(model, dims)
    name_damaged_files(files)
    return files


NAMED_DAMAGED = set()


def name_damaged_files(files):
    """One line, once, for each of `files` that is there but cannot be a whole Parquet file (its
    first and last bytes: cheap enough for every file of every model): the job that reads it
    fails on it, and a file that no job of this run reads would otherwise stay unnoticed."""
    for path in files:
        try:
            why = path.endswith(".parquet") and path not in NAMED_DAMAGED and parquet_damage(path)
        except FileNotFoundError:
            continue
        if why:
            NAMED_DAMAGED.add(path)
            print(f"ERROR {damaged(path, why)}", file=sys.stderr)


def per_model_targets(model):
    """A model's targets; none while its manifest is damaged (read_manifest names the file and the fix)."""
    if broken_manifest(model) or (model in BASES and broken_manifest(BASES[model])):
        return []
    if model in ADAPTERS:  # no weights of its own: its update against the base, and the report on it
        return [layout.REPORT.format(model=model), *delta_targets(model)]
    return [
        *delta_targets(model),
        layout.REPORT.format(model=model),
        layout.PLAN.format(model=model),
        *headmerge_targets(model),
        *compress_targets(model),
        *compress_sensitivity_targets(model),
        *inventoried_model_files(model),
    ]


def all_targets(wildcards):
    """Every model's targets, and the cross-model files unless a model's manifest is damaged (they
    read every model's tables)."""
    cross = [
        f"{layout.SUMMARY}/metrics.parquet",
        f"{layout.SUMMARY}/depth_comparison.csv",
        *summary_plot_files(),
        layout.SUMMARY_REPORT,
        *compare_files(),
        *series_files(),
    ]
    broken = [model for model in CHECKPOINTS if broken_manifest(model)]
    return [target for model in MODELS for target in per_model_targets(model)] + ([] if broken else cross)


def finished_reports():
    """The report.md of every model that has one, and the cross-model report when every model has
    one: the target of an HTML report after a partial run (a missing report or figure flagged for
    the report fails `snakemake --report` as a whole)."""
    reports = [layout.REPORT.format(model=model) for model in MODELS]
    done = [path for path in reports if os.path.exists(path)]
    return done + ([layout.SUMMARY_REPORT] if len(done) == len(reports) else [])
