"""The compression experiments in the report. Per experiment (quantisation per preset, pruning per
target, low-rank edits per spectral plan and LASER plan) one finding, read from its comparisons
table (blockscope.compression.comparisons, compression.low_rank_experiment): the
spectral plan against its mirror, the uniform plan at or below its budget, the random plans' mean
(with the plan's rank among them), the budget-matched random plans and the oracle, a winner named
only where the row's verdict says so; then the full comparison table, the plan tables with the
random controls' distribution, the additive model's check, and what the weights were stored as
and what that does to each answer. An encoder's experiments (comparisons in metric
"embedding_loss", summaries with embedding_cosine filled) are told in embedding loss, cosine and
retrieval agreement (findings.metric_words), not in perplexity. Rules model_report and
summary_report read the experiments' tables; nothing here scores a plan."""

import os

import numpy as np
import pandas as pd

from blockscope.compression import plans
from blockscope.compression.source_blocks import int4_group_for, source_effects
from blockscope.diagnostic_layout import COMPRESS_LOWRANK
from blockscope.evaluation.paired_tests import spread
from blockscope.layout import COMPRESS_PRUNE, COMPRESS_QUANT, COMPRESS_SENSITIVITY
from blockscope.reporting.findings import EMBEDDING_LOSS, metric_words, table_metric
from blockscope.reporting.markdown import has, table
from blockscope.reporting.sensitivity_section import sensitivity_findings

# --- one comparison in words --------------------------------------------------------------------------

# The controls in the order a finding names them (a LASER plan: the base, then its random matrices).
ORDER = ("mirror", "uniform", "random", "budget_random", "oracle", "base", "random_matrix")
RANDOM_KINDS = ("random", "budget_random")
# What a control is, without its name (a missing control's clause, the distribution table): by experiment.
FAMILY = {"quant": {"mirror": "mirror", "uniform": "uniform plan at or below its budget",
                    "random": "within-shape random plans", "budget_random": "budget-matched random plans",
                    "oracle": "oracle plan"},
          "prune": {"mirror": "mirror", "uniform": "uniform allocation", "random": "random allocations"},
          "lowrank": {"mirror": "mirror", "uniform": "uniform plan (the same ranks per shape, spread evenly)",
                      "random": "random plans (its ranks permuted within each shape)", "base": "base model",
                      "random_matrix": "random matrix of the same type and shape reduced alike"}}
LOWRANK_SPECTRAL = ("energy", "alpha", "effective_rank")  # compression.low_rank.FAMILIES


def perplexity_change_percent(nll_difference):
    """A difference d in mean NLL per token (nats) as the perplexity ratio it means, in %:
    100 (e^d - 1), since perplexity is e^(mean NLL). Monotone, so an interval maps end by end."""
    return 100 * np.expm1(nll_difference)


def row_metric(row) -> str:
    """The metric of a comparisons row ("nll" for a row from before the column)."""
    metric = row.get("metric")
    return "nll" if metric is None or pd.isna(metric) else str(metric)


def difference_words(row) -> str:
    """'+0.0012 nats per token, perplexity +0.12 % [-0.30 %, +0.54 %]': the estimate in nats, and
    estimate and interval as perplexity ratios (the nats interval is in the comparison table); an
    encoder's '+0.0012 in embedding loss [-0.0003, +0.0027]' (1 - cosine, per sentence)."""
    estimate, low, high = (float(row[c]) for c in ("estimate", "ci_low", "ci_high"))
    if row_metric(row) == EMBEDDING_LOSS:
        return f"{estimate:+.4f} {metric_words(EMBEDDING_LOSS)['unit']} [{low:+.4f}, {high:+.4f}]"
    percent = perplexity_change_percent
    return (f"{estimate:+.4f} nats per token, perplexity {percent(estimate):+.2f} % "
            f"[{percent(low):+.2f} %, {percent(high):+.2f} %]")


