"""The low-rank experiment (rule compress_lowrank): the plans of blockscope.compression.low_rank
written into the live model through the experiments' WeightSwap and Scorer, scored on the base
evaluation's windows like the pruning plans (every set of ranks once), and compared with their
controls by window (compression.comparisons' Comparer, evaluation.paired_tests): each spectral
plan against its mirror, its uniform plan and the mean of its random plans; each LASER plan
against the base and against its random matrices of the same type and shape reduced alike.
"""

import dataclasses
import logging
import time

import numpy as np
import pandas as pd

from blockscope.compression import low_rank as lr
from blockscope.compression.comparisons import FIELD, Comparer, frame, mean_nll, named
from blockscope.compression.experiments import CONTROL_KINDS, Outcome, Scorer, Session, WeightSwap, base_row
from blockscope.diagnostic_layout import LOWRANK_ALLOCATION_COLUMNS, LOWRANK_SUMMARY_COLUMNS, column_type
from blockscope.errors import BlockscopeError
from blockscope.evaluation.paired_tests import comparison_row, paired_difference, rank_p_value

SKIPPED_KINDS = (*CONTROL_KINDS, "laser_control")  # drawn controls: one that repeats earlier weights gets no row


def typed(frame_: pd.DataFrame, columns) -> pd.DataFrame:
    """The table in its declared columns and types (diagnostic_layout.column_type; text keeps None)."""
    out = frame_.reindex(columns=columns)
    for column in columns:
        kind = column_type(column)
        if kind == "str":
            out[column] = out[column].astype(object).where(out[column].notna(), None)
        else:
            out[column] = out[column].astype(kind if kind != "float64" else float)
    return out


# --- the session's matrices ---------------------------------------------------------------------------------

def planned_matrices(metrics: pd.DataFrame, settings: dict, model: str = None) -> pd.DataFrame:
    """The matrices the low-rank plans cover (low_rank.lowrank_matrices with settings' block_types
    and last_layers, the metrics the allocations need finite); BlockscopeError when none."""
    needed = [m for family, m in (("alpha", settings["alpha_metric"]), ("effective_rank", "effective_rank"))
              if family in settings["allocations"] and settings["budgets"]]
    matrices = lr.lowrank_matrices(metrics, needed, settings.get("block_types"), settings.get("last_layers"))
    if matrices.empty:
        raise BlockscopeError("no planned matrix for the low-rank plans", model=model, path="compress.lowrank",
                              fix="widen compress.lowrank.block_types / last_layers")
    return matrices


def lowrank_session(session: Session, matrices: pd.DataFrame) -> Session:
    """The experiments' session with a WeightSwap over the low-rank plans' matrices."""
    swap = WeightSwap(session.model, list(matrices.index))
    return dataclasses.replace(session, matrices=matrices, swap=swap)


# --- the plans ---------------------------------------------------------------------------------------------------

def plan_specs(matrices: pd.DataFrame, factors: lr.Factors, settings: dict, model: str = None) -> tuple:
    """(specs, {(plan, against): why that control is missing}): per budget every family's plan with
    its controls (low_rank.budget_specs), then the LASER plans and their controls."""
    specs, missing = [], {}
    if settings["budgets"] and settings["allocations"]:
        started = time.perf_counter()
        sigmas = {name: factors.sigma(name) for name in matrices.index}
        logging.info("%d SVDs in float64 in %.1f s", len(sigmas), time.perf_counter() - started)
        for budget in settings["budgets"]:
            lr.check_budget(budget, model)
            try:
                specs += lr.budget_specs(matrices, sigmas, budget, settings["allocations"], settings["alpha_metric"],
                                         settings["eps"], settings["random_seeds"])
            except ValueError as error:
                raise BlockscopeError(f"low-rank budget {budget:g}: {error}", model=model,
                                      path="compress.lowrank.budgets", fix="raise the budget") from error
        if not settings["random_seeds"]:
            missing.update({(s["plan"], "random"): "none drawn (compress.lowrank.random_seeds: 0)"
                            for s in specs if s["kind"] in lr.FAMILIES})
    laser = settings["laser"]
    if laser["enabled"]:
        found, why = lr.laser_specs(matrices, laser["block_types"], laser["last_layers"], laser["rank_fraction"],
                                    laser["controls"], laser["seed"])
        if not found:
            logging.warning("no LASER plan: no planned matrix of %s in the last %d blocks", laser["block_types"],
                            laser["last_layers"])
        specs, missing = specs + found, {**missing, **why}
    return specs, missing


