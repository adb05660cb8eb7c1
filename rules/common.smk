# Validation, the model table, input functions and manifest readers.
# blockscope is installed into the environment (make env; the conda env installs it too): the
# contracts (paths, units, columns) come from blockscope.layout, never spelled here again.
import functools
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from snakemake.exceptions import IncompleteCheckpointException

from blockscope.planning.job_start import PER_UNIT_RULES as PRICED_RULES
from blockscope.planning.model_plan import predicted_jobs
from blockscope.planning.slurm import slurm_request
from blockscope import layout
from blockscope.checkpoint import selection as select
from blockscope.analysis.part_stamps import PART_MODULES
from blockscope.runtime.code_version import code_version
from blockscope.config.validation import validate_config
from blockscope.runtime.device import backend_for, gpu_visible
from blockscope.compression.presets import PRESETS as QUANTIZATION_PRESETS
from blockscope.runtime.run_outcome import summary_lines

# The files config was read from and the --config values, so that an error names where the bad key is.
validate_config(config, Path(workflow.basedir) / "schemas" / "config.schema.yaml",
                configfiles=workflow.configfiles, cli_configfiles=workflow.overwrite_configfiles,
                command_line=workflow.config_settings.config)
MODELS = config["models"]
LIBRARY = Path(workflow.basedir) / "blockscope"
SCRIPTS = Path(workflow.basedir) / "workflow_scripts"
# envs/blockscope.yaml installs this checkout's library (Snakemake copies env files elsewhere).
os.environ.setdefault("BLOCKSCOPE_SOURCE", workflow.basedir)

# The device is decided here, once: device: cpu never claims the gpu resource; auto claims it
# only where a GPU is visible (on a cluster, set device: cuda so that jobs ask SLURM for one).
BACKEND = backend_for(config["device"])
GPU_CLAIM = 1 if BACKEND == "cuda" else 0


wildcard_constraints:
    model="(?!summary/)[a-z0-9][a-z0-9._-]*",  # results/summary/ is the cross-model folder, no model's
    unit=layout.UNIT_WILDCARD,
    layer="[0-9]+",
    head="[0-9]+",


def code(script):
    """Param: hash of the library modules workflow_scripts/<script>.py reaches, so a library
    edit reruns exactly the jobs it can change."""
    return code_version(SCRIPTS / f"{script}.py", LIBRARY)


def part_code(part):
    """Param: hash of the library modules one part of rule anatomy depends on (anatomy.PART_MODULES)
    and of the script that calls them, which every part's results go through."""
    script = hashlib.sha256((SCRIPTS / "anatomy.py").read_bytes()).hexdigest()[:16]
    return f"{code_version(None, LIBRARY, PART_MODULES[part])}-{script}"


def benchmark(rule, job="model"):
    """A job's Snakemake benchmark file: results/{model}/benchmarks/<rule>/<job>.tsv."""
    return layout.BENCHMARK.format(model="{model}", rule=rule, job=job)


def model_spec(model):
    """A model's own config slice: the only config its rules see (keeps reruns per model).
    Its `select` is left out: what to analyse never refetches the checkpoint."""
    return {key: value for key, value in MODELS[model].items() if key != "select"}


def fetch_inputs(wildcards):
    like = model_spec(wildcards.model).get("like")
    return {"like": layout.CHECKPOINT.format(model=like)} if like else {}


# What each per-unit job will cost (blockscope.planning): priced from the inventory with this
# machine's measured throughput (cached per machine), or for device cuda without a visible GPU
# (a SLURM submit host) from the published throughput of plan.gpu.
PLAN = config["plan"]
SVD_METHOD = config["svd_method"]
PLAN_DEVICE = None if BACKEND == "cpu" or gpu_visible() else PLAN["gpu"]


def plan_options():
    """What a prediction depends on besides the inventory (the plan rule's params too)."""
    return {"backend": BACKEND, "device": PLAN_DEVICE, "method": SVD_METHOD, "compute_dtype": config["compute_dtype"],
            "precisions": config["precision"]["precisions"]}


@functools.cache
def _predicted_jobs(model, stamp, whole=False):
    with open(layout.MODEL_JSON.format(model=model)) as fh:
        dims = json.load(fh)
    return predicted_jobs(layout.INVENTORY.format(model=model), dims, None if whole else selected(model, dims),
                          **plan_options())