def family(row) -> str:
    return FAMILY.get(row["experiment"], {}).get(row["against"], str(row["against"]))


def control_words(row) -> str:
    """How a finding names the control of a comparisons row."""
    against, name = row["against"], row["against_plan"]
    if against in RANDOM_KINDS:
        return f"the mean of its {int(row['n_random'])} distinct {family(row)}"
    if against == "base":
        return "the unedited base model"
    if against == "random_matrix":
        many = pd.notna(row["n_random"]) and int(row["n_random"]) > 1
        return (f"the mean of its {int(row['n_random'])} random matrices of the same type and shape reduced alike"
                if many else f"{name}, a {family(row)}")
    if against == "mirror":
        return f"its mirror {name}"
    if against == "oracle":
        return (f"the oracle plan {name} (allocated at the same budget from the per-matrix sensitivities, measured "
                "for a sample of matrices and estimated for the rest: see the sensitivity section)")
    if against == "uniform":
        return f"{name}, the {family(row)}"
    return f"{against} {name}"


def verdict_words(row) -> str:
    """Who is better, named only on a verdict of better or worse; else why no winner."""
    verdict = row["verdict"]
    if verdict == "better":
        return f"{row['plan']} is better"
    if verdict == "worse":
        winner = f"the {family(row)}' mean" if row["against"] in RANDOM_KINDS else row["against_plan"]
        if row["against"] == "base":
            winner = "the base model"
        elif row["against"] == "random_matrix" and pd.notna(row["n_random"]) and int(row["n_random"]) > 1:
            winner = "the random matrices' mean"
        return f"{winner} is better"
    if verdict == "below minimum effect":
        return f"a difference below the minimum effect of {row['min_effect']:g} {metric_words(row_metric(row))['unit']}"
    return "no detectable difference at this sample size"


def identical(row) -> bool:
    """Plan and control scored the same on every window (the same weights: nothing to compare)."""
    return row["estimate"] == 0 and row["ci_low"] == 0 and row["ci_high"] == 0


def comparison_clause(row) -> str:
    """'against its mirror mirror_p, no detectable difference at this sample size (+0.0012 nats ...)'."""
    if pd.isna(row["estimate"]):
        return f"against the {family(row)}: none ({row['against_plan']})"
    if identical(row):
        return f"against {control_words(row)}: identical scores on every window (the same weights), no direction"
    rank = f"; rank p = {row['p_value']:.2g} among them" if pd.notna(row["p_value"]) else ""
    return f"against {control_words(row)}, {verdict_words(row)} ({difference_words(row)}{rank})"


def sample_words(rows: pd.DataFrame) -> str:
    """'8 windows, 2040 tokens from 5 WikiText articles' (the windows every row of a plan shares;
    an encoder's '8 windows (groups of sentences), 128 sentences from ...')."""
    first = rows.iloc[0]
    articles, words = first["articles"], metric_words(row_metric(first))
    source = "" if pd.isna(articles) else \
        f" from {int(articles)} WikiText article{'' if int(articles) == 1 else 's'}"
    return f"{int(first['windows'])} {words['windows']}, {int(first['tokens'])} {words['items']}{source}"


def ordered(rows: pd.DataFrame) -> pd.DataFrame:
    """A plan's comparisons in the order ORDER names the controls (others after them)."""
    rank = rows["against"].map({a: i for i, a in enumerate(ORDER)}).fillna(len(ORDER))
    return rows.assign(_rank=rank).sort_values("_rank", kind="stable").drop(columns="_rank")


def plan_finding(lead: str, rows: pd.DataFrame) -> str:
    """One sentence: the lead (which plan), the sample, then each control's clause."""
    first = rows.iloc[0]
    how = (f"on {sample_words(rows)}, plan minus control with {100 * first['level']:g} % CI (a winner only beyond "
           f"{first['min_effect']:g} {metric_words(row_metric(first))['unit']})")
    return f"{lead} {how}: {'; '.join(comparison_clause(row) for _, row in ordered(rows).iterrows())}."


