"""A model's plan: every per-unit job priced (plan_model), the workflow's resource requests
(predicted_jobs), their totals per rule and overall, and plan.json (plan_document)."""

from dataclasses import asdict

import pandas as pd

from blockscope.layout import PLAN_JOB_COLUMNS, all_units, unit_order
from blockscope.planning.job_start import DELTA_RULES, GPU_RULES, PER_UNIT_RULES, PRICED_RULES
from blockscope.planning.pricing import DIAGNOSTICS, VECTORS, Job, predict_unit
from blockscope.planning.throughput import Throughput
from blockscope.planning.throughput_cache import throughput


def model_rules(deltas: bool = False, adapter_only: bool = False) -> tuple:
    """The per-unit rules a model runs: extract and anatomy unless it is adapter-only (a peft
    adapter with merged false has no weights of its own), deltas where it has a base."""
    return (() if adapter_only else PER_UNIT_RULES) + (DELTA_RULES if deltas or adapter_only else ())


def plan_model(inventory: pd.DataFrame, dims: dict, t: Throughput, method: str = "gesdd",
               compute_dtype: str = "float32", precisions=("fp32", "fp16", "bf16"), selected: dict | None = None,
               deltas: bool = False, adapter_only: bool = False, diagnostics: bool = DIAGNOSTICS,
               vectors: bool = VECTORS) -> pd.DataFrame:
    """One row per (unit, rule): predicted seconds, mem_mb, gflops. selected: unit -> parameter
    names (the workflow's selection) or None (the whole unit); None: every unit whole. Rule
    extract is priced on the whole unit whatever the selection: it writes every tensor of its unit.
    deltas: the model has a base (rule deltas priced on the selected tensors too); adapter_only: an
    adapter without weights of its own, `inventory` and `dims` its base's, its deltas alone priced
    from LoRA factors on every matrix of a unit (which ones it adapts is not known before its job).
    diagnostics, vectors: config diagnostics.enabled and diagnostics.vectors (the anatomy's
    diagnostics part, and its singular vectors: they change rule anatomy's price alone)."""
    rows = []
    units = selected if selected is not None else {u: None for u in inventory["unit"].unique()}
    for unit in sorted(units, key=unit_order):
        whole = inventory[inventory["unit"] == unit]
        part = whole if units[unit] is None else whole[whole["param_name"].isin(units[unit])]
        for rule in model_rules(deltas, adapter_only):
            on = whole if rule == "extract" or adapter_only else part
            job = predict_unit(on, rule, t, method, compute_dtype=compute_dtype, precisions=list(precisions),
                               dims=dims, adapter_only=adapter_only, diagnostics=diagnostics, vectors=vectors)
            rows.append({"unit": unit, "rule": rule, "seconds": job.seconds, "mem_mb": job.mem_mb,
                         "gflops": job.flops / 1e9})
    return pd.DataFrame(rows, columns=PLAN_JOB_COLUMNS)


def predicted_jobs(inventory_path, dims: dict, selected: dict | None, backend="cpu", device=None, method="auto",
                   compute_dtype="float32", precisions=("fp32",), deltas=False, adapter_only=False,
                   diagnostics=DIAGNOSTICS, vectors=VECTORS) -> dict:
    """(unit, rule) -> Job of every per-unit job the workflow may ask for (its resource requests and
    priorities): every unit of the model (layout.all_units, empty ones too), a unit of `selected`
    (unit -> parameter names, None: no selection) priced on its selected tensors, any other on the
    whole unit (the embedding analysis extracts embed and lm_head whatever the selection). deltas,
    adapter_only, diagnostics, vectors: as plan_model (an adapter-only model: its base's inventory and dims)."""
    inventory = pd.read_parquet(inventory_path)
    units = {unit: None for unit in all_units(dims["layers"], present=set(inventory["unit"]))}
    jobs = plan_model(inventory, dims, throughput(backend, device), method, compute_dtype, precisions,
                      {**units, **(selected or {})}, deltas, adapter_only, diagnostics, vectors)
    return {(r.unit, r.rule): Job(r.seconds, r.mem_mb, r.gflops * 1e9) for r in jobs.itertuples()}


def plan_totals(jobs: pd.DataFrame, cores: int = 1) -> dict:
    """Job-seconds per rule and overall, the largest job's memory, and the wall time on `cores`
    (job-seconds / cores, never less than the longest job)."""
    per_rule = jobs.groupby("rule")["seconds"].sum()
    total = float(jobs["seconds"].sum())
    return {"seconds": total, "per_rule_seconds": {r: float(s) for r, s in per_rule.items()},
            "peak_mem_mb": float(jobs["mem_mb"].max()) if len(jobs) else 0.0, "jobs": len(jobs),
            "cores": cores, "wall_s": max(total / max(cores, 1), float(jobs["seconds"].max()) if len(jobs) else 0.0)}


def one_gpu_wall_s(jobs: pd.DataFrame, cores: int) -> float:
    """Wall seconds of a plan on one GPU: the GPU rules' jobs take it one at a time (each claims
    the workflow's gpu resource) while every job shares `cores` (plan_totals' wall)."""
    on_gpu = float(jobs.loc[jobs["rule"].isin(GPU_RULES), "seconds"].sum())
    return max(on_gpu, plan_totals(jobs, cores)["wall_s"])


def rule_totals(jobs: pd.DataFrame) -> pd.DataFrame:
    """Per rule that has jobs (PRICED_RULES order first), then a `total` row: jobs, their
    predicted seconds summed, and the largest job's memory (MB)."""
    order = [r for r in PRICED_RULES if r in set(jobs["rule"])] + sorted(set(jobs["rule"]) - set(PRICED_RULES))
    grouped = jobs.groupby("rule")
    table = pd.DataFrame({"jobs": grouped.size(), "seconds": grouped["seconds"].sum(),
                          "peak_mem_mb": grouped["mem_mb"].max()}).reindex(order)
    total = {"jobs": len(jobs), "seconds": float(jobs["seconds"].sum()),
             "peak_mem_mb": float(jobs["mem_mb"].max()) if len(jobs) else 0.0}
    return pd.concat([table, pd.DataFrame([total], index=["total"])])


def plan_document(model: str, jobs: pd.DataFrame, t: Throughput, method: str, cores: int = 1) -> dict:
    """plan.json: the jobs, their totals and the throughput they were priced with."""
    return {"model": model, "backend": t.backend, "method": method, "totals": plan_totals(jobs, cores),
            "jobs": jobs.round({"seconds": 3, "mem_mb": 1, "gflops": 3}).to_dict(orient="records"),
            "throughput": asdict(t)}


def total_line(model: str, document: dict) -> str:
    totals = document["totals"]
    rules = ", ".join(f"{r} {s:.0f} s" for r, s in sorted(totals["per_rule_seconds"].items()))
    return (f"[{model}] plan: {totals['jobs']} per-unit jobs, {totals['seconds']:.0f} job-seconds "
            f"(~{hms(totals['wall_s'])} on {totals['cores']} cores), peak {totals['peak_mem_mb']:.0f} MB; "
            f"{rules} ({document['backend']}, {document['method']}, {document['throughput']['device']}, "
            f"{document['throughput']['basis']})")


def hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