# --- one plan's rows --------------------------------------------------------------------------------------------

def summary_fields(spec: dict, matrices: pd.DataFrame, factors: lr.Factors) -> dict:
    """What a plan keeps: matrices edited, parameters (and their share), the edited matrices' energy."""
    ranks = spec["ranks"]
    edited = ranks[ranks > 0]
    energy = [(lr.kept_energy(factors.sigma(n), r) * float(np.sum(factors.sigma(n) ** 2)),
               float(np.sum(factors.sigma(n) ** 2))) for n, r in edited.items()]
    kept = lr.plan_params(ranks, matrices)
    return {"budget": spec["budget"], "matrix": spec["matrix"], "matrices_edited": len(edited), "params_kept": kept,
            "params_share": kept / float(matrices["params"].sum()),
            "energy_kept": sum(e for e, _ in energy) / max(sum(t for _, t in energy), np.finfo(float).tiny),
            "stated_energy": spec["stated_energy"]}


def allocation_rows(spec: dict, matrices: pd.DataFrame, factors: lr.Factors, model: str) -> pd.DataFrame:
    """One row per matrix the plan edits: its metric, rank, parameters, energy kept and relative error."""
    ranks = spec["ranks"][spec["ranks"] > 0]
    rows = matrices.loc[ranks.index]
    sigma = {n: factors.sigma(n) for n in ranks.index}
    norms = {n: float(np.sqrt(np.sum(s * s))) for n, s in sigma.items()}
    values = spec["values"] if spec["values"] is not None else pd.Series(np.nan, index=matrices.index)
    return pd.DataFrame({
        "model": model, "budget": spec["budget"], "plan": spec["plan"], "param_name": list(ranks.index),
        "block_type": rows["block_type"].to_numpy(), "layer_index": rows["layer_index"].to_numpy(),
        "rows": rows["rows"].to_numpy(), "cols": rows["cols"].to_numpy(),
        "metric": spec["metric"] or "laser_rank_fraction", "metric_value": values[ranks.index].to_numpy(float),
        "rank": ranks.to_numpy(), "full_rank": rows["full_rank"].to_numpy(),
        "break_even_rank": rows["break_even_rank"].to_numpy(),
        "params_kept": [lr.factor_params(m, n, r) for m, n, r in zip(rows["rows"], rows["cols"], ranks)],
        "energy_kept": [lr.kept_energy(sigma[n], r) for n, r in ranks.items()],
        "relative_error": [lr.truncation_error(sigma[n], r) / norms[n] if norms[n] else 0.0 for n, r in ranks.items()]})


def ranks_json(specs: list) -> dict:
    """plans.json's ranks: {plan: {param_name: rank}} of the edited matrices."""
    return {s["plan"]: {n: int(r) for n, r in s["ranks"].items() if r} for s in specs}


# --- the experiment ------------------------------------------------------------------------------------------------

def lowrank_experiment(scorer: Scorer, matrices: pd.DataFrame, factors: lr.Factors, settings: dict,
                       model_name: str) -> Outcome:
    """Every plan of plan_specs scored (one evaluation per distinct set of ranks; a drawn control
    that repeats earlier weights gets no row). Outcome.plans: {plan: {param: rank}}; details:
    {"allocations": per plan and edited matrix, "stated_energy": {plan: E}}; Outcome.missing:
    {(plan, against): why that control is missing}."""
    specs, missing = plan_specs(matrices, factors, settings, model_name)
    needed = pd.concat([s["ranks"] for s in specs], axis=1).max(axis=1) if specs else pd.Series(dtype=int)
    for name, rank in needed[needed > 0].items():
        factors.compute(name)  # the LASER matrices not yet decomposed (the allocations' ones are)
        factors.trim(name, int(rank))
    rows = [{"model": model_name, "plan": "base", "kind": "base", "matrices_edited": 0, "energy_kept": 1.0,
             "params_kept": int(matrices["params"].sum()), "params_share": 1.0, **base_row(scorer.base)}]
    kept, scores, allocations = [], {}, []
    for spec in specs:
        ranks = spec["ranks"]

        def new_weight(name, w, ranks=ranks):
            rank = int(ranks[name])
            return w if rank == 0 else factors.weight(name, rank, w)

        result, window_scores, new = scorer(("lowrank", lr.rank_key(ranks)), new_weight)
        if spec["kind"] in SKIPPED_KINDS and not new:
            continue
        rows.append({"model": model_name, **{k: spec[k] for k in ("plan", "kind", "of", "seed", "direction")},
                     **summary_fields(spec, matrices, factors), **result})
        scores[spec["plan"]] = window_scores
        allocations.append(allocation_rows(spec, matrices, factors, model_name))
        kept.append(spec)
    table = typed(pd.DataFrame(rows), LOWRANK_SUMMARY_COLUMNS)
    allocation = typed(pd.concat(allocations, ignore_index=True) if allocations else pd.DataFrame(),
                       LOWRANK_ALLOCATION_COLUMNS)
    return Outcome(table, ranks_json(kept), scores, missing, details={
        "allocations": allocation,
        "stated_energy": {s["plan"]: s["stated_energy"] for s in kept if s["stated_energy"] is not None}})


