"""WeightWatcher's further diagnostics in the report: correlation traps (with the entries behind
each trap, which WeightWatcher does not name), fingers removed by clip_xmax, the truncated power
law against the plain one, detX against the power-law tail, and singular-vector localisation.

Read from the model's metrics table, which carries blockscope.diagnostic_layout's columns when
the anatomy's diagnostics part ran; a table without them (diagnostics off, or one from before
them) gives no finding and a section that says they were not computed. Everything here is
descriptive except the truncated power law's likelihood-ratio test, whose level is stated."""

import numpy as np
import pandas as pd

from blockscope.aggregation.model_tables import spectral_rows
from blockscope.diagnostic_layout import FINGER_COLUMNS, TPL_COLUMNS, TRAP_COLUMNS
from blockscope.reporting.findings import where
from blockscope.reporting.markdown import has, table

TITLE = "## WeightWatcher's further diagnostics"
NOT_COMPUTED = ("WeightWatcher's further diagnostics (correlation traps, clipped and truncated power-law fits, "
                "detX, singular vectors) were not computed for this model: the metrics table has no such columns "
                "(config `diagnostics.enabled` off, or a table from before them).")
LISTED = 5  # matrices named in a finding before "and N more"
# tpl_preferred as the diagnostics part writes it, in the report's words; other values are shown as written.
TPL = "truncated power law"
PL = "power law"
NEITHER = "neither"
TPL_NAMES = {"truncated_power_law": TPL, "truncated power law": TPL, "tpl": TPL,
             "power_law": PL, "power law": PL, "pl": PL, "neither": NEITHER}
GAUSSIAN_IPR = 3.0  # a unit vector of n Gaussian entries has E[sum v_i^4] = 3 / (n + 2), about 3 / n


def numbers(frame: pd.DataFrame, column: str) -> pd.Series:
    """A column as floats (nullable integers' NA as NaN); all NaN when the table lacks it."""
    if column not in frame:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[column], errors="coerce").astype(float)


def computed(metrics: pd.DataFrame | None) -> bool:
    """Whether the table carries the diagnostics (the trap, finger and TPL columns)."""
    return has(metrics, "block_type", *TRAP_COLUMNS, *FINGER_COLUMNS, *TPL_COLUMNS)


def matrices(metrics: pd.DataFrame) -> pd.DataFrame:
    """The rows that can hold a spectrum (no 1-D statistics-only rows)."""
    return spectral_rows(metrics)


def diagnosed(metrics: pd.DataFrame) -> pd.DataFrame:
    """The matrices with any diagnostic (a trap flag, a clipped fit or a TPL verdict)."""
    rows = matrices(metrics)
    return rows[numbers(rows, "correlation_trap").notna() | numbers(rows, "num_fingers").notna()
                | tpl_choice(rows["tpl_preferred"]).notna()]


def more(count: int, listed: int) -> str:
    return f" and {count - listed} more" if count > listed else ""


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


# --- correlation traps -------------------------------------------------------------------------------

def trapped(metrics: pd.DataFrame) -> pd.DataFrame:
    """The matrices flagged as correlation traps (correlation_trap 1), most spikes first."""
    rows = matrices(metrics)
    out = rows[numbers(rows, "correlation_trap") == 1]
    order = numbers(out, "rand_num_spikes").sort_values(ascending=False, kind="stable").index
    return out.loc[order]


def spikes(row) -> str:
    """"3 spikes; " from a row's rand_num_spikes ("" when it has none recorded)."""
    value = pd.to_numeric(row.get("rand_num_spikes"), errors="coerce")
    return "" if pd.isna(value) else f"{plural(int(value), 'spike')}; "


def entries(row) -> str:
    text = row.get("trap_entries")
    return "not recorded" if text is None or pd.isna(text) or not str(text).strip() else str(text)


