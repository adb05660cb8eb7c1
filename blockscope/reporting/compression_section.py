"""The compression experiments in the report: one sentence per plan against its mirror and the
random controls, the plan tables, and what the weights were stored as (rules model_report and
summary_report read the experiments' tables; nothing here scores a plan)."""

import os

import pandas as pd

from blockscope.compression import plans
from blockscope.layout import COMPRESS_PRUNE, COMPRESS_QUANT
from blockscope.reporting.markdown import has, table

SPREAD_SDS = 2  # a gap "exceeds the random control's spread" when it is above this many of its sds


def direction_sentence(rows: pd.DataFrame, plan: str, what: str) -> str | None:
    """One sentence: which of a plan and its mirror won, by how much, against the random controls."""
    lead = rows[rows["plan"] == plan]
    if lead.empty:
        return None
    lead = lead.iloc[0]
    of = lead["of"] if lead["kind"] == "hint" else "alpha"
    same_target = rows["target"] == lead["target"] if "target" in rows else True
    mirror = rows[(rows["kind"] == "mirror") & (rows["of"] == of) & same_target]
    controls = rows[(rows["kind"] == "random") & (rows["of"] == of) & same_target]["perplexity"]
    if mirror.empty:
        return None
    mirror = mirror.iloc[0]
    a, b = lead["perplexity"], mirror["perplexity"]
    if a == b and lead["kl_divergence"] == mirror["kl_divergence"]:
        return (f"{what}: the plan and its mirror are the same model (every matrix shape gets one "
                f"{'format' if 'hint' in plan else 'sparsity'}), so no direction can win; perplexity {a:.3f}.")
    won, lost = (lead, mirror) if a < b else (mirror, lead)
    gap = abs(a - b)
    return (f"{what}: {won['direction']} won, perplexity {won['perplexity']:.3f} against {lost['perplexity']:.3f} "
            f"({lost['direction']}), {gap:.3f} lower ({100 * gap / max(a, b):.1f} %); "
            f"{against_controls(gap, won['perplexity'], controls)}.")


def against_controls(gap: float, winner: float, controls: pd.Series) -> str:
    """The gap and the winner against the random controls' mean and spread (population sd)."""
    if not len(controls):
        return "no random control to compare with"
    mean, sd = float(controls.mean()), float(controls.std(ddof=0))
    beyond = "larger" if gap > SPREAD_SDS * sd else "not larger"
    winner_words = (f"the winner is more than {SPREAD_SDS} sd below their mean" if mean - winner > SPREAD_SDS * sd
                    else f"the winner is within {SPREAD_SDS} sd of their mean or above it")
    return (f"the gap is {beyond} than {SPREAD_SDS} sd of the {len(controls)} random assignments of the same budget "
            f"(mean {mean:.3f}, sd {sd:.3f}), and {winner_words}")


def quant_sentences(table: pd.DataFrame) -> list:
    out = []
    for row in table[table["kind"] == "hint"].itertuples():
        out.append(direction_sentence(table, row.plan, f"Quantisation, preset {row.of} "
                                      f"({row.bits_per_weight:.2f} bits per weight)"))
    return [s for s in out if s]


def prune_sentences(table: pd.DataFrame) -> list:
    out = [direction_sentence(table, row.plan, f"Pruning at {row.target:g} sparsity")
           for row in table[table["kind"] == "alpha"].itertuples()]
    return [s for s in out if s]


REPORT_COLUMNS = {"quant": ["plan", "direction", "bits_per_weight", "perplexity", "ci_low", "ci_high", "accuracy",
                            "kl_divergence", "top1_agreement"],
                  "prune": ["plan", "direction", "target", "sparsity", "perplexity", "ci_low", "ci_high", "accuracy",
                            "kl_divergence", "top1_agreement"]}


def planned_source_dtypes(metrics: pd.DataFrame) -> list:
    """The source formats (GGUF quant types, BF16, ...) of the matrices the plans cover."""
    matrices = plans.plan_matrices(metrics) if len(metrics) else pd.DataFrame()
    return sorted(matrices["source_dtype"].dropna().astype(str).unique()) if "source_dtype" in matrices else []


def source_note(source_dtypes) -> str:
    """What the weights were before blockscope read them, so the numbers can be judged."""
    kinds = sorted({str(d) for d in source_dtypes if isinstance(d, str) and d})
    if not kinds:
        return "The checkpoint's source format is not recorded."
    note = f"The checkpoint's matrices were stored as {', '.join(kinds)} before blockscope read them."
    if any(k.upper().startswith("Q4_1") for k in kinds):
        note += (" Q4_1 holds 4 bits per weight with an fp16 scale and an fp16 float minimum per block of 32 inputs"
                 " (5 bits per weight): a format of that shape would reproduce these weights exactly, while the "
                 "formats here (integer zero point, symmetric or floating point) round them again, so every loss "
                 "below is measured against an already 4-bit model.")
    return note


def compress_findings(model: str, paths, report_dir) -> list:
    """The experiments' one-sentence answers (findings), each linked to its table relative to
    report_dir; paths: the summary tables at hand (none when compress is off)."""
    paths, found = set(map(str, paths)), []
    for folder, sentences in ((COMPRESS_QUANT, quant_sentences), (COMPRESS_PRUNE, prune_sentences)):
        summary = f"{folder.format(model=model)}/summary.parquet"
        if summary in paths:
            link = os.path.relpath(summary.replace(".parquet", ".csv"), report_dir)
            found += [f"{sentence} ([table]({link}))" for sentence in sentences(pd.read_parquet(summary))]
    return found


def _plan_table(table: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The report's view: every plan but the random controls, which appear as their mean per plan."""
    shown = table[table["kind"] != "random"][[c for c in REPORT_COLUMNS[kind] if c in table]]
    return shown.assign(direction=shown["direction"].fillna("")) if "direction" in shown else shown


def compress_section(quant: pd.DataFrame | None, prune: pd.DataFrame | None, source_dtypes=(), skipped=None,
                     figures=(), link=str) -> list:
    """Markdown lines of the report: the source format, per experiment its sentences, its plans
    (random controls summarised in the sentences) and its figure."""
    lines = ["## Compression experiments (quantisation and pruning plans, evaluated)", "",
             source_note(source_dtypes), ""]
    if skipped:
        return lines + [f"Skipped: {skipped}.", ""]
    tokens = next((int(f["tokens_evaluated"].iloc[0]) for f in (quant, prune) if has(f, "tokens_evaluated")), None)
    if tokens:
        lines += [f"Every plan, and the base row, is scored on the same {tokens} next-token predictions: the base "
                  "evaluation's first windows, `compress.max_tokens` of them on the CPU.", ""]
    for kind, frame, sentences, title in (("quant", quant, quant_sentences, "Quantisation (simulated RTN)"),
                                          ("prune", prune, prune_sentences, "Unstructured magnitude pruning")):
        lines += [f"### {title}", ""]
        if not has(frame, "plan", "perplexity"):
            lines += ["_(none)_", ""]
            continue
        lines += [f"- {s}" for s in sentences(frame)] + [""]
        lines += [table(_plan_table(frame, kind), 3), ""]
    lines += [f"- [{name}]({link(path)})" for name, path in figures] + ([""] if figures else [])
    return lines
