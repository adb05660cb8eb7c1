"""The workflow's contracts as code: unit names, output paths, block types, metric lists and
the declared columns of every table. Rules, scripts, tests and docs/outputs.md take them from
here; nothing else spells them (docs/architecture.md states each contract)."""

import re

# --- units: the per-layer split of a checkpoint ------------------------------------------------

EMBED, LM_HEAD, OTHER = "embed", "lm_head", "other"
LEGACY_LM_HEAD = "head"  # the LM-head unit's name in results written before the rename
LAYER_PREFIX = "layer_"
UNIT_WILDCARD = rf"{EMBED}|{LM_HEAD}|{OTHER}|{LAYER_PREFIX}[0-9]+"


def layer_unit(index: int) -> str:
    """The unit of transformer block `index`: layer_000, layer_001, ..."""
    return f"{LAYER_PREFIX}{int(index):03d}"


def unit_layer(unit: str):
    """The block index of a layer unit, None for embed, lm_head and other."""
    match = re.fullmatch(rf"{LAYER_PREFIX}(\d+)", unit)
    return int(match.group(1)) if match else None


def unit_order(unit: str):
    """Sort key: embed, the layers in order, lm_head, other."""
    layer = unit_layer(unit)
    if layer is not None:
        return (1, layer)
    return ({EMBED: 0, LM_HEAD: 2, LEGACY_LM_HEAD: 2, OTHER: 3}[unit], 0)


def all_units(layers: int, present=()) -> list:
    """Every unit of a model with `layers` blocks (plus any unit present): one DAG shape for all."""
    units = {EMBED, LM_HEAD, OTHER} | {layer_unit(i) for i in range(int(layers))} | set(present)
    return sorted(units, key=unit_order)


# --- block types ---------------------------------------------------------------------------------

BLOCK_TYPES = (
    "embedding", "q_proj", "k_proj", "v_proj", "o_proj", "qkv_fused", "gate_proj", "up_proj",
    "gate_up_fused", "down_proj", "moe_expert", "moe_router", "norm", "output",
    "position_embedding", "other",
)
# Attention projections and the part of the circuit each one holds.
ATTENTION_PARTS = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "qkv_fused": "qkv"}
ATTENTION_BLOCK_TYPES = tuple(ATTENTION_PARTS)

# --- paths (Snakemake patterns) ---------------------------------------------------------------

