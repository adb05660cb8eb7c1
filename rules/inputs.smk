# Input functions: the selection's units, the manifests read after the inventory checkpoint,
# figure and table lists of the report, head-merge and compression inputs.
from blockscope.errors import BlockscopeError
from blockscope.io.manifests import read_inventory, read_model_json

# A model's manifests (model.json, inventory.parquet) are read here only, once per change of
# either file, and checked: a damaged one is named once, with its fix, and costs only its model
# (rule all leaves the model out), never the DAG of the others.
BROKEN_MANIFESTS = {}  # model -> its BlockscopeError


def manifest_stamp(model):
    """(mtime_ns, size) of both manifest files; FileNotFoundError while either is missing."""
    paths = (layout.MODEL_JSON.format(model=model), layout.INVENTORY.format(model=model))
    return tuple((stat.st_mtime_ns, stat.st_size) for stat in map(os.stat, paths))


@functools.cache
def _read_manifest(model, stamp):
    dims = read_model_json(layout.MODEL_JSON.format(model=model), model)
    return dims, read_inventory(layout.INVENTORY.format(model=model), model)


def read_manifest(model):
    """(model.json, the inventory as an Arrow table) of a model, checked (blockscope.io.manifests).
    FileNotFoundError while either is not written; BlockscopeError for a damaged one, printed once."""
    try:
        return _read_manifest(model, manifest_stamp(model))
    except BlockscopeError as exc:
        if model not in BROKEN_MANIFESTS:
            print(f"ERROR {exc}", file=sys.stderr)
        BROKEN_MANIFESTS[model] = exc
        raise


def broken_manifest(model):
    """The error of a model whose manifests are written but damaged; None if they are fine or not written."""
    try:
        read_manifest(model)
    except FileNotFoundError:
        return None
    except BlockscopeError as exc:
        return exc
    return None


def model_dims(model):
    """model.json of a model (evaluates the inventory checkpoint)."""
    checkpoints.inventory.get(model=model)
    return read_manifest(model)[0]


def model_selection(model):
    """The model's resolved select: its own keys over the top-level ones (blockscope.checkpoint.selection)."""
    return select.resolve(config.get("select"), MODELS[model].get("select"))


@functools.cache
def _selected(model, stamp, layers):
    inventory = read_manifest(model)[1].select(["param_name", "unit", "layer_index", "shape"]).to_pandas()
    try:
        return select.selected_units(inventory, model_selection(model), layers, model=model, path="config.yaml")
    except select.BlockscopeError as exc:
        print(f"ERROR {exc}", file=sys.stderr)  # one clear line before Snakemake's own report
        raise


def selected(model, dims=None):
    """unit -> its selected parameter names. Every unit when nothing is selected; BlockscopeError
    when the selection names a missing layer or matches nothing. dims: the model's model.json when
    read without the checkpoint (rule all), else the checkpoint is evaluated."""
    dims = dims or model_dims(model)
    return _selected(model, manifest_stamp(model), dims["layers"])


def units(model, dims=None):
    """The units that get jobs: those with a selected tensor (all of them without a selection)."""
    return list(selected(model, dims))


def selected_names(wildcards):
    """Param: the unit's selected parameter names. Only units whose list changes rerun when the
    selection changes; a unit selected whole has the same list with or without a selection."""
    return selected(wildcards.model).get(wildcards.unit, [])


def selected_layers(model, dims=None):
    return [layer for layer in map(layout.unit_layer, units(model, dims)) if layer is not None]


def per_unit(kind):
    """Input function: the model's files of one per-unit kind (tensors, spectra, ...), every unit."""
    return lambda wildcards: [layout.per_unit(kind, wildcards.model, unit) for unit in units(wildcards.model)]


def layer_file(kind):
    """Input function: the per-unit file of the {layer} wildcard's unit."""
    return lambda wildcards: layout.per_unit(kind, wildcards.model, layout.layer_unit(int(wildcards.layer)))