def fidelity_words(row) -> str:
    """An encoder's plan in its summary row's numbers: ', mean cosine 0.99870 to the base's
    embeddings, top-1 retrieval agreement 97.7 %'; '' for a causal LM's (or no row)."""
    if row is None or pd.isna(row.get("embedding_cosine", np.nan)):
        return ""
    return (f", mean cosine {row['embedding_cosine']:.5f} to the base's sentence embeddings, top-1 retrieval "
            f"agreement {100 * row['retrieval_agreement']:.1f} %")


def summary_row(summary: pd.DataFrame | None, plan: str):
    rows = summary[summary["plan"] == plan] if has(summary, "plan") else ()
    return rows.iloc[0] if len(rows) else None


def spectral_plans(comparisons: pd.DataFrame, summary: pd.DataFrame | None, kind: str) -> list:
    """The spectral plans (kind hint or alpha) in the summary's order, else the comparisons' own."""
    if has(summary, "plan", "kind"):
        named = summary.loc[summary["kind"] == kind, "plan"].tolist()
        return [p for p in named if p in set(comparisons["plan"])]
    return list(dict.fromkeys(comparisons["plan"]))


def quant_findings(comparisons: pd.DataFrame | None, summary: pd.DataFrame | None = None) -> list:
    """One finding per preset: its hint plan against every control."""
    if not has(comparisons, "plan", "against", "verdict"):
        return []
    out = []
    for plan in spectral_plans(comparisons, summary, "hint"):
        row = summary_row(summary, plan)
        preset = row["of"] if row is not None and pd.notna(row.get("of")) else plan.removeprefix("hint_")
        about = "" if row is None else f" ({row['bits_per_weight']:.2f} bits per weight" + (
            f", {row['direction']}" if pd.notna(row.get("direction")) else "") + f"{fidelity_words(row)})"
        out.append(plan_finding(f"Quantisation, preset {preset}: {plan}{about}",
                                comparisons[comparisons["plan"] == plan]))
    return out


def prune_findings(comparisons: pd.DataFrame | None, summary: pd.DataFrame | None = None) -> list:
    """One finding per target sparsity: the alpha allocation against every control."""
    if not has(comparisons, "plan", "against", "verdict"):
        return []
    out = []
    for plan in spectral_plans(comparisons, summary, "alpha"):
        row = summary_row(summary, plan)
        target = f"{row['target']:g}" if row is not None else plan.rsplit("_", 1)[-1]
        about = ", ".join([row["direction"]] if row is not None and pd.notna(row.get("direction")) else [])
        about = f"{about}{fidelity_words(row)}".removeprefix(", ")
        about = f" ({about})" if about else ""
        out.append(plan_finding(f"Pruning at {target} sparsity: {plan}{about}",
                                comparisons[comparisons["plan"] == plan]))
    return out


def lowrank_about(row) -> str:
    """' (0.800 of the planned matrices' parameters kept, lower alpha_peak keeps more rank, ...)'."""
    if row is None:
        return ""
    parts = [f"{row['params_share']:.3f} of the planned matrices' parameters kept"]
    parts += [str(row["direction"])] if pd.notna(row.get("direction")) else []
    if pd.notna(row.get("stated_energy")):
        parts.append(f"every matrix below its break-even rank keeping at least {row['stated_energy']:.3f} of its "
                     "energy")
    return f" ({', '.join(parts)}{fidelity_words(row)})"


