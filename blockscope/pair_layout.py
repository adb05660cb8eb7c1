"""The contracts of a model against another, as code: its base (deltas), compare pairs (distances),
series. Apart from layout.py so that these contracts can grow without moving the code hash of every
rule that reads layout (docs/architecture.md, "A model against another")."""

from blockscope.layout import column_type as layout_column_type
from blockscope.layout import energy_column

# A model with `base:` (or a peft adapter) gets dW = W - W_base per matrix, per unit (rule deltas),
# stacked into DELTAS (+ .csv) and DELTAS_BY_LAYER (rule delta_tables), drawn under DELTA_PLOTS.
DELTAS_UNIT = "results/{model}/deltas/{unit}.parquet"
DELTA_PAIRING = "results/{model}/deltas/pairing.json"  # the base holds the same tensors (rule delta_pairing)
DELTAS = "results/{model}/deltas.parquet"
DELTAS_CSV = "results/{model}/deltas.csv"
DELTAS_BY_LAYER = "results/{model}/deltas_by_layer.csv"
DELTA_PLOTS = "results/{model}/plots/deltas"
DELTA_FIGURES = ("relative_change", "effective_rank")  # stems under DELTA_PLOTS
# A compare pair [model, other] (and each consecutive pair of a series, the later member first):
# per unit (rule distances), stacked (rule compare_tables) with a figure.
COMPARE = "results/summary/compare/{model}/{other}"
COMPARE_UNIT = COMPARE + "/{unit}.parquet"
COMPARE_DISTANCES = COMPARE + "/distances.parquet"
COMPARE_DISTANCES_CSV = COMPARE + "/distances.csv"
COMPARE_BY_LAYER = COMPARE + "/by_layer.csv"
COMPARE_FIGURE = COMPARE + "/distance_by_layer"  # a figure stem
COMPARE_BENCHMARK = "results/summary/benchmarks/{rule}/{model}--{other}--{job}.tsv"
# A series (rule series): its members' summary metrics along the series, a figure.
SERIES = "results/summary/series/{series}"
SERIES_TABLE = SERIES + "/members.parquet"
SERIES_CSV = SERIES + "/members.csv"
SERIES_FIGURE = SERIES + "/trend"  # a figure stem
# The status of a delta or distance row (column `status`); `note` says more where there is more to say.
DELTA_CHANGED = "changed"
DELTA_UNCHANGED = "unchanged"              # bit-identical: no SVD
DELTA_BELOW_ROUNDING = "below storage rounding"  # ||dW||_2 at or under the stored formats' rounding level
DELTA_NO_TAIL = "changed, too few singular values for a tail fit"
SHAPES_DIFFER = "shapes differ"            # a compare pair's matrix with the same name and another shape
MISSING_IN_OTHER = "missing in other"      # a compare pair's matrix the other model lacks
DELTA_STATUSES = (DELTA_CHANGED, DELTA_UNCHANGED, DELTA_BELOW_ROUNDING, DELTA_NO_TAIL, SHAPES_DIFFER,
                  MISSING_IN_OTHER)
PAIR_IDENTITY_COLUMNS = ["unit", "param_name", "expert", "matrix", "layer_index", "block_type", "rows", "cols"]
# What two matrices of one shape are apart (blockscope.analysis.distances): the Frobenius and spectral
# norms of their difference, relative to the other's Frobenius norm, the cosine and angle between the
# flattened weights, and the overlap of their top-k singular subspaces (mean squared cosine of the
# principal angles, and the smallest cosine), left and right.
DISTANCE_METRIC_COLUMNS = ["frobenius_distance", "spectral_distance", "relative_distance", "weight_cosine",
                           "angle_degrees", "subspace_overlap_left", "subspace_overlap_right",
                           "min_principal_cosine_left", "min_principal_cosine_right", "subspace_k"]
DELTA_ENERGY_FRACTIONS = (0.9, 0.99)
# What dW is (blockscope.analysis.delta_metrics): norms, ranks above the storage rounding level, tail fits.
DELTA_METRIC_COLUMNS = ["delta_frobenius", "delta_spectral_norm", "relative_change", "delta_numerical_rank",
                        "delta_effective_rank", "delta_stable_rank",
                        *[energy_column(f, "delta_") for f in DELTA_ENERGY_FRACTIONS], "delta_alpha",
                        "delta_alpha_hill", "rounding_level", "base_frobenius"]
DELTA_COLUMNS = ["model", "base", *PAIR_IDENTITY_COLUMNS, *DELTA_METRIC_COLUMNS, *DISTANCE_METRIC_COLUMNS,
                 "adapter_rank", "adapter_scale", "dtype", "base_dtype", "status", "note", "backend", "device",
                 "seconds"]
DISTANCE_COLUMNS = ["model", "other", *PAIR_IDENTITY_COLUMNS, *DISTANCE_METRIC_COLUMNS, "other_frobenius", "dtype",
                    "other_dtype",
                    "status", "note", "backend", "device", "seconds"]
# Per (layer, block type; ALL_TYPES over the layer's matrices): matrices counted, the pooled relative change
# sqrt(sum ||dW||_F^2 / sum ||W_base||_F^2), medians of the rest over the group's changed matrices.
DELTAS_BY_LAYER_COLUMNS = ["model", "base", "layer_index", "block_type", "matrices", "changed", "relative_change",
                           "delta_frobenius", "delta_effective_rank", "delta_numerical_rank", "delta_energy_rank_90",
                           "weight_cosine"]
COMPARE_BY_LAYER_COLUMNS = ["model", "other", "layer_index", "block_type", "matrices", "relative_distance",
                            "frobenius_distance", "weight_cosine", "subspace_overlap_left", "subspace_overlap_right"]
# One row per (member, block type; ALL_TYPES over all): medians of its metrics table, and the pooled
# relative distance from the previous member (NaN for the first, or where no matrix shares its shape).
SERIES_COLUMNS = ["series", "position", "model", "block_type", "matrices", "alpha", "alpha_hill", "effective_rank",
                  "stable_rank", "spectral_norm", "frobenius_norm", "previous", "shared_matrices",
                  "relative_change_from_previous"]


# Types of the columns the tables above add to layout's (their per-unit Parquet files are written like
# the spectra's: text, pandas' nullable Int64, the rest float64).
TEXT_COLUMNS = {"base", "other", "base_dtype", "other_dtype", "note"}
NULLABLE_INTEGER_COLUMNS = {"delta_numerical_rank", "delta_energy_rank_90", "delta_energy_rank_99", "subspace_k",
                            "adapter_rank"}


def column_type(column: str) -> str:
    """str, Int64, int64 or float64: the pandas dtype of a deltas or distances column (layout.column_type)."""
    if column in TEXT_COLUMNS:
        return "str"
    return "Int64" if column in NULLABLE_INTEGER_COLUMNS else layout_column_type(column)


# Every declared table of this page, for docs/outputs.md and its test (beside layout.TABLES).
TABLES = {"deltas": DELTA_COLUMNS, "distances": DISTANCE_COLUMNS, "deltas_by_layer": DELTAS_BY_LAYER_COLUMNS,
          "compare_by_layer": COMPARE_BY_LAYER_COLUMNS, "series": SERIES_COLUMNS}