CHECKPOINT = "resources/models/{model}"
CORPUS = "resources/corpus/wikitext-2-raw-test.txt"
HEADMERGE = "results/{model}/headmerge"
# The base model's evaluation on the corpus windows (rule evaluate_base), read by head merging
# and the compression experiments: the tensors variants are scored against, a table, a summary.
EVAL = "results/{model}/eval"
EVAL_BASE = "results/{model}/eval/base.safetensors"
EVAL_BASE_WINDOWS = "results/{model}/eval/base_windows.parquet"
EVAL_BASE_SUMMARY = "results/{model}/eval/base.json"
# Per threshold (figure stems, rule headmerge_plots): original vs merged vs random, and pairs by layer.
HEADMERGE_THRESHOLD_FIGURES = (HEADMERGE + "/comparison_{threshold}", HEADMERGE + "/pairs_by_layer_{threshold}")
# Quantisation and pruning plans applied and evaluated (rules compress_quant, compress_prune).
COMPRESS_QUANT = "results/{model}/compress/quant"
COMPRESS_PRUNE = "results/{model}/compress/prune"
# Per-matrix ground truth (rule compress_sensitivity): one matrix alone quantised or pruned, its KL to the base.
COMPRESS_SENSITIVITY = "results/{model}/compress/sensitivity"
# Its figures (stems under COMPRESS_SENSITIVITY, rule compress_plots): every metric's rho with the measured KL,
# and the best predictor against the KL per matrix.
SENSITIVITY_FIGURES = ("correlations", "best_metric")
MODEL_RESULTS = "results/{model}"
INVENTORY = "results/{model}/inventory.parquet"
MODEL_JSON = "results/{model}/model.json"
PLAN = "results/{model}/plan.json"  # predicted seconds and memory of every per-unit job (blockscope.planning)
SELECTION = "results/{model}/selection.json"  # what `select` chose (model.json describes the whole checkpoint)
PER_UNIT_KINDS = ("tensors", "spectra", "metrics", "precision", "heads")
PER_UNIT = "results/{model}/{kind}/{unit}.parquet"
TENSORS = "results/{model}/tensors/{unit}.parquet"
SPECTRA = "results/{model}/spectra/{unit}.parquet"
UNIT_METRICS = "results/{model}/metrics/{unit}.parquet"
UNIT_PRECISION = "results/{model}/precision/{unit}.parquet"
UNIT_HEADS = "results/{model}/heads/{unit}.parquet"
DEEP_DIVE = "results/{model}/heads/deep_dive/layer_{layer}_head_{head}.{ext}"
METRICS = "results/{model}/metrics.parquet"
HEADS = "results/{model}/heads.parquet"
PRECISION = "results/{model}/precision.parquet"
PLOTS = "results/{model}/plots"
REPORT = "results/{model}/report.md"
# Detail tables read from the aggregated ones (rules detail_tables, down_proj_plot, precision_category_plots).
HEADS_BY_HEAD = "results/{model}/heads_by_head.csv"
HEADS_BY_LAYER = "results/{model}/heads_by_layer.csv"
HEADS_HEATMAP_STATISTICS = "results/{model}/heads_heatmap_statistics.csv"
DEEP_DIVE_SUMMARY = "results/{model}/heads/deep_dive_summary.csv"
DOWN_PROJECTIONS = "results/{model}/down_projections.csv"
PHASE_STATISTICS = "results/{model}/phase_statistics.csv"
DOWN_PROJ_FIGURE = "results/{model}/plots/down_proj_variance"  # a figure stem: one file per report.formats
PRECISION_CATEGORIES = "results/{model}/plots/precision_categories"  # category_<block_type>.<format>
PRECISION_MATRICES = "results/{model}/plots/individual_layers"  # <matrix>.<format>, report.per_matrix_charts
DETAIL_TABLES = {"heads_by_head": HEADS_BY_HEAD, "heads_by_layer": HEADS_BY_LAYER,
               "heads_heatmap_statistics": HEADS_HEATMAP_STATISTICS, "deep_dive_summary": DEEP_DIVE_SUMMARY,
               "down_projections": DOWN_PROJECTIONS, "phase_statistics": PHASE_STATISTICS}
SUMMARY = "results/summary"
SUMMARY_REPORT = "results/summary/report.md"  # the cross-model report: findings first, then the figures
# Snakemake benchmark files: one per job, {job} names its wildcards (a unit, a layer, ...).
BENCHMARK = "results/{model}/benchmarks/{rule}/{job}.tsv"
SUMMARY_BENCHMARK = "results/summary/benchmarks/{rule}.tsv"
LOG = "logs/{model}/{rule}/{job}.log"


def per_unit(kind: str, model: str, unit: str) -> str:
    return PER_UNIT.format(model=model, kind=kind, unit=unit)


def deep_dive(model: str, layer: int, head: int, ext: str) -> str:
    return DEEP_DIVE.format(model=model, layer=layer, head=head, ext=ext)


# --- metrics that tables and plots show ---------------------------------------------------------

ENERGY_FRACTIONS = (0.5, 0.75, 0.9, 0.95, 0.99)
HEAD_ENERGY_FRACTIONS = (0.5, 0.9, 0.99)


def energy_column(fraction: float, prefix: str = "") -> str:
    return f"{prefix}energy_rank_{round(fraction * 100)}"


ENERGY_COLUMNS = [energy_column(f) for f in ENERGY_FRACTIONS]
# Summary statistics and phase analysis per weight type.
MAIN_METRICS = ["alpha", "alpha_hill", "alpha_peak", "alpha_mid", "effective_rank", "stable_rank",
                "svd_90_percent_ratio", "rank_ratio", "spectral_norm", "log_norm", "mp_softrank"]