def trap_finding(metrics: pd.DataFrame) -> str | None:
    rows = matrices(metrics)
    flagged = numbers(rows, "correlation_trap").notna()
    if not flagged.any():
        return None
    traps = trapped(metrics)
    what = "the elementwise-permuted matrix keeps eigenvalues above its Marchenko-Pastur bulk edge"
    if traps.empty:
        return (f"No matrix is a correlation trap: none of the {int(flagged.sum())} elementwise-permuted matrices "
                f"keeps an eigenvalue above its Marchenko-Pastur bulk edge.")
    named = "; ".join(f"{where(row)} ({spikes(row)}largest entries {entries(row)})"
                      for _, row in traps.head(LISTED).iterrows())
    return (f"{len(traps)} of {int(flagged.sum())} matrices are correlation traps ({what}): "
            f"{named}{more(len(traps), LISTED)}.")


# --- fingers (clip_xmax) -----------------------------------------------------------------------------

def clipped(metrics: pd.DataFrame) -> pd.DataFrame:
    """The matrices where clip_xmax dropped eigenvalues (num_fingers > 0), largest alpha move first."""
    rows = matrices(metrics)
    out = rows[numbers(rows, "num_fingers") > 0]
    move = (numbers(out, "alpha_clipped") - numbers(out, "alpha")).abs()
    return out.loc[move.sort_values(ascending=False, kind="stable").index]


def finger_finding(metrics: pd.DataFrame) -> str | None:
    rows = matrices(metrics)
    fingers = numbers(rows, "num_fingers")
    if not fingers.notna().any():
        return None
    fitted = int(fingers.notna().sum())
    out = clipped(metrics)
    if out.empty:
        return (f"No fingers: in none of the {fitted} matrices does dropping its largest eigenvalues lower the "
                "power-law fit's KS distance by more than the threshold (WeightWatcher's fix_fingers='clip_xmax').")
    dropped = numbers(out, "num_fingers")
    alpha, alpha_clipped = numbers(out, "alpha"), numbers(out, "alpha_clipped")
    top = out.iloc[0]
    span = f"{dropped.min():.0f}" if dropped.min() == dropped.max() else f"{dropped.min():.0f} to {dropped.max():.0f}"
    return (f"{len(out)} of {fitted} matrices have fingers that clip_xmax removed (WeightWatcher's "
            f"fix_fingers='clip_xmax': {span} of their largest eigenvalues, "
            f"{dropped.sum():.0f} in all); over them, median α moves from {alpha.median():.2f} to "
            f"{alpha_clipped.median():.2f} (largest move: {where(top)}, α {alpha.iloc[0]:.2f} → "
            f"{alpha_clipped.iloc[0]:.2f}).")


# --- truncated power law -----------------------------------------------------------------------------

def tpl_choice(values: pd.Series) -> pd.Series:
    """tpl_preferred in the report's words (truncated power law, power law, neither); NA or "" (no fit) is NA."""
    return values.map(lambda v: pd.NA if pd.isna(v) or not str(v).strip()
                      else TPL_NAMES.get(str(v).strip().lower(), str(v)))


def tpl_counts(metrics: pd.DataFrame) -> dict:
    """How many matrices the test names for each choice, TPL, PL, neither first (others after)."""
    rows = matrices(metrics)
    choice = tpl_choice(rows["tpl_preferred"]).dropna() if "tpl_preferred" in rows else pd.Series(dtype=object)
    counts = choice.value_counts()
    ordered = {name: int(counts.get(name, 0)) for name in (TPL, PL, NEITHER)}
    return {**ordered, **{name: int(n) for name, n in counts.items() if name not in ordered}} if len(choice) else {}


def tpl_finding(metrics: pd.DataFrame, level: float) -> str | None:
    counts = tpl_counts(metrics)
    if not counts:
        return None
    total = sum(counts.values())
    split = "; ".join(f"{name} {n}" for name, n in counts.items())
    return (f"The likelihood-ratio test of a truncated power law against the plain power law on each tail "
            f"(powerlaw's distribution_compare, at the {100 * level:g} % level: p < {1 - level:.2g}), over "
            f"{total} matrices, prefers: {split}.")


# --- detX ----------------------------------------------------------------------------------------------