def predicted_job(model, rule, unit):
    """The cost model's Job (seconds, mem_mb) of one per-unit job (re-priced when the inventory
    changes). A job outside `select` (the embedding analysis extracts `embed` whatever the
    selection) is priced on the whole unit."""
    stamp = os.path.getmtime(layout.INVENTORY.format(model=model))
    jobs = _predicted_jobs(model, stamp)
    return jobs[unit, rule] if (unit, rule) in jobs else _predicted_jobs(model, stamp, whole=True)[unit, rule]


def predicted(rule, resource):
    """A per-unit rule's SLURM request (runtime in minutes or mem_mb): the cost model's
    prediction x plan.safety, growing with each retry (attempt 1, 2, ...)."""
    def request(wildcards, attempt):
        job = predicted_job(wildcards.model, rule, wildcards.unit)
        return slurm_request(job, attempt, PLAN["safety"])[resource]
    return request


# Scheduling, longest first (LPT): among the jobs ready at once Snakemake starts those of the
# highest priority, so a long job (a large vocabulary's embedding unit) does not start last and
# run alone while the other cores idle. Per-unit jobs rank by their predicted seconds; the
# model-level jobs that run for minutes rank above them (MINUTES_LONG), the plan above all (its
# total is printed before the heavy jobs run). Modest numbers: they weigh the ILP scheduler's objective.
PLAN_PRIORITY, MINUTES_LONG = 1e5, 1e4


def longest_first(rule):
    """A per-unit rule's priority: the cost model's predicted seconds of the job; 0 while the
    inventory is not there (Snakemake asks again after the checkpoint has run)."""
    def priority(wildcards):
        try:
            return round(predicted_job(wildcards.model, rule, wildcards.unit).seconds, 3)
        except (IncompleteCheckpointException, FileNotFoundError):
            return 0
    return priority


def model_dims(model):
    """model.json of a model (evaluates the inventory checkpoint)."""
    with open(checkpoints.inventory.get(model=model).output.dims) as fh:
        return json.load(fh)


def model_selection(model):
    """The model's resolved select: its own keys over the top-level ones (blockscope.checkpoint.selection)."""
    return select.resolve(config.get("select"), MODELS[model].get("select"))


@functools.cache
def _selected(model, stamp, layers):
    import pyarrow.parquet as pq

    path = layout.INVENTORY.format(model=model)
    inventory = pq.read_table(path, columns=["param_name", "unit", "layer_index"]).to_pandas()
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
    return _selected(model, os.path.getmtime(layout.INVENTORY.format(model=model)), dims["layers"])


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
    return [layout.METRICS.format(model=twin) for twin, of in CONTROLS.items() if of == wildcards.model][:1]


FORMATS = config["report"]["formats"]
EMBEDDED = layout.embedded_format(FORMATS)  # what report.md links and the HTML report shows
OTHER_FORMATS = [ext for ext in FORMATS if ext != EMBEDDED]


def figure(stem, **report_kwargs):
    """Output: one figure in every report.formats. The embedded format is flagged for the HTML
    report with `report_kwargs` (category, caption, ...); the other formats are plain outputs.
    Scripts pass the whole list to plots.save, which writes each file in its suffix's format."""
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
    folders = [f"{plots}/precision", layout.PRECISION_CATEGORIES.format(model=model),
               *([layout.PRECISION_MATRICES.format(model=model)] if config["report"]["per_matrix_charts"] else [])] \
        if EMBEDDED in formats else []  # folders of figures, every format inside
    return [path for stem in stems for path in figure_files(stem, formats)] + folders


def summary_plot_files(formats=None):
    """The cross-model figures, in `formats` (default: every report.formats)."""
    return [path for metric in layout.PLOT_METRICS
            for path in figure_files(f"{layout.SUMMARY}/plots/{metric}_by_depth", formats)]


HEADMERGE = config["headmerge"]


def headmerge_dims(wildcards):
    """Input function: model.json, once headmerge.layers is known to fit the model."""
    layers = select.parse_layers(HEADMERGE.get("layers"))
    if layers:
        try:
            select.check_layers(layers, model_dims(wildcards.model)["layers"], "headmerge.layers",
                                model=wildcards.model, path="config.yaml")
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
        *[path for name in layout.HEADMERGE_FIGURES
          for path in figure_files(f"{layout.HEADMERGE.format(model=model)}/{name}")],
        *[path for t in HEADMERGE["thresholds"] for stem in headmerge_threshold_stems(t)
          for path in figure_files(stem.format(model=model))],
    ]


def headmerge_threshold_stems(t):
    """The per-threshold figures of headmerge_plots (stems): the comparison, the merged pairs by layer."""
    return [stem.format(model="{model}", threshold=t) for stem in layout.HEADMERGE_THRESHOLD_FIGURES]


