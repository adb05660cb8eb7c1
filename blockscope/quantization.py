"""The named quantisation rules (config key quantization.preset); docs/metrics.md explains them.
No heavy import: config validation reads this on every snakemake invocation."""

PRESETS = {
    # AlphaPruning's direction: lower alpha (heavier tail, more learned structure) keeps more bits.
    "alpha_pruning": {"metric": "alpha", "direction": "lower_alpha_more_bits", "alpha_thresholds": [3.0, 5.0],
                      "formats": ["bf16", "fp8/int8", "int4"]},
    # The original script: alpha-Hill > 3 FP16/BF16, 2.5-3 FP8/INT8, < 2.5 INT4 (higher alpha keeps more bits).
    "original_script": {"metric": "alpha_hill", "direction": "higher_alpha_more_bits",
                        "alpha_thresholds": [2.5, 3.0], "formats": ["fp16/bf16", "fp8/int8", "int4"]},
}
RULE_KEYS = ("metric", "direction", "alpha_thresholds", "formats")
DIRECTION_ALIASES = {"alpha_pruning": "lower_alpha_more_bits", "inverse": "higher_alpha_more_bits"}


def overrides(settings: dict) -> list:
    """The rule keys of a resolved quantization section that differ from its named preset's."""
    preset = PRESETS.get(settings.get("preset"), {})
    return [k for k in RULE_KEYS if k in preset and settings.get(k) != preset[k]]
