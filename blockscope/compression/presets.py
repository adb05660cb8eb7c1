"""The named quantisation rules (config key quantization.preset); docs/metrics.md explains them.
No heavy import: config validation reads this on every snakemake invocation."""

import copy

from blockscope.errors import BlockscopeError

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


def missing_rule_keys(quant: dict) -> list:
    """The rule keys a `custom` quantization section lacks (a named preset lacks none)."""
    return [k for k in RULE_KEYS if k not in quant] if quant.get("preset") == "custom" else []


def resolve_quantization(quant: dict) -> dict:
    """Fill the quantization section in place from its preset (explicit keys win) and give
    direction its current name; preset custom needs all four rule keys. Idempotent."""
    quant.setdefault("preset", "alpha_pruning")
    if missing := missing_rule_keys(quant):
        raise BlockscopeError(f"quantization.preset is custom but quantization.{', quantization.'.join(missing)} "
                              "is not set. Fix: set metric, direction, alpha_thresholds and formats, "
                              "or choose a preset")
    if quant["preset"] != "custom":
        for key, value in PRESETS[quant["preset"]].items():
            quant.setdefault(key, copy.deepcopy(value))
    quant["direction"] = DIRECTION_ALIASES.get(quant["direction"], quant["direction"])
    quant.setdefault("group_size", 32)
    return quant