COMPRESS = config["compress"]
COMPRESS_PRESETS = list(QUANTIZATION_PRESETS)


def compress_evaluation():
    """The evaluation settings the experiments share with head merging (the windows come with the
    base evaluation, an input; plans are scored on its first max_tokens), and when a base is too
    near chance to be worth perturbing."""
    keys = ("batch_size", "dtype", "bootstrap")
    return {**{key: config["headmerge"][key] for key in keys}, "min_bits_over_chance": COMPRESS["min_bits_over_chance"],
            "max_tokens": COMPRESS["gpu_max_tokens" if BACKEND == "cuda" else "max_tokens"]}


def compress_variant(folder):
    """The optional output of an experiment: its chosen variant as a checkpoint (compress.save_variants)."""
    return {"variant": directory(f"{folder}/variant")} if COMPRESS["save_variants"] else {}


def compress_summaries(models):
    """Input: the experiments' summary tables of `models` (none when compress is off)."""
    if not COMPRESS["enabled"]:
        return []
    return [f"{folder}/summary.parquet".format(model=m) for m in models
            for folder in (layout.COMPRESS_QUANT, layout.COMPRESS_PRUNE)]


def compress_targets(model):
    """An experiment's tables, plans and figures (what the report reads), when compress is enabled."""
    if not COMPRESS["enabled"]:
        return []
    return [
        *[f"{layout.COMPRESS_QUANT}/{name}".format(model=model) for name in ("summary.parquet", "plans.json")],
        *[f"{layout.COMPRESS_PRUNE}/{name}".format(model=model) for name in ("summary.parquet", "allocations.parquet")],
        *[path for folder in (layout.COMPRESS_QUANT, layout.COMPRESS_PRUNE)
          for path in figure_files(f"{folder}/pareto".format(model=model))],
        *([f"{folder}/variant".format(model=model) for folder in (layout.COMPRESS_QUANT, layout.COMPRESS_PRUNE)]
          if COMPRESS["save_variants"] else []),
    ]


# Rules that run once per unit, and once per model, with a benchmark file each (the report's
# "where the time went" reads them all).
PER_UNIT_RULES = list(PRICED_RULES)
PER_MODEL_RULES = ["fetch", "inventory", "selection", "plan", "embedding", "embedding_plots", "aggregate", "metric_plots",
                   "head_and_precision_plots", "detail_tables", "down_proj_plot", "precision_category_plots"]


def benchmark_files(model):
    """Every benchmark file of a model's jobs up to its report."""
    files = [benchmark(rule).replace("{model}", model) for rule in PER_MODEL_RULES]
    files += [benchmark(rule, unit).replace("{model}", model) for rule in PER_UNIT_RULES for unit in units(model)]
    files += [benchmark("esd_plot", f"layer_{layer}").replace("{model}", model) for layer in esd_layers(model)]
    files += [benchmark(rule, f"layer_{layer}_head_{head}").replace("{model}", model)
              for rule in ("head_deep_dive", "head_deep_dive_plot") for layer, head in deep_dive_heads(model)]
    if HEADMERGE["enabled"] or COMPRESS["enabled"]:
        files += [benchmark("evaluate_base").replace("{model}", model)]
    if HEADMERGE["enabled"]:
        files += [benchmark(rule).replace("{model}", model) for rule in ("headmerge", "headmerge_plots")]
    if COMPRESS["enabled"]:
        files += [benchmark(rule).replace("{model}", model)
                  for rule in ("compress_quant", "compress_prune", "compress_plots")]
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
    return [layout.REPORT.format(model=model), layout.PLAN.format(model=model), *headmerge_targets(model),
            *compress_targets(model),
            *inventoried_model_files(model)]


def all_targets(wildcards):
    return [target for model in MODELS for target in per_model_targets(model)] + [
        f"{layout.SUMMARY}/metrics.parquet",
        f"{layout.SUMMARY}/depth_comparison.csv",
        *summary_plot_files(),
        layout.SUMMARY_REPORT,
    ]


# The run's last lines say which models finished and, for the others, why not.
RUN_STARTED = time.time()


def report_outcomes():
    for line in summary_lines(MODELS, RUN_STARTED):
        print(line)


onsuccess:
    report_outcomes()


onerror:
    report_outcomes()


# Downloads need the network (login nodes) and aggregation is light: keep them off the queue.
localrules:
    all,
    selection,
    plan,
    fetch,
    fetch_corpus,
    aggregate,
    summary,
    summary_plots,
    summary_report,
    model_report,
    headmerge_plots,
    compress_plots,
    head_deep_dive_plot,