def lowrank_findings(comparisons: pd.DataFrame | None, summary: pd.DataFrame | None = None) -> list:
    """One finding per spectral low-rank plan (energy, alpha, effective_rank, per budget) against its
    mirror, uniform and random plans, and per LASER plan against the base and its random matrices."""
    if not has(comparisons, "plan", "against", "verdict"):
        return []
    if not has(summary, "plan", "kind"):  # no summary at hand: the plans in the comparisons' order
        return [plan_finding(f"Low-rank plan {plan}", comparisons[comparisons["plan"] == plan])
                for plan in dict.fromkeys(comparisons["plan"])]
    out = []
    for kind in (*LOWRANK_SPECTRAL, "laser"):
        for plan in spectral_plans(comparisons, summary, kind):
            row = summary_row(summary, plan)
            lead = (f"LASER, {row['matrix']} alone at {row['direction']}: {plan}" if kind == "laser" else
                    f"Low-rank edits at {row['budget']:g} of the parameters: {plan}{lowrank_about(row)}")
            out.append(plan_finding(lead, comparisons[comparisons["plan"] == plan]))
    return out


FINDINGS = {"quant": quant_findings, "prune": prune_findings, "lowrank": lowrank_findings}
FOLDERS = {"quant": COMPRESS_QUANT, "prune": COMPRESS_PRUNE, "lowrank": COMPRESS_LOWRANK}


def compress_findings(model: str, paths, report_dir) -> list:
    """The experiments' findings, each linked to its comparisons table relative to report_dir;
    paths: the tables at hand (comparisons.parquet, summary.parquet; none when compress is off)."""
    paths, found = set(map(str, paths)), []
    for folder, findings in ((FOLDERS[kind], FINDINGS[kind]) for kind in FINDINGS):
        folder = folder.format(model=model)
        comparisons, summary = f"{folder}/comparisons.parquet", f"{folder}/summary.parquet"
        if comparisons in paths:
            link = os.path.relpath(comparisons.replace(".parquet", ".csv"), report_dir)
            sentences = findings(pd.read_parquet(comparisons),
                                 pd.read_parquet(summary) if summary in paths else None)
            found += [f"{sentence} ([table]({link}))" for sentence in sentences]
    return found


def sensitivity_report_findings(model: str, paths, report_dir, level: float = 0.95) -> list:
    """The per-matrix sensitivity's findings (reporting.sensitivity_section) when its matrices and
    correlation tables are among paths (compress.sensitivity on), linked relative to report_dir."""
    paths, folder = set(map(str, paths)), COMPRESS_SENSITIVITY.format(model=model)
    matrices, correlations = f"{folder}/matrices.parquet", f"{folder}/metric_correlations.parquet"
    if not {matrices, correlations} <= paths:
        return []
    return sensitivity_findings(pd.read_parquet(correlations), pd.read_parquet(matrices),
                                lambda path: os.path.relpath(path, report_dir), level)


# --- the section's tables -----------------------------------------------------------------------------

SCORES = ["perplexity", "ci_low", "ci_high", "accuracy", "embedding_cosine", "retrieval_agreement", "kl_divergence",
          "predicted_kl", "top1_agreement"]
REPORT_COLUMNS = {"quant": ["plan", "direction", "bits_per_weight", *SCORES],
                  "prune": ["plan", "direction", "target", "sparsity", *[c for c in SCORES if c != "predicted_kl"]],
                  "lowrank": ["plan", "direction", "budget", "matrix", "params_share", "energy_kept", "stated_energy",
                              *[c for c in SCORES if c != "predicted_kl"]]}
# Shown only where some plan has them: an encoder has no perplexity, a causal LM no embedding cosine.
OPTIONAL = {"perplexity", "ci_low", "ci_high", "accuracy", "top1_agreement", "embedding_cosine", "retrieval_agreement",
            "predicted_kl", "budget", "matrix", "stated_energy"}
# An encoder's kl_divergence is its embedding loss (evaluation.variants.score_fields): named so in its tables.
ENCODER_NAMES = {"kl_divergence": "embedding_loss", "predicted_kl": "predicted_embedding_loss"}
# What a random control belongs to: a preset, a target, a budget and spectral plan.
GROUP = {"quant": ("of",), "prune": ("target",), "lowrank": ("budget", "of")}