# One figure each, per model against layer and across models against relative depth.
# The head-merge figures (rule headmerge_plots), under HEADMERGE.
HEADMERGE_FIGURES = ("sweep", "pairs_per_layer", "similarity_matrices", "similarity_histograms")
PLOT_METRICS = ["alpha", "alpha_hill", "effective_rank", "stable_rank", "svd_90_percent_rank"]
REPORT_METRICS = ["alpha", "alpha_hill", "effective_rank", "stable_rank", "svd_90_percent_ratio"]

# --- declared columns ---------------------------------------------------------------------------

INVENTORY_COLUMNS = ["param_name", "unit", "layer_index", "block_type", "shape", "dtype", "source_dtype",
                     "nbytes", "file", "layout", "checksum"]
IDENTITY_COLUMNS = ["model", "unit", "param_name", "expert", "matrix", "layer_index", "block_type"]
SPECTRA_COLUMNS = ["model", "unit", "param_name", "expert", "matrix", "index", "sigma"]
# What a metrics row measures, in order (blockscope.analysis.metrics_row computes exactly these).
SPECTRAL_METRIC_COLUMNS = [
    "actual_rank", "numerical_rank_fp16", "numerical_rank_bf16", "numerical_rank_source", "effective_rank",
    "stable_rank", "participation_ratio", "entropy", "sigma_max", "spectral_norm", "frobenius_norm", "log_norm",
    "log_spectral_norm", "condition_number", "rank_ratio", *ENERGY_COLUMNS, "svd_90_percent_rank",
    "svd_90_percent_ratio", "alpha", "xmin", "D", "alpha_stderr", "num_pl_spikes", "alpha_weighted",
    "log_alpha_norm", "alpha_hill", "alpha_peak", "alpha_mid", "num_spikes", "mp_softrank",
]
ELEMENT_COLUMNS = ["mean", "std", "var", "sparsity"]
# The status of a 1-D parameter's metrics row (norm weights, biases): ELEMENT_COLUMNS only, rows = its
# length, cols NA, no spectrum and no precision rows.
STATISTICS_ONLY = "1-D parameter: statistics only"
MATRIX_COLUMNS = ["rows", "cols", "design_rank", *SPECTRAL_METRIC_COLUMNS, *ELEMENT_COLUMNS, "status", "warning"]
# device: the GPU the job held (blockscope.runtime.gpu_slots), `cuda:<id>`, or `cpu`.
METRICS_COLUMNS = [*IDENTITY_COLUMNS, *MATRIX_COLUMNS, "dtype", "source_dtype", "compute_dtype", "backend",
                   "svd_method", "device", "seconds"]
PRECISION_COLUMNS = [*IDENTITY_COLUMNS, "rows", "cols", "source_dtype", "precision", "svd_dtype", "backend",
                     "svd_method", "device", "alpha_hill", "k", "status"]
# Types of the per-unit tables' columns (blockscope.io.tables writes them as pandas would): the
# identities and labels are text, the nullable integers pandas' Int64, `index` and `k` int64, the
# rest float64.
TEXT_COLUMNS = {"model", "unit", "param_name", "matrix", "block_type", "status", "warning", "dtype",
                "source_dtype", "compute_dtype", "backend", "svd_method", "device", "precision", "svd_dtype"}
NULLABLE_INTEGER_COLUMNS = {"expert", "layer_index", "rows", "cols", "design_rank"}
INTEGER_COLUMNS = {"index", "k"}


def column_type(column: str) -> str:
    """str, Int64, int64 or float64: the pandas dtype of a per-unit spectra, metrics or precision column."""
    if column in TEXT_COLUMNS:
        return "str"
    if column in NULLABLE_INTEGER_COLUMNS:
        return "Int64"
    return "int64" if column in INTEGER_COLUMNS else "float64"


