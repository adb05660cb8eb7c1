"""The contracts of WeightWatcher's remaining diagnostics, as code: correlation traps (a seeded
random permutation of each matrix), the clipped and truncated power-law fits, detX, singular-vector
localisation. The anatomy's `diagnostics` part writes them per unit beside the metrics; aggregate
joins them into the model's metrics table. Apart from layout.py so that adding them moves no other
rule's code hash (docs/architecture.md)."""

from blockscope.layout import COMPRESS_SCORE_COLUMNS
from blockscope.layout import column_type as layout_column_type

# --- per-unit outputs of the anatomy's diagnostics part ------------------------------------------
DIAGNOSTICS = "results/{model}/diagnostics/{unit}.parquet"
# The permuted matrices' singular values (the ESD figures overlay them): layout.SPECTRA_COLUMNS.
RAND_SPECTRA = "results/{model}/diagnostics/rand_spectra_{unit}.parquet"

# Correlation traps (WeightWatcher randomize=True): W's entries permuted at random (seeded per matrix),
# the permuted ESD against its Marchenko-Pastur bulk. rand_bulk_max: the MP edge lambda+ fitted to the
# permuted ESD; rand_num_spikes: its eigenvalues above the edge; rand_mp_softrank: lambda+ / lambda_max
# of the permuted ESD; rand_max_eval: its largest eigenvalue; rand_distance: the distance between W's
# and the permuted ESDs (docs/metrics.md says which and why); correlation_trap: 1 when the permuted
# matrix still has a spike (0 otherwise, NA without a spectrum); trap_entries: for a trapped matrix
# the largest |w_ij| with their (row, col) positions, "" otherwise.
TRAP_COLUMNS = ["rand_max_eval", "rand_bulk_max", "rand_num_spikes", "rand_mp_softrank", "rand_distance",
                "correlation_trap", "trap_entries"]
# WeightWatcher's fix_fingers='clip_xmax': 2 to max_fingers - 1 of the largest eigenvalues dropped, the first
# count whose refit lowers alpha by more than the threshold kept; the refitted alpha, its D, how many were
# dropped (WeightWatcher reports one fewer: docs/metrics.md).
FINGER_COLUMNS = ["alpha_clipped", "D_clipped", "num_fingers"]
# WeightWatcher's fit='TPL': the truncated power law x^-alpha exp(-lambda x) on the power-law fit's tail,
# with the log-likelihood ratio test against the plain power law (powerlaw's distribution_compare:
# R > 0 favours the truncated law, p its significance); tpl_preferred: which one the test names at
# the configured level, or "neither".
TPL_COLUMNS = ["tpl_alpha", "tpl_lambda", "tpl_loglikelihood_ratio", "tpl_p_value", "tpl_preferred"]
# WeightWatcher's detX=True: the number of top eigenvalues whose product first reaches 1 after
# normalisation, and the eigenvalue there (its detX_num, detX_val).
DETX_COLUMNS = ["detx_num", "detx_val"]
# Singular vectors (WeightWatcher vectors=True; off by default, diagnostics.vectors): over the top-k
# left and right singular vectors of the matrix, the inverse participation ratio (localisation),
# the vector entropy and the share of each vector's mass (squared entries) in its largest entries:
# the mean and the extreme (max IPR, min entropy, max mass) per matrix; vector_k: the k used.
VECTOR_COLUMNS = ["vector_k", "vector_ipr_mean", "vector_ipr_max", "vector_entropy_mean", "vector_entropy_min",
                  "vector_top_mass_mean", "vector_top_mass_max"]
DIAGNOSTIC_METRIC_COLUMNS = [*TRAP_COLUMNS, *FINGER_COLUMNS, *TPL_COLUMNS, *DETX_COLUMNS, *VECTOR_COLUMNS]
DIAGNOSTIC_IDENTITY_COLUMNS = ["model", "unit", "param_name", "expert", "matrix", "layer_index", "block_type",
                               "rows", "cols"]
# diagnostics_status: "ok", or why a diagnostic is missing (too few eigenvalues, a 1-D parameter, ...).
DIAGNOSTIC_COLUMNS = [*DIAGNOSTIC_IDENTITY_COLUMNS, *DIAGNOSTIC_METRIC_COLUMNS, "diagnostics_status",
                      "diagnostics_seconds"]
TEXT_COLUMNS = {"trap_entries", "tpl_preferred", "diagnostics_status"}
NULLABLE_INTEGER_COLUMNS = {"rand_num_spikes", "correlation_trap", "num_fingers", "detx_num", "vector_k"}


def column_type(column: str) -> str:
    """str, Int64, int64 or float64: the pandas dtype of a diagnostics column (layout.column_type else)."""
    if column in TEXT_COLUMNS:
        return "str"
    return "Int64" if column in NULLABLE_INTEGER_COLUMNS else layout_column_type(column)


# Every declared table of this page, for docs/outputs.md and its test (beside layout.TABLES).
TABLES = {"diagnostics": DIAGNOSTIC_COLUMNS}


# --- low-rank edits (rule compress_lowrank; blockscope.compression.low_rank, low_rank_experiment) ------
COMPRESS_LOWRANK = "results/{model}/compress/lowrank"
# summary.parquet: one row per evaluated plan and the base. kind: base, energy, alpha, effective_rank (the
# spectral plans), mirror, uniform, random (their controls), laser, laser_control; of: the family a control
# belongs to (a laser_control: its LASER plan); budget: the configured share of the planned matrices'
# parameters kept (NaN for base and LASER); matrix: the one matrix a LASER plan or control edits;
# matrices_edited; params_kept: r (m + n) per edited matrix plus m n per matrix left as stored, over the
# planned matrices; params_share: params_kept over their m n; energy_kept: the edited matrices' kept share
# of sum sigma^2 (1 - squared relative Frobenius error); stated_energy: the energy plan's fraction E.
LOWRANK_SUMMARY_COLUMNS = ["model", "plan", "kind", "of", "seed", "direction", "budget", "matrix", "matrices_edited",
                           "params_kept", "params_share", "energy_kept", "stated_energy", *COMPRESS_SCORE_COLUMNS]
# allocations.parquet: one row per plan and edited matrix: the plan's metric and its value for the matrix
# (alpha_peak, effective_rank, or energy_rank: the energy plan's own rank), the rank kept of its full rank
# and break-even rank floor(m n / (m + n)), the factors' parameters r (m + n), the energy kept and the
# relative Frobenius error ||W - W_r||_F / ||W||_F.
LOWRANK_ALLOCATION_COLUMNS = ["model", "budget", "plan", "param_name", "block_type", "layer_index", "rows", "cols",
                              "metric", "metric_value", "rank", "full_rank", "break_even_rank", "params_kept",
                              "energy_kept", "relative_error"]
TEXT_COLUMNS |= {"plan", "kind", "of", "direction", "matrix", "metric"}  # in place: column_type reads these sets
NULLABLE_INTEGER_COLUMNS |= {"seed", "matrices_edited", "params_kept", "rank", "full_rank", "break_even_rank"}
TABLES.update({"compress_lowrank": LOWRANK_SUMMARY_COLUMNS, "lowrank_allocations": LOWRANK_ALLOCATION_COLUMNS})