def comparison_table(comparisons: pd.DataFrame) -> pd.DataFrame:
    """The report's view of a comparisons table: the differences in nats and in perplexity % (an
    encoder's in embedding loss, no perplexity)."""
    shown = comparisons[["plan", "against", "against_plan", "estimate", "ci_low", "ci_high"]].copy()
    nll = comparisons["metric"].fillna("nll").ne(EMBEDDING_LOSS) if "metric" in comparisons else True
    for column, source in (("ppl %", "estimate"), ("ppl % low", "ci_low"), ("ppl % high", "ci_high")):
        if np.any(nll):
            shown[column] = perplexity_change_percent(comparisons[source].astype(float).where(nll))
    shown["verdict"] = comparisons["verdict"].fillna("")
    shown["p_value"] = comparisons["p_value"]
    shown["n_random"] = comparisons["n_random"].astype("Float64").round().astype("Int64")
    return shown


def plan_table(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Every plan but the random controls, whose distribution random_distribution gives; the
    OPTIONAL columns no plan has left out (an encoder's kl_divergence shown as embedding_loss)."""
    shown = frame[~frame["kind"].isin(RANDOM_KINDS)][[c for c in REPORT_COLUMNS[kind] if c in frame]]
    shown = shown.drop(columns=[c for c in OPTIONAL & set(shown) if shown[c].isna().all()])
    if table_metric(frame) == EMBEDDING_LOSS:
        shown = shown.rename(columns=ENCODER_NAMES)
    return shown.assign(**{c: shown[c].fillna("") for c in ("direction", "matrix") if c in shown})


def random_distribution(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Per preset (target) and control family: how many distinct random plans, and the median and
    5-95 % range of their perplexity and KL (paired_tests.spread); an encoder's embedding cosine
    and embedding loss."""
    group, rows = list(GROUP[kind]), []
    encoder = table_metric(frame) == EMBEDDING_LOSS
    quality, loss = ("embedding_cosine", "embedding loss") if encoder else ("perplexity", "KL")
    for control in RANDOM_KINDS:
        chosen = frame[frame["kind"] == control]
        for of, plans_of in chosen.groupby(group, sort=False):
            ppl, kl = spread(plans_of[quality]), spread(plans_of["kl_divergence"])
            name = quality.replace("_", " ")
            rows.append({**dict(zip(group, of)), "control": FAMILY[kind][control], "plans": ppl["n"],
                         f"{name} median": ppl["median"], f"{name} 5 %": ppl["q05"], f"{name} 95 %": ppl["q95"],
                         f"{loss} median": kl["median"], f"{loss} 5 %": kl["q05"], f"{loss} 95 %": kl["q95"]})
    return pd.DataFrame(rows)


def spearman(x: pd.Series, y: pd.Series) -> float:
    """Spearman's rho: Pearson's r of the ranks (ties at their mean rank)."""
    return float(x.rank().corr(y.rank())) if len(x) >= 3 else float("nan")


def additive_check(frame: pd.DataFrame | None) -> str | None:
    """The additive model (per-matrix sensitivities summed: predicted_kl) against the measured KL
    of every evaluated plan: Spearman's rho, and the largest relative error |pred - meas| / meas."""
    if not has(frame, "predicted_kl", "kl_divergence"):
        return None
    rows = frame[(frame["kind"] != "base") & frame["predicted_kl"].notna() & frame["kl_divergence"].notna()]
    if rows.empty:
        return None
    predicted, measured = rows["predicted_kl"].astype(float), rows["kl_divergence"].astype(float)
    loss = "embedding loss (1 - cosine)" if table_metric(frame) == EMBEDDING_LOSS else "KL"
    positive = measured > 0
    error = ((predicted - measured).abs() / measured)[positive]
    rho = spearman(predicted, measured)
    words = f"Spearman's rho {rho:.2f}" if np.isfinite(rho) else "too few plans for a rank correlation"
    if len(error):
        worst = error.idxmax()
        ratio = (predicted / measured)[positive]
        words += (f"; predicted / measured median {ratio.median():.2f} (from {ratio.min():.2f} to {ratio.max():.2f}), "
                  f"largest relative error {100 * error.max():.0f} % ({rows.loc[worst, 'plan']})")
    return (f"The additive model (each matrix's measured or estimated {loss} alone, summed: `predicted_kl`) against "
            f"the measured {loss} of the {len(rows)} evaluated plans: {words}.")


# --- what the source was, and what it does to each answer -----------------------------------------------

def planned_source_dtypes(metrics: pd.DataFrame) -> list:
    """The source formats (GGUF quant types, BF16, ...) of the matrices the plans cover."""
    matrices = plans.plan_matrices(metrics) if len(metrics) else pd.DataFrame()
    return sorted(matrices["source_dtype"].dropna().astype(str).unique()) if "source_dtype" in matrices else []


def source_note(source_dtypes) -> str:
    """What the weights were before blockscope read them, so the numbers can be judged."""
    kinds = sorted({str(d) for d in source_dtypes if isinstance(d, str) and d})
    if not kinds:
        return "The checkpoint's source format is not recorded."
    return f"The checkpoint's matrices were stored as {', '.join(kinds)} before blockscope read them."


def effect_lines(source_dtypes) -> list:
    """What the source does to each answer (source_blocks.source_effects), as a list; none for a
    source without a GGUF quant type."""
    effects = source_effects(list(source_dtypes))
    return ["What this source does to each answer:", "", *[f"- {s}" for s in effects], ""] if effects else []


def group_note(used, configured) -> str | None:
    """The int4 group the experiments used (plans.json) when it is not quantization.group_size."""
    if used is None or configured is None or int(used) == int(configured):
        return None
    return f"int4 was evaluated with groups of {int(used)} inputs, not `quantization.group_size` = {int(configured)}."


def group_lines(source_dtypes, used, configured) -> list:
    """The int4 group of the plans that ran: source_blocks.int4_group_for's reason where it chose
    the group used (why it does, or does not, line up with a GGUF source's blocks), else the bare
    note that the group used is not the configured one."""
    if used is None or configured is None:
        return []
    group, reason = int4_group_for(list(source_dtypes), int(configured))
    if reason and group == int(used):
        return [reason, ""]
    note = group_note(used, configured)
    return [note, ""] if note else []


def simulated_lines(quant_plans: dict | None) -> list:
    """What each format name of the plans was evaluated as (plans.json's simulated_as), once each."""
    said = {}
    for names in ((quant_plans or {}).get("simulated_as") or {}).values():
        for name, text in names.items():
            said.setdefault(name, text)
    if not said:
        return []
    return ["What each format name of the plans was evaluated as:", "",
            *[f"- `{name}`: {text}" for name, text in said.items()], ""]


def source_lines(source_dtypes, quant_plans: dict | None = None, group_size=None) -> list:
    """Markdown lines: the source format and what it does to each answer, the int4 group used
    (and why, on a GGUF source), and what each format name was simulated as."""
    return [source_note(source_dtypes), "", *effect_lines(source_dtypes),
            *group_lines(source_dtypes, (quant_plans or {}).get("group_size"), group_size),
            *simulated_lines(quant_plans)]


# --- the section ---------------------------------------------------------------------------------------

def experiment_lines(kind: str, frame: pd.DataFrame | None, comparisons: pd.DataFrame | None, link) -> list:
    """One experiment's findings, comparison table, plan table, random controls and additive check."""
    findings = FINDINGS[kind](comparisons, frame)
    lines = [f"- {s}" for s in findings] + ([""] if findings else [])
    encoder = table_metric(frame) == EMBEDDING_LOSS
    if has(comparisons, "plan", "against", "estimate"):
        folder = FOLDERS[kind].format(model=comparisons["model"].iloc[0])
        unit = ("mean embedding loss per sentence (1 - cosine to the base model's sentence embedding; negative: the "
                "plan is better), its interval" if encoder else "mean NLL per token (nats; negative: the plan is "
                "better), its interval, the same as the perplexity ratio minus 1 in %")
        lines += [f"Every comparison ([table]({link(f'{folder}/comparisons.csv')})): plan minus control in {unit}, "
                  "the verdict, and for the random plans' mean the plan's rank p-value among them.", "",
                  table(comparison_table(comparisons), 4), ""]
    lines += ["Plans:", "", table(plan_table(frame, kind), 5 if encoder else 3), ""]  # cosines near 1 need digits
    randoms = random_distribution(frame, kind)
    if len(randoms):
        what = "embedding cosine and embedding loss" if encoder else "perplexity and KL"
        lines += [f"Random controls (distinct plans; median and 5-95 % of their {what}):", "", table(randoms, 4), ""]
    check = additive_check(frame) if kind == "quant" else None
    return lines + ([check, ""] if check else [])


def compress_section(quant: pd.DataFrame | None, prune: pd.DataFrame | None, source_dtypes=(), skipped=None,
                     figures=(), link=str, comparisons: dict | None = None, quant_plans: dict | None = None,
                     group_size=None, lowrank: pd.DataFrame | None = None) -> list:
    """Markdown lines of the report: the source format and what the plans were evaluated as, then
    per experiment its findings, comparisons, plans, random controls, and the figures.
    comparisons: {"quant": table, "prune": table, "lowrank": table}; quant_plans: quant/plans.json;
    group_size: quantization.group_size; link: path -> the link the report writes; lowrank: the
    low-rank summary (compress.lowrank on; None: no such subsection)."""
    lines = ["## Compression experiments (quantisation and pruning plans, evaluated)", "",
             *source_lines(source_dtypes, quant_plans, group_size)]
    if skipped:
        return lines + [f"Skipped: {skipped}.", ""]
    tokens = next((int(f["tokens_evaluated"].iloc[0]) for f in (quant, prune) if has(f, "tokens_evaluated")), None)
    if tokens and any(table_metric(f) == EMBEDDING_LOSS for f in (quant, prune)):
        lines += [f"Every plan, and the base row, is scored on the same {tokens} WikiText sentences (an encoder: "
                  "`eval.encoder_sentences`): by the mean cosine of its sentence embeddings to the base model's "
                  "(embedding loss = 1 - cosine; `kl_divergence` holds it) and by the share of sentences whose top-1 "
                  "retrieval neighbour among them all is the base's (retrieval agreement); no perplexity.", ""]
    elif tokens:
        lines += [f"Every plan, and the base row, is scored on the same {tokens} next-token predictions: the base "
                  "evaluation's windows, `compress.max_tokens` of them chosen evenly among them on the CPU.", ""]
    experiments = [("quant", quant, "Quantisation (simulated RTN)"), ("prune", prune, "Unstructured magnitude pruning")]
    experiments += [] if lowrank is None else [("lowrank", lowrank, "Low-rank edits (truncated SVD)")]
    for kind, frame, title in experiments:
        lines += [f"### {title}", ""]
        if not has(frame, "plan", "perplexity"):
            lines += ["_(none)_", ""]
            continue
        if kind == "lowrank" and has(frame, "tokens_evaluated") and tokens != int(frame["tokens_evaluated"].iloc[0]):
            lines += [f"The low-rank plans are scored on {int(frame['tokens_evaluated'].iloc[0])} of them "
                      "(`compress.lowrank.max_tokens`).", ""]
        lines += experiment_lines(kind, frame, (comparisons or {}).get(kind), link)
    lines += [f"- [{name}]({link(path)})" for name, path in figures] + ([""] if figures else [])
    return lines