HEAD_METRIC_COLUMNS = [
    "qk_effective_rank", "qk_eig_effective_rank", "qk_asymmetry", "qk_complex_fraction", "qk_top_dhead_energy",
    "qk_frobenius_norm", *[energy_column(f, "qk_") for f in HEAD_ENERGY_FRACTIONS], "ov_effective_rank",
    "ov_frobenius_norm", *[energy_column(f, "ov_") for f in HEAD_ENERGY_FRACTIONS],
]
HEAD_COLUMNS = ["model", "unit", "layer_index", "head", "kv_head", *HEAD_METRIC_COLUMNS, "mean_effective_rank", "tag"]
EIGENVALUE_COLUMNS = ["rank", "real", "imag", "magnitude", "cumulative_energy"]
# The aggregated per-model table opens with the columns the anchors' exports carry.
EXPORT_FIRST_COLUMNS = ["model_path", "model_id", "revision", "param_name", "layer_index", "block_type", "shape",
                        "rows", "cols", "design_rank", "actual_rank", "rank_ratio", "svd_90_percent_rank",
                        "svd_90_percent_ratio", "mean", "std", "var", "sparsity", "dtype", "created_at"]
PRECISION_WIDE_COLUMNS = ["layer_name", "category", "out_features", "in_features"]  # then alpha_<precision>...
# ...then the spread of alpha-Hill across the precisions (blockscope.analysis.precision_sensitivity).
PRECISION_SENSITIVITY_COLUMNS = ["alpha_hill_range", "alpha_hill_relative_range", "precision_sensitive"]
# Rows precision_summary_statistics.csv appends after the per-precision ones (same columns).
RELATIVE_RANGE_ROW, SENSITIVE_ROW = "alpha_hill_relative_range", "precision_sensitive"
# quantization_hints.csv: one row per metrics row; no format (decision keep) without a usable spectrum.
QUANTIZATION_HINT_COLUMNS = ["matrix", "param_name", "expert", "block_type", "layer_index", "rows", "cols", "alpha",
                             "alpha_hill", "suggested_format", "bits", "group_size", "decision", "reason", "basis"]
PRECISION_SUMMARY_COLUMNS = ["precision", "count", "mean", "std", "min", "median", "max", "q25", "q75"]
# The output contract of docs/architecture.md: columns every metrics table carries at least.
CONTRACT_METRICS_COLUMNS = [
    "model", "unit", "param_name", "layer_index", "block_type", "rows", "cols", "source_dtype", "compute_dtype",
    "backend", "design_rank", "actual_rank", "rank_ratio", "svd_90_percent_rank", "svd_90_percent_ratio",
    "effective_rank", "stable_rank", "spectral_norm", "frobenius_norm", "log_norm", "log_spectral_norm", "alpha",
    "xmin", "D", "num_pl_spikes", "alpha_weighted", "alpha_hill", "alpha_peak", "alpha_mid", "mean", "std", "var",
    "sparsity", "seconds",
]
# Snakemake's benchmark files (seconds, MB, MB/s); blockscope adds rule and job from the path.
# Head merging: every pairwise cosine of every layer and measure (wq, qk, ov).
SIMILARITY_COLUMNS = ["layer", "measure", "head_i", "head_j", "similarity"]
# plan.json's jobs: one per (unit, per-unit rule), priced by blockscope.planning (pricing, model_plan).
PLAN_JOB_COLUMNS = ["unit", "rule", "seconds", "mem_mb", "gflops"]
# The base evaluation, one row per corpus window (blockscope.evaluation.base_artifact.base_windows_table).
EVAL_WINDOW_COLUMNS = ["window", "first_token", "nll", "correct", "tokens", "loss", "accuracy"]
# Detail tables of the heads: statistics of a head metric over a group of heads.
SPREAD = ("mean", "std", "min", "max")


def spread_columns(metric: str) -> list:
    return [f"{metric}_{stat}" for stat in SPREAD]


HEAD_RANK_CLASSES = ("LOW", "MID", "HIGH")  # by the 25 % / 75 % quantiles of the per-head-index means
HEADS_BY_HEAD_COLUMNS = ["head", "layers", *spread_columns("qk_effective_rank"), "rank_class"]
HEADS_BY_LAYER_COLUMNS = ["layer_index", "heads", *spread_columns("qk_effective_rank"),
                          *spread_columns("ov_effective_rank")]