def detx_finding(metrics: pd.DataFrame) -> str | None:
    rows = matrices(metrics)
    detx, tail = numbers(rows, "detx_num"), numbers(rows, "num_pl_spikes")
    both = detx.notna() & tail.notna()
    if not both.any():
        return None
    gap = (detx - tail)[both]
    return (f"detX (WeightWatcher's detX_num: the top eigenvalues whose product first reaches 1 after "
            f"normalisation) against the power-law tail's num_pl_spikes, over {int(both.sum())} matrices: median "
            f"detX_num {detx[both].median():g} against {tail[both].median():g}; WeightWatcher's ERG gap "
            f"(detX_num − num_pl_spikes) has median {gap.median():+g}; detX_num is larger in {int((gap > 0).sum())}, "
            f"equal in {int((gap == 0).sum())} and smaller in {int((gap < 0).sum())}.")


# --- singular-vector localisation -------------------------------------------------------------------

def localisation(metrics: pd.DataFrame) -> pd.DataFrame:
    """Matrices with vector metrics: vector_ipr_max against the delocalised value 3/n of a Gaussian
    unit vector, n the shorter side (the larger reference: the ratio errs low); most localised first."""
    rows = matrices(metrics)
    if "vector_k" not in rows:
        return rows.iloc[:0]
    rows = rows[numbers(rows, "vector_k").notna() & numbers(rows, "vector_ipr_max").notna()]
    shorter = np.fmin(numbers(rows, "rows"), numbers(rows, "cols"))
    out = rows.assign(delocalised_ipr=GAUSSIAN_IPR / shorter)
    out = out.assign(ipr_ratio=numbers(out, "vector_ipr_max") / out["delocalised_ipr"])
    return out.loc[out["ipr_ratio"].sort_values(ascending=False, kind="stable").index]


def vector_finding(metrics: pd.DataFrame) -> str | None:
    out = localisation(metrics)
    if out.empty:
        return None
    k = numbers(out, "vector_k")
    named = "; ".join(f"{where(row)} (max IPR {row['vector_ipr_max']:.3g}"
                      + (f", {row['ipr_ratio']:.3g}× 3/n)" if np.isfinite(row["ipr_ratio"]) else ")")
                      for _, row in out.head(3).iterrows())
    return (f"Singular-vector localisation over the top {k.min():.0f}{'' if k.min() == k.max() else f'-{k.max():.0f}'} "
            f"left and right singular vectors of {len(out)} matrices (inverse participation ratio Σv⁴ of a unit "
            f"vector: about 3/n for n Gaussian entries, 1 for a single entry; n the shorter side): median max IPR "
            f"{out['ipr_ratio'].median():.1f}× 3/n; most localised: {named}.")


# --- findings and the section ---------------------------------------------------------------------

def diagnostics_findings(metrics: pd.DataFrame | None, level: float = 0.95, link: dict | None = None) -> list:
    """The findings' sentences (none where the table lacks the diagnostics): traps with their
    entries, fingers and alpha's move, the TPL test's preferences at `level` (config
    diagnostics.tpl_level), detX against num_pl_spikes, and localisation when vector_k is present.
    link: findings.links(...) to cite the metrics table in each sentence."""
    if not computed(metrics):
        return []
    found = [trap_finding(metrics), finger_finding(metrics), tpl_finding(metrics, level), detx_finding(metrics),
             vector_finding(metrics) if "vector_k" in metrics else None]
    cite = f" ({link['metrics']})" if link else ""
    return [sentence[:-1] + cite + "." for sentence in found if sentence]


def cell(text) -> str:
    """Text for a Markdown table cell (a pipe would end the cell)."""
    return "" if pd.isna(text) else str(text).replace("|", "\\|")


