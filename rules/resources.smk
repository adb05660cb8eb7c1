# Resource requests and priorities of the per-unit jobs, from the cost model's prediction.
import errno

# What each per-unit job will cost (blockscope.planning): priced from the inventory with this
# machine's measured throughput (cached per machine), or for device cuda without a visible GPU
# (a SLURM submit host) from the published throughput of plan.gpu.
PLAN = config["plan"]
SVD_METHOD = config["svd_method"]
PLAN_DEVICE = None if BACKEND == "cpu" or gpu_visible() else PLAN["gpu"]


def plan_options(model):
    """What a prediction of `model`'s jobs depends on besides the inventory (the plan rule's params
    too): a model with a base also runs rule deltas; an adapter-only model runs it alone."""
    return {
        "backend": BACKEND,
        "device": PLAN_DEVICE,
        "method": SVD_METHOD,
        "compute_dtype": config["compute_dtype"],
        "precisions": config["precision"]["precisions"],
        "diagnostics": config["diagnostics"]["enabled"],
        "vectors": config["diagnostics"]["vectors"],
        **({"deltas": True} if model in BASES else {}),
        **({"adapter_only": True} if model in ADAPTERS else {}),
    }


def priced_model(model):
    """Whose inventory prices a model's jobs: an adapter-only model's base (no weights of its own)."""
    return BASES[model] if model in ADAPTERS else model


@functools.cache
def _predicted_jobs(model, stamp):
    priced = priced_model(model)
    dims = read_manifest(priced)[0]
    chosen = None if model in ADAPTERS else selected(model, dims)
    return predicted_jobs(layout.INVENTORY.format(model=priced), dims, chosen, **plan_options(model))


def predicted_job(model, rule, unit):
    """The cost model's Job (seconds, mem_mb) of one per-unit job (re-priced when the inventory
    changes). Every unit of the model has a price (predicted_jobs): a unit outside `select` that
    the embedding analysis reads is priced whole."""
    priced = priced_model(model)
    try:
        stamp = manifest_stamp(priced)
    except FileNotFoundError:
        # Not inventoried yet, or a manifest deleted to be rebuilt. Snakemake shows <TBD> and asks
        # again later only when the missing file is one of the job's inputs: name the inventory.
        raise FileNotFoundError(errno.ENOENT, "not inventoried yet", layout.INVENTORY.format(model=priced)) from None
    return _predicted_jobs(model, stamp)[unit, rule]


def predicted(rule, resource):
    """A per-unit rule's SLURM request (runtime in minutes or mem_mb): the cost model's
    prediction x plan.safety, growing with each retry (attempt 1, 2, ...); <TBD> while the model
    is not inventoried (Snakemake asks again when the job is ready to start)."""

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


def predicted_delta(resource):
    """The deltas rule's SLURM request (priced for a model with a base, an adapter from its base's inventory)."""
    return predicted("deltas", resource)


delta_priority = longest_first("deltas")