def embedding_inputs(wildcards):
    """Input: the tensors of the units that hold what the embedding analysis reads (the token
    embedding, an untied output head), whatever the selection; none of a unit without such a
    tensor (an encoder's or a tied model's lm_head), so the DAG asks for no job it has no use for."""
    model = wildcards.model
    model_dims(model)  # evaluates the inventory checkpoint
    columns = ["param_name", "unit", "block_type", "shape", "nbytes"]
    inventory = read_manifest(model)[1].select(columns).to_pandas()
    return {unit: layout.per_unit("tensors", model, unit) for unit in select.embedding_tensors(inventory)}


def deep_dive_heads(model, dims=None):
    """[layer, head] pairs of the deep dive: the config's, else the middle layer's head 0; with a
    selection, only pairs of selected layers (the default: the middle selected layer)."""
    if select.is_everything(model_selection(model)):
        return config["heads"]["deep_dive"] or [[(dims or model_dims(model))["layers"] // 2, 0]]
    layers = selected_layers(model, dims)
    if config["heads"]["deep_dive"]:
        return [pair for pair in config["heads"]["deep_dive"] if pair[0] in layers]
    return [[layers[len(layers) // 2], 0]] if layers else []


def deep_dive_files(model, ext):
    return [layout.deep_dive(model, layer, head, ext) for layer, head in deep_dive_heads(model)]


# Random-init twins (synthetic with like:) are the controls their models are read against.
CONTROLS = {m: s["like"] for m, s in MODELS.items() if s["source"] == "synthetic" and s.get("like")}


def control_metrics(wildcards):
    """The random twin's metrics; none while the twin's manifest is damaged (it costs only the twin)."""
    twins = [twin for twin, of in CONTROLS.items() if of == wildcards.model][:1]
    return [layout.METRICS.format(model=twin) for twin in twins if not broken_manifest(twin)]


FORMATS = config["report"]["formats"]
EMBEDDED = layout.embedded_format(FORMATS)  # what report.md links and the HTML report shows
OTHER_FORMATS = [ext for ext in FORMATS if ext != EMBEDDED]


def figure(stem, **report_kwargs):
    """Output: one figure in every report.formats. The embedded format is flagged for the HTML
    report with `report_kwargs` (category, caption, ...); the other formats are plain outputs.
    Scripts pass the whole list to figures.canvas.save, which writes each file in its suffix's format."""
    embedded, *others = layout.figure_files(stem, FORMATS)
    return [report(embedded, **report_kwargs), *others]


def figure_folder(path, **report_kwargs):
    """Output: a folder of figures (one file per page and format); the HTML report shows the
    pages in the embedded format."""
    return report(directory(path), patterns=[f"{{name}}.{EMBEDDED}"], **report_kwargs)


def figure_files(stem, formats=None):
    """Input: the files of one figure, in every report.formats (or in `formats`; see figure)."""
    return [f"{stem}.{ext}" for ext in formats] if formats is not None else layout.figure_files(stem, FORMATS)


def esd_layers(model):
    """Layers whose ESDs are plotted: the config's, else first, middle and last."""
    layers = selected_layers(model)  # every layer without a selection
    if not layers:
        return []
    chosen = config["report"]["esd_layers"] or [layers[0], layers[len(layers) // 2], layers[-1]]
    return sorted({layer for layer in chosen if layer in layers})


def down_proj_layers(model):
    """Layers whose down projections are drawn (report.down_proj_layers, else first, middle, last)."""
    return select.chosen_layers(config["report"]["down_proj_layers"], selected_layers(model))


def plots_dir(model):
    return layout.PLOTS.format(model=model)


def model_plot_files(model, formats=None):
    """A model's figures up to its report, in `formats` (default: every report.formats); the
    precision pages' folder (every format inside) goes with the embedded format."""
    formats = FORMATS if formats is None else formats
    plots = plots_dir(model)
    stems = [
        *[f"{plots}/{metric}_by_layer" for metric in layout.PLOT_METRICS],
        *[f"{plots}/esd_layer_{layer}" for layer in esd_layers(model)],
        f"{plots}/heads_heatmap",
        f"{plots}/precision_distributions",
        f"{plots}/precision_sensitivity",
        f"results/{model}/embedding/elbow",
        f"results/{model}/embedding/pca",
        *[layout.deep_dive(model, layer, head, "").removesuffix(".") for layer, head in deep_dive_heads(model)],
        layout.DOWN_PROJ_FIGURE.format(model=model),
    ]
    folders = (
        [
            f"{plots}/precision",
            layout.PRECISION_CATEGORIES.format(model=model),
            *([layout.PRECISION_MATRICES.format(model=model)] if config["report"]["per_matrix_charts"] else []),
        ]
        if EMBEDDED in formats
        else []
    )  # folders of figures, every format inside
    return [path for stem in stems for path in figure_files(stem, formats)] + folders


def summary_plot_files(formats=None):
    """The cross-model figures, in `formats` (default: every report.formats)."""
    return [
        path
        for metric in layout.PLOT_METRICS
        for path in figure_files(f"{layout.SUMMARY}/plots/{metric}_by_depth", formats)
    ]


HEADMERGE = config["headmerge"]
EVALUATION = config["eval"]  # the corpus and windows the base evaluation, head merging and compression share


def evaluation_corpus(wildcards):
    """Input of evaluate_base: the corpus, for a model the evaluation can score (a causal LM or an
    encoder). A model it cannot (not one of those, no tokenizer: loading.skip_reason, known once its
    checkpoint is inventoried) writes its skipped record without it, so it never waits on
    fetch_corpus, and a corpus that cannot be fetched (offline, no file) costs only the models that need it."""
    from blockscope.evaluation.loading import skip_reason

    dims = model_dims(wildcards.model)
    return [] if skip_reason(dims, layout.CHECKPOINT.format(model=wildcards.model), encoders=True) else layout.CORPUS


def headmerge_dims(wildcards):
    """Input function: model.json, once headmerge.layers is known to fit the model."""
    layers = select.parse_layers(HEADMERGE.get("layers"))
    if layers:
        try:
            select.check_layers(
                layers,
                model_dims(wildcards.model)["layers"],
                "headmerge.layers",
                model=wildcards.model,
                path="config.yaml",
            )
        except select.BlockscopeError as exc:
            print(f"ERROR {exc}", file=sys.stderr)
            raise
    return layout.MODEL_JSON.format(model=wildcards.model)


def headmerge_summaries(models):
    """Input: the head-merge summary tables of `models` (none when head merging is off)."""
    return [f"{layout.HEADMERGE.format(model=model)}/summary.parquet" for model in models if HEADMERGE["enabled"]]


def headmerge_targets(model):
    if not HEADMERGE["enabled"]:
        return []
    return [
        *[f"results/{model}/headmerge/threshold_{t}.json" for t in HEADMERGE["thresholds"]],
        f"results/{model}/headmerge/summary.parquet",
        *[
            path
            for name in layout.HEADMERGE_FIGURES
            for path in figure_files(f"{layout.HEADMERGE.format(model=model)}/{name}")
        ],
        *[
            path
            for t in HEADMERGE["thresholds"]
            for stem in headmerge_threshold_stems(t)
            for path in figure_files(stem.format(model=model))
        ],
    ]


def headmerge_threshold_stems(t):
    """The per-threshold figures of headmerge_plots (stems): the comparison, the merged pairs by layer."""
    return [stem.format(model="{model}", threshold=t) for stem in layout.HEADMERGE_THRESHOLD_FIGURES]


COMPRESS = config["compress"]
COMPRESS_PRESETS = COMPRESS["quant"].get("presets", list(QUANTIZATION_PRESETS))


def compress_evaluation():
    """The evaluation settings the experiments share with head merging (the windows come with the
    base evaluation, an input; plans are scored on its first max_tokens), and when a base is too
    near chance to be worth perturbing."""
    keys = ("batch_size", "dtype", "bootstrap")
    return {
        **{key: EVALUATION[key] for key in keys},
        "min_bits_over_chance": COMPRESS["min_bits_over_chance"],
        "max_tokens": COMPRESS["gpu_max_tokens" if BACKEND == "cuda" else "max_tokens"],
    }


def compress_variant(folder):
    """The optional output of an experiment: its chosen variant as a checkpoint (compress.save_variants)."""
    return {"variant": directory(f"{folder}/variant")} if COMPRESS["save_variants"] else {}


# --- the low-rank experiment (compress.lowrank; the compress_lowrank rule) ---------------------------

from blockscope.diagnostic_layout import COMPRESS_LOWRANK

LOWRANK = COMPRESS["lowrank"]  # the schema fills every default


def lowrank_on():
    """Whether the low-rank experiment runs (compress and compress.lowrank enabled)."""
    return COMPRESS["enabled"] and LOWRANK["enabled"]


def lowrank_settings():
    """compress.lowrank as the job reads it: the budgets of this backend, random_seeds resolved
    (null: compress.random_seeds)."""
    cuda = BACKEND == "cuda"
    out = {key: LOWRANK[key] for key in ("allocations", "alpha_metric", "eps", "block_types", "last_layers", "laser")}
    seeds = LOWRANK["random_seeds"]
    return {
        **out,
        "budgets": LOWRANK["gpu_budgets" if cuda else "budgets"],
        "random_seeds": COMPRESS["random_seeds"] if seeds is None else seeds,
    }


def lowrank_evaluation():
    """compress_comparison_settings() with the experiment's own window budget (null: compress's)."""
    settings = compress_comparison_settings()
    own = LOWRANK["gpu_max_tokens" if BACKEND == "cuda" else "max_tokens"]
    return {**settings, "max_tokens": settings["max_tokens"] if own is None else own}


def lowrank_plot_inputs():
    """compress_plots' inputs for the low-rank Pareto figure, when the experiment runs."""
    if not lowrank_on():
        return {}
    return {"lowrank": f"{COMPRESS_LOWRANK}/summary.parquet", "lowrank_plans": f"{COMPRESS_LOWRANK}/plans.json"}


def lowrank_plot_outputs():
    if not lowrank_on():
        return {}
    return {
        "lowrank": figure(
            f"{COMPRESS_LOWRANK}/pareto",
            category="{model}",
            subcategory="compression",
            caption="../report/compress_lowrank.rst",
        )
    }


def compress_folders():
    """The experiments' folders (results/{model}/compress/*): quant, prune and, when on, lowrank."""
    return (layout.COMPRESS_QUANT, layout.COMPRESS_PRUNE, *([COMPRESS_LOWRANK] if lowrank_on() else []))


def compress_summaries(models):
    """Input: the experiments' summary tables of `models` (none when compress is off)."""
    if not COMPRESS["enabled"]:
        return []
    return [f"{folder}/summary.parquet".format(model=m) for m in models for folder in compress_folders()]


def compress_targets(model):
    """An experiment's tables, plans and figures (what the report reads), when compress is enabled."""
    if not COMPRESS["enabled"]:
        return []
    return [
        *[f"{layout.COMPRESS_QUANT}/{name}".format(model=model) for name in ("summary.parquet", "plans.json")],
        *[f"{layout.COMPRESS_PRUNE}/{name}".format(model=model) for name in ("summary.parquet", "allocations.parquet")],
        *[
            f"{COMPRESS_LOWRANK}/{name}".format(model=model)
            for name in ("summary.parquet", "allocations.parquet")
            if lowrank_on()
        ],
        *[path for folder in compress_folders() for path in figure_files(f"{folder}/pareto".format(model=model))],
        *(
            [f"{folder}/variant".format(model=model) for folder in compress_folders()]
            if COMPRESS["save_variants"]
            else []
        ),
    ]


# --- compression's comparisons and per-matrix sensitivity (rules compress.smk, sensitivity.smk, report.smk)

SENSITIVITY = COMPRESS["sensitivity"]
SENSITIVITY_FILES = ("estimates.parquet", "estimates.csv", "matrices.parquet", "matrices.csv", "agreement.json")


def compress_estimates_input(wildcards):
    """The per-matrix sensitivity estimates (rule compress_sensitivity) when compress.sensitivity is
    on: the oracle plans and every plan's predicted KL come from them; none otherwise."""
    if not COMPRESS.get("sensitivity", {}).get("enabled", False):
        return []
    return f"{layout.COMPRESS_SENSITIVITY}/estimates.parquet".format(model=wildcards.model)


def compress_comparison_settings():
    """What the comparisons state beside the evaluation settings: the interval level and the minimum effect."""
    return {**compress_evaluation(), **{key: EVALUATION[key] for key in ("min_effect", "confidence")}}


def sensitivity_plots_on():
    """Whether the per-matrix sensitivity runs (compress and compress.sensitivity enabled)."""
    return COMPRESS["enabled"] and COMPRESS.get("sensitivity", {}).get("enabled", False)


def sensitivity_plot_inputs():
    """compress_plots' inputs for the per-matrix sensitivity figures, when compress.sensitivity is on."""
    if not sensitivity_plots_on():
        return {}
    return {
        "sensitivity_matrices": f"{layout.COMPRESS_SENSITIVITY}/matrices.parquet",
        "correlations": f"{layout.COMPRESS_SENSITIVITY}/metric_correlations.parquet",
        "sensitivity_agreement": f"{layout.COMPRESS_SENSITIVITY}/agreement.json",
    }


def sensitivity_plot_outputs():
    """The sensitivity figures: every metric's rho with the measured KL, the best one against it."""
    if not sensitivity_plots_on():
        return {}
    return {
        name: figure(
            f"{layout.COMPRESS_SENSITIVITY}/{name}",
            category="{model}",
            subcategory="compression",
            caption=f"../report/sensitivity_{name}.rst",
        )
        for name in layout.SENSITIVITY_FIGURES
    }


def sensitivity_evaluation():
    """compress_evaluation() with the sensitivity's own window budget (CPU: max_tokens; CUDA: gpu_max_tokens)."""
    return {
        **compress_evaluation(),
        "max_tokens": SENSITIVITY["gpu_max_tokens" if BACKEND == "cuda" else "max_tokens"],
    }


def compress_sensitivity_targets(model):
    """The sensitivity tables of a model, when compress and compress.sensitivity are enabled."""
    if not (COMPRESS["enabled"] and SENSITIVITY["enabled"]):
        return []
    return [f"{layout.COMPRESS_SENSITIVITY}/{name}".format(model=model) for name in SENSITIVITY_FILES]


def compress_comparisons(models):
    """Input: the experiments' comparisons tables of `models` (none when compress is off)."""
    if not COMPRESS["enabled"]:
        return []
    return [f"{folder}/comparisons.parquet".format(model=m) for m in models for folder in compress_folders()]


def sensitivity_report_files(models, figures=True):
    """Input: the per-matrix sensitivity tables (and figures) the reports read, when compress and
    compress.sensitivity are enabled; none otherwise."""
    if not (COMPRESS["enabled"] and COMPRESS.get("sensitivity", {}).get("enabled", False)):
        return []
    names = ["matrices.parquet", "metric_correlations.parquet", "agreement.json"]
    return [
        *[f"{layout.COMPRESS_SENSITIVITY}/{name}".format(model=m) for m in models for name in names],
        *[
            path
            for m in (models if figures else [])
            for name in layout.SENSITIVITY_FIGURES
            for path in figure_files(f"{layout.COMPRESS_SENSITIVITY}/{name}".format(model=m))
        ],
    ]


# --- a model against another (rules/deltas.smk) -------------------------------------------------


def delta_units(model):
    """The units of a model's delta jobs: its selected units; an adapter-only model (no inventory of
    its own): every unit of its base."""
    if model in ADAPTERS:
        base = BASES[model]
        dims = model_dims(base)
        return layout.all_units(dims["layers"], present=set(read_manifest(base)[1].column("unit").to_pylist()))
    return units(model)


def delta_inputs(wildcards):
    """The inputs of the deltas rule: the base's unit and inventory, and the model's (after the pairing check),
    or an adapter-only model's fetched adapter folder."""
    model, unit = wildcards.model, wildcards.unit
    base = BASES[model]
    files = {
        "base_tensors": layout.TENSORS.format(model=base, unit=unit),
        "base_inventory": layout.INVENTORY.format(model=base),
    }
    if model in ADAPTERS:
        return {**files, "adapter": layout.CHECKPOINT.format(model=model)}
    return {
        **files,
        "tensors": layout.TENSORS.format(model=model, unit=unit),
        "inventory": layout.INVENTORY.format(model=model),
        "pairing": pair_layout.DELTA_PAIRING.format(model=model),
    }


def delta_selected_names(wildcards):
    """Param: the unit's selected names (an adapter-only model: every adapted matrix, [])."""
    return [] if wildcards.model in ADAPTERS else selected_names(wildcards)


def delta_unit_files(wildcards):
    return [pair_layout.DELTAS_UNIT.format(model=wildcards.model, unit=unit) for unit in delta_units(wildcards.model)]


def delta_plot_files(model, formats=None):
    return [
        path
        for name in pair_layout.DELTA_FIGURES
        for path in figure_files(f"{pair_layout.DELTA_PLOTS}/{name}".format(model=model), formats)
    ]


def delta_targets(model):
    """A model's delta tables and figures, when it has a base."""
    if model not in BASES:
        return []
    tables = (pair_layout.DELTAS, pair_layout.DELTAS_CSV, pair_layout.DELTAS_BY_LAYER)
    return [*(path.format(model=model) for path in tables), *delta_plot_files(model)]


def delta_report_files(wildcards):
    """model_report's delta inputs: the tables and figures of a model with a base; none otherwise."""
    if wildcards.model not in BASES:
        return []
    return [pair_layout.DELTAS.format(model=wildcards.model), pair_layout.DELTAS_BY_LAYER.format(model=wildcards.model)]


def pair_units(model, other):
    """The units of a compare pair: the model's selected units that the other model has."""
    theirs = set(units(other))
    return [unit for unit in units(model) if unit in theirs]


def distance_unit_files(wildcards):
    return [
        pair_layout.COMPARE_UNIT.format(model=wildcards.model, other=wildcards.other, unit=unit)
        for unit in pair_units(wildcards.model, wildcards.other)
    ]


def series_pairs(name):
    """A series' consecutive pairs, the later member first (its distances from the one before)."""
    members = SERIES[name]
    return list(zip(members[1:], members[:-1]))


def series_distance_files(name):
    return [pair_layout.COMPARE_DISTANCES.format(model=model, other=other) for model, other in series_pairs(name)]


def compare_files(figures=True, formats=None):
    """Every compare pair's tables (and figure)."""
    return [
        path
        for model, other in PAIRS
        for path in [
            pair_layout.COMPARE_DISTANCES.format(model=model, other=other),
            pair_layout.COMPARE_BY_LAYER.format(model=model, other=other),
            *(figure_files(pair_layout.COMPARE_FIGURE.format(model=model, other=other), formats) if figures else []),
        ]
    ]


def series_files(figures=True, formats=None):
    """Every series' table (and figure)."""
    return [
        path
        for name in SERIES
        for path in [
            pair_layout.SERIES_TABLE.format(series=name),
            *(figure_files(pair_layout.SERIES_FIGURE.format(series=name), formats) if figures else []),
        ]
    ]


# --- WeightWatcher's remaining diagnostics (the anatomy's diagnostics part) ---------------------


def anatomy_diagnostics_outputs():
    """The anatomy's diagnostics outputs, when diagnostics.enabled (update(): a part kept when current)."""
    if not DIAGNOSTICS["enabled"]:
        return {}
    return {
        "diagnostics": update(diagnostic_layout.DIAGNOSTICS),
        "rand_spectra": update(diagnostic_layout.RAND_SPECTRA),
    }


def diagnostics_files(kind="diagnostics"):
    """Input function: a model's per-unit diagnostics (or permuted spectra) files, every unit; none
    when diagnostics.enabled is false."""
    path = diagnostic_layout.DIAGNOSTICS if kind == "diagnostics" else diagnostic_layout.RAND_SPECTRA
    if not DIAGNOSTICS["enabled"]:
        return lambda wildcards: []
    return lambda wildcards: [path.format(model=wildcards.model, unit=unit) for unit in units(wildcards.model)]


def layer_diagnostics(wildcards):
    """esd_plot's optional inputs: the layer's permuted spectra and diagnostics (the MP edge), when on."""
    if not DIAGNOSTICS["enabled"]:
        return {}
    unit = layout.layer_unit(int(wildcards.layer))
    return {
        "rand_spectra": diagnostic_layout.RAND_SPECTRA.format(model=wildcards.model, unit=unit),
        "diagnostics": diagnostic_layout.DIAGNOSTICS.format(model=wildcards.model, unit=unit),
    }
