# Validation, the settings every rule file reads, the code hashes, and the run's closing lines.
# Resource requests are in resources.smk, input functions in inputs.smk, targets in targets.smk.
# blockscope is installed into the environment (make env; the conda env installs it too): the
# contracts (paths, units, columns) come from blockscope.layout, never spelled here again.
import functools
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path
from snakemake.exceptions import IncompleteCheckpointException

from blockscope.planning.job_start import PER_UNIT_RULES as PRICED_RULES
from blockscope.planning.model_plan import predicted_jobs
from blockscope.planning.slurm import slurm_request
from blockscope import diagnostic_layout, layout, pair_layout
from blockscope.checkpoint import selection as select
from blockscope.analysis.part_stamps import PART_MODULES
from blockscope.runtime.code_version import code_version
from blockscope.config.validation import validate_config
from blockscope.config.model_pairs import adapter_only, compare_pairs
from blockscope.runtime.device import backend_for, gpu_visible
from blockscope.compression.presets import PRESETS as QUANTIZATION_PRESETS
from blockscope.runtime.run_outcome import summary_lines

# The files config was read from and the --config values, so that an error names where the bad key is.
validate_config(
    config,
    Path(workflow.basedir) / "schemas" / "config.schema.yaml",
    configfiles=workflow.configfiles,
    cli_configfiles=workflow.overwrite_configfiles,
    command_line=workflow.config_settings.config,
)
MODELS = config["models"]
# A model against another (rules/deltas.smk): bases, adapter-only models (source peft, merged false:
# no weights of their own, so no anatomy), compare pairs (with each series' consecutive pairs), series.
BASES = {slug: spec["base"] for slug, spec in MODELS.items() if spec.get("base")}
ADAPTERS = [slug for slug, spec in MODELS.items() if adapter_only(spec)]
CHECKPOINTS = [slug for slug in MODELS if slug not in ADAPTERS]  # models with weights of their own
PAIRS = compare_pairs(config)
SERIES = config["series"]
DELTA_SETTINGS = {"subspace_k": config["deltas"]["subspace_k"], "hill_fraction": config["precision"]["k_fraction"]}
# WeightWatcher's remaining diagnostics: the anatomy's fourth part, joined into the metrics by aggregate.
DIAGNOSTICS = config["diagnostics"]
# rule adapter_report writes the report.md of adapter-only models, model_report every other's
ADAPTER_WILDCARD = "|".join(map(re.escape, ADAPTERS)) or "(?!)"
# rule fetch_adapter fetches peft models (merged or not), fetch every other
PEFT_WILDCARD = "|".join(re.escape(slug) for slug, spec in MODELS.items() if spec["source"] == "peft") or "(?!)"
FETCHED_WILDCARD = "|".join(re.escape(slug) for slug, spec in MODELS.items() if spec["source"] != "peft") or "(?!)"
CHECKPOINT_WILDCARD = "|".join(map(re.escape, CHECKPOINTS)) or "(?!)"
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
    other="(?!summary/)[a-z0-9][a-z0-9._-]*",
    series="[a-z0-9][a-z0-9._-]*",


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
    Its `select` is left out: what to analyse never refetches the checkpoint; so is its `base`,
    except an adapter's (checked against, or merged into, the base's checkpoint when fetched)."""
    spec = MODELS[model]
    dropped = {"select"} if spec["source"] == "peft" else {"select", "base"}
    return {key: value for key, value in spec.items() if key not in dropped}


def fetch_inputs(wildcards):
    """A synthetic model `like` another copies its config."""
    spec = model_spec(wildcards.model)
    return {"like": layout.CHECKPOINT.format(model=spec["like"])} if spec.get("like") else {}


# Downloads need the network (login nodes) and aggregation is light: keep them off the queue.
localrules:
    all,
    finished_reports,
    selection,
    plan,
    fetch,
    fetch_adapter,
    fetch_corpus,
    aggregate,
    summary,
    summary_plots,
    summary_report,
    model_report,
    headmerge_plots,
    compress_plots,
    head_deep_dive_plot,
    delta_pairing,
    delta_tables,
    delta_plots,
    compare_tables,
    compare_plots,
    series,
    series_plots,
    adapter_report,