def trap_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Trapped matrices: matrix, layer, block type, rand_num_spikes, rand_distance, trap_entries."""
    traps = trapped(metrics)
    name = "matrix" if "matrix" in traps else "param_name"
    return pd.DataFrame({"matrix": traps[name], "layer": traps["layer_index"] if "layer_index" in traps else pd.NA,
                         "block type": traps["block_type"], "rand_num_spikes": traps["rand_num_spikes"],
                         "rand_distance": numbers(traps, "rand_distance"),
                         "trap_entries": traps["trap_entries"].map(cell)}).reset_index(drop=True)


def by_block_type(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per block type, over its diagnosed matrices: how many, median alpha and alpha_clipped, median
    num_fingers and how many have any, the TPL test's counts, median detx_num beside num_pl_spikes."""
    rows = diagnosed(metrics)
    rows = rows.assign(**{c: numbers(rows, c) for c in ("alpha", "alpha_clipped", "num_fingers", "detx_num",
                                                          "num_pl_spikes")},
                       choice=tpl_choice(rows["tpl_preferred"]))
    out = []
    for kind, group in rows.groupby("block_type", sort=True):
        choice = group["choice"]
        out.append({"block type": kind, "matrices": len(group), "α (median)": group["alpha"].median(),
                    "α clipped (median)": group["alpha_clipped"].median(),
                    "num_fingers (median)": group["num_fingers"].median(),
                    "with fingers": int((group["num_fingers"] > 0).sum()),
                    "TPL preferred": int((choice == TPL).sum()), "PL preferred": int((choice == PL).sum()),
                    "neither": int((choice == NEITHER).sum()), "detx_num (median)": group["detx_num"].median(),
                    "num_pl_spikes (median)": group["num_pl_spikes"].median()})
    return pd.DataFrame(out)


def localisation_table(metrics: pd.DataFrame) -> pd.DataFrame:
    out = localisation(metrics).head(LISTED)
    name = "matrix" if "matrix" in out else "param_name"
    return pd.DataFrame({"matrix": out[name], "block type": out["block_type"], "vector_k": out["vector_k"],
                         "max IPR": numbers(out, "vector_ipr_max"), "3/n": out["delocalised_ipr"],
                         "max IPR / (3/n)": out["ipr_ratio"], "min entropy": numbers(out, "vector_entropy_min"),
                         "max top-entry mass": numbers(out, "vector_top_mass_max")}).reset_index(drop=True)


def diagnostics_section(metrics: pd.DataFrame | None, figures: dict, link, level: float = 0.95) -> list:
    """Markdown lines: what each diagnostic is, the trapped matrices, the per-block-type medians and
    TPL counts, the most localised matrices (vectors on), links to the figures. figures: name ->
    path as written (the ESD figures, which overlay the permuted ESDs); link: path -> the link the
    report writes; level: config diagnostics.tpl_level."""
    lines = [TITLE, ""]
    if not computed(metrics):
        return lines + [NOT_COMPUTED, ""]
    traps = trap_table(metrics)
    lines += ["Descriptive, after WeightWatcher 0.7.7's options (docs/metrics.md gives each definition and where "
              "ours differs): each matrix's entries permuted at random (seeded) and the permuted matrix's ESD set "
              "against its Marchenko-Pastur bulk (randomize=True): a matrix whose permuted ESD still has spikes is "
              "a correlation trap, and its largest entries |w_ij| are listed with their (row, col) positions; the "
              "power law refitted with 2 to `diagnostics.max_fingers` - 1 of the largest eigenvalues dropped, the "
              "first refit whose alpha is lower by more than `diagnostics.finger_threshold` kept "
              "(fix_fingers='clip_xmax'); the truncated "
              "power law on the same tail with the likelihood-ratio test against the plain power law, the only "
              f"test here, at the {100 * level:g} % level (fit='TPL'); detX_num, the number of top eigenvalues "
              "whose product first reaches 1 after normalisation (detX=True), beside num_pl_spikes.", ""]
    lines += [f"Correlation traps ({len(traps)}):", "", table(traps, 3), ""]
    lines += ["Per block type: medians over its matrices; fingers, TPL preferences (truncated power law, power law, "
              "neither) as counts of matrices:", "", table(by_block_type(metrics), 2), ""]
    if "vector_k" in metrics and not localisation(metrics).empty:
        lines += ["Most localised singular vectors (max inverse participation ratio over the top-k left and right "
                  "vectors, against 3/n of a Gaussian unit vector, n the shorter side):", "",
                  table(localisation_table(metrics), 4), ""]
    lines += [f"- [{name}]({link(path)})" for name, path in (figures or {}).items()] + ([""] if figures else [])
    return lines