def chosen_lowrank_plan(table: pd.DataFrame) -> str | None:
    """The variant compress.save_variants writes: the spectral plan, mirror or LASER plan of lowest
    perplexity (an encoder: of lowest embedding loss), spectral plans at the first budget."""
    rows = table[table["kind"].isin([*lr.FAMILIES, "mirror", "laser"])]
    budgets = rows["budget"].dropna()
    if len(budgets):
        rows = rows[rows["budget"].isna() | (rows["budget"] == budgets.iloc[0])]
    by = "kl_divergence" if rows["perplexity"].isna().all() else "perplexity"
    return None if rows.empty else str(rows.sort_values(by, kind="stable")["plan"].iloc[0])


# --- the comparisons --------------------------------------------------------------------------------------------

def against_matrices(compare: Comparer, plan: str, others: list, why: str | None) -> dict:
    """A LASER plan against its random matrices reduced alike: one (paired), or their per-window
    mean with the plan's rank among them; none: a row that says why."""
    if not others:
        return compare.missing(plan, "random_matrix", why or "no random matrix")
    if len(others) == 1:
        return compare.paired(plan, "random_matrix", others[0])
    controls = [compare.scores[o] for o in others]
    result = paired_difference(compare.scores[plan], controls, level=compare.level, field=FIELD)
    p_value = rank_p_value(mean_nll(compare.scores[plan]), [mean_nll(c) for c in controls])
    return comparison_row(compare.model, compare.experiment, plan, "random_matrix",
                          f"mean of {len(others)} random matrices", result, compare.min_effect, p_value=p_value,
                          n_random=len(others), articles=compare.articles, metric=compare.metric)


def uniform_control(table: pd.DataFrame, family: str, budget: float) -> list:
    """The family's own uniform plan at the budget, else the budget's shared one (`of` empty)."""
    rows = table[(table["kind"] == "uniform") & (table["budget"] == budget)]
    own = rows[rows["of"] == family]
    return (own if len(own) else rows[rows["of"].isna()])["plan"].tolist()


def lowrank_comparisons(table: pd.DataFrame, scores: dict, base, model: str, level: float, min_effect: float,
                        articles: int | None, metric: str = "nll", missing: dict = None) -> pd.DataFrame:
    """Per spectral plan: against its mirror, its uniform plan and its random plans' mean; per LASER
    plan: against the base (`base`) and its random matrices (`random_matrix`). base: the base's
    scores on the same windows; missing: {(plan, against): why that control is missing}."""
    compare, rows, missing = Comparer(model, "lowrank", {**scores, "base": base}, level, min_effect, articles,
                                      metric), [], missing or {}
    for plan in table[table["kind"].isin(lr.FAMILIES)].itertuples(index=False):
        family, budget = plan.kind, plan.budget
        for kind, others in (("mirror", named(table, "mirror", of=family, budget=budget)),
                             ("uniform", uniform_control(table, family, budget))):
            rows += [compare.paired(plan.plan, kind, other) for other in others]
            rows += [] if others else [compare.missing(plan.plan, kind, f"no {kind} plan")]
        randoms = named(table, "random", of=family, budget=budget)
        rows.append(compare.missing(plan.plan, "random", missing[(plan.plan, "random")])
                    if not randoms and (plan.plan, "random") in missing else
                    compare.random_mean(plan.plan, "random", randoms))
    for plan in named(table, "laser"):
        rows.append(compare.paired(plan, "base", "base"))
        rows.append(against_matrices(compare, plan, named(table, "laser_control", of=plan),
                                     missing.get((plan, "random_matrix"))))
    return frame(rows)