HEATMAP_STATISTICS_COLUMNS = ["metric", "count", "min", "max", "mean", "std"]
MAGNITUDE_PERCENTILES = (10, 25, 50, 75, 90)
DEEP_DIVE_SUMMARY_COLUMNS = [
    "layer", "head", "eigenvalues", *[f"magnitude_percentile_{p}" for p in MAGNITUDE_PERCENTILES],
    "real_min", "real_max", "imag_min", "imag_max", "positive_real", "negative_real", *ENERGY_COLUMNS,  # n50 ... n99
]
DOWN_PROJECTION_COLUMNS = ["matrix", "layer_index", "rows", "cols", "components", "sigma_max", "sigma_min",
                           "condition_number", *ENERGY_COLUMNS]
# Per phase (early / middle / late, and all): the statistics of series_stats a phase reads with.
PHASE_STATISTICS_COLUMNS = ["block_type", "metric", "phase", "count", "mean", "std", "min", "max", "median",
                            "range", "cv"]
ALL_TYPES = "all"  # block_type of the phase-statistics rows over every weight type
# Compression experiments: one row per evaluated plan (and the base), metrics against the base. An
# encoder (blockscope.evaluation.variants.score_fields) fills embedding_cosine, retrieval_agreement,
# kl_divergence (its embedding loss, 1 - cosine) and tokens_evaluated (sentences); the rest are NaN.
COMPRESS_SCORE_COLUMNS = ["perplexity", "accuracy", "kl_divergence", "top1_agreement", "perplexity_change", "ci_low",
                          "ci_high", "tokens_evaluated", "embedding_cosine", "retrieval_agreement"]
# predicted_kl: the additive model's KL of a quantisation plan (summed per-matrix sensitivity
# estimates, blockscope.compression.oracle), NaN without them.
COMPRESS_QUANT_COLUMNS = ["model", "plan", "kind", "of", "seed", "direction", "bits_per_weight", "format_counts",
                          *COMPRESS_SCORE_COLUMNS, "predicted_kl"]
COMPRESS_PRUNE_COLUMNS = ["model", "plan", "kind", "of", "seed", "direction", "target", "sparsity",
                          *COMPRESS_SCORE_COLUMNS]
# Statistical comparisons of evaluated variants on the same windows (blockscope.evaluation.paired_tests):
# one row per (plan, control); estimate, ci_low, ci_high: plan minus control in `metric` (mean NLL per
# token in nats for causal LMs; negative: the plan is better); p_value: the plan's rank among the
# random plans (against == "random"); verdict one of VERDICTS. Written as comparisons.parquet beside
# each experiment's summary (compress/quant, compress/prune, headmerge). docs/metrics.md "Comparisons".
COMPARISON_COLUMNS = ["model", "experiment", "plan", "against", "against_plan", "metric", "estimate", "ci_low",
                      "ci_high", "level", "min_effect", "verdict", "p_value", "n_random", "windows", "tokens",
                      "articles"]
VERDICTS = ("better", "worse", "below minimum effect", "no detectable difference")
# Per-matrix sensitivity: per perturbation, metric and block type (ALL_TYPES over every type), Spearman's
# rho of the metric with the measured KL of perturbing one matrix alone, its percentile bootstrap interval
# over matrices and p-value; matrices: the measured matrices it counts (below 5: NaN statistics).
# blockscope.compression.metric_prediction; results/{model}/compress/sensitivity/metric_correlations.parquet.
METRIC_CORRELATION_COLUMNS = ["model", "perturbation", "metric", "block_type", "matrices", "spearman", "ci_low",
                              "ci_high", "p_value"]
# One row per (plan, matrix): the sparsity allocated to it and the one pruning achieved.
PRUNE_ALLOCATION_COLUMNS = ["model", "target", "plan", "param_name", "layer_index", "layer_alpha", "allocated",
                            "achieved"]
# Per-matrix sensitivity (blockscope.compression.sensitivity), estimates.parquet: one row per (matrix,
# perturbation: a format name or prune_<sparsity>), that matrix alone perturbed. kl_divergence and nll_change
# are measured (NaN where measured is false); proxy is the output-error proxy Tr(dW S dW^T) / tokens;
# estimated_kl the measured KL, else the proxy through the log-space calibration (agreement.json).
SENSITIVITY_ESTIMATE_COLUMNS = ["model", "param_name", "block_type", "layer_index", "rows", "cols", "params",
                                "perturbation", "measured", "kl_divergence", "nll_change", "weight_error", "proxy",
                                "estimated_kl"]
# matrices.parquet: one row per matrix, its spectral metrics (alpha_hill_relative_range: precision sensitivity),
# then per perturbation p the columns sensitivity_columns(p): measured or not, KL (estimated_kl), NLL change,
# weight error.
SENSITIVITY_METRICS = ["alpha", "alpha_hill", "alpha_peak", "alpha_weighted", "stable_rank", "effective_rank",
                       "spectral_norm", "alpha_hill_relative_range"]
SENSITIVITY_MATRIX_COLUMNS = ["model", "param_name", "block_type", "layer_index", "rows", "cols", "params",
                              *SENSITIVITY_METRICS]
SENSITIVITY_PER_PERTURBATION = ("measured", "kl", "nll_change", "weight_error")


def sensitivity_columns(perturbation: str) -> list:
    """matrices.parquet's columns of perturbation p: `{p}_measured`, `{p}_kl`, `{p}_nll_change`, `{p}_weight_error`."""
    return [f"{perturbation}_{name}" for name in SENSITIVITY_PER_PERTURBATION]


BENCHMARK_COLUMNS = ["s", "h:m:s", "max_rss", "max_vms", "max_uss", "max_pss", "io_in", "io_out", "mean_load",
                     "cpu_time"]

# Every declared table, for docs/outputs.md and its test.
TABLES = {
    "inventory": INVENTORY_COLUMNS, "spectra": SPECTRA_COLUMNS, "metrics": METRICS_COLUMNS,
    "precision": PRECISION_COLUMNS, "heads": HEAD_COLUMNS, "deep_dive": EIGENVALUE_COLUMNS,
    "precision_alpha_hill": [*PRECISION_WIDE_COLUMNS, *PRECISION_SENSITIVITY_COLUMNS],
    "precision_summary_statistics": PRECISION_SUMMARY_COLUMNS,
    "similarities": SIMILARITY_COLUMNS, "benchmarks": BENCHMARK_COLUMNS,
    "quantization_hints": QUANTIZATION_HINT_COLUMNS, "plan_jobs": PLAN_JOB_COLUMNS,
    "eval_base_windows": EVAL_WINDOW_COLUMNS,
    "heads_by_head": HEADS_BY_HEAD_COLUMNS, "heads_by_layer": HEADS_BY_LAYER_COLUMNS,
    "heads_heatmap_statistics": HEATMAP_STATISTICS_COLUMNS, "deep_dive_summary": DEEP_DIVE_SUMMARY_COLUMNS,
    "down_projections": DOWN_PROJECTION_COLUMNS, "phase_statistics": PHASE_STATISTICS_COLUMNS,
    "compress_quant": COMPRESS_QUANT_COLUMNS, "compress_prune": COMPRESS_PRUNE_COLUMNS,
    "prune_allocations": PRUNE_ALLOCATION_COLUMNS, "comparisons": COMPARISON_COLUMNS,
    "sensitivity_estimates": SENSITIVITY_ESTIMATE_COLUMNS, "sensitivity_matrices": SENSITIVITY_MATRIX_COLUMNS,
    "metric_correlations": METRIC_CORRELATION_COLUMNS,
}


# Figures: every figure is written in each of report.formats; the HTML report embeds one of them.
FIGURE_FORMATS = ("png", "pdf", "svg")


def embedded_format(formats) -> str:
    """The format the Snakemake HTML report embeds: PNG, else SVG, else the first listed."""
    return next((ext for ext in ("png", "svg") if ext in formats), formats[0])


def figure_files(stem: str, formats) -> list:
    """One figure's files, the embedded format first: figure_files("x/sweep", ["pdf", "png"])
    -> ["x/sweep.png", "x/sweep.pdf"]."""
    first = embedded_format(formats)
    return [f"{stem}.{ext}" for ext in [first, *(ext for ext in formats if ext != first)]]
