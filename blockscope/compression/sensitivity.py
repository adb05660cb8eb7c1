"""Per-matrix ground truth: what quantising or pruning one projection matrix alone does to the model.

For every planned matrix (plans.plan_matrices) and every perturbation (each format of
compress.quant.formats, the harsh format, magnitude pruning at the first target sparsity) the
weight-space error and the output-error proxy (blockscope.compression.output_error) are computed
from one forward pass. A set of matrices (all of them on a GPU; on the CPU a stratified sample,
the same number per block type at layers evenly spaced over depth) is measured: that matrix alone
perturbed, everything else bit-identical, scored against the base evaluation on the same windows
(variants.score_variant): KL to the base and NLL change per token (an encoder: its embedding loss,
1 - cosine to the base's sentence embeddings, for both), in the hints' lowest format, the harsh
format and pruned.
The rest get the proxy calibrated on the measured ones (blockscope.compression.proxy_calibration).
Tables: layout.SENSITIVITY_ESTIMATE_COLUMNS (long), layout.SENSITIVITY_MATRIX_COLUMNS (wide).
"""

import contextlib
import logging
import time

import numpy as np
import pandas as pd

from blockscope.compression.experiments import WeightSwap
from blockscope.compression.formats import FORMATS, hint_format, quantize
from blockscope.compression.output_error import collect_proxies, output_error_proxy, relative_weight_error
from blockscope.compression.presets import PRESETS
from blockscope.compression.proxy_calibration import calibrate
from blockscope.compression.pruning import magnitude_prune
from blockscope.evaluation.variants import is_encoder_base, score_variant
from blockscope.layout import (
    SENSITIVITY_ESTIMATE_COLUMNS,
    SENSITIVITY_MATRIX_COLUMNS,
    SENSITIVITY_METRICS,
    sensitivity_columns,
)

PRUNE_PREFIX = "prune_"
CALIBRATION = ("measured formats: log KL = intercept[block type] + slope * log proxy, least squares over the "
               "measured rows of the perturbation with KL and proxy > 0, one slope >= 0 (a negative fit: 0; no "
               "variation: 1); estimated KL = exp(intercept) * proxy^slope (a type without measured rows: the "
               "intercept over all). Formats not measured: the low format's KL of the same matrix times the "
               "proxies' ratio. Fewer than 3 measured rows: the fit pooled over every measured row. 0 where the "
               "proxy is 0")

# --- perturbations -----------------------------------------------------------------------------------------


def prune_perturbation(sparsity: float) -> str:
    """The name of magnitude pruning at a sparsity: prune_0.5."""
    return f"{PRUNE_PREFIX}{sparsity:g}"


def low_format(presets: dict = PRESETS) -> str:
    """The lowest-bit simulated format any preset's hint rule assigns (int4): the low end of the
    hint plans, the format whose per-matrix cost the hints decide on."""
    formats = {hint_format(name) for rule in presets.values() for name in rule["formats"]}
    return max(formats, key=FORMATS.index)  # FORMATS runs from most bits to fewest


def perturbation_list(formats, measured) -> list:
    """Every perturbation the proxy prices: the formats, then the measured ones not among them."""
    return list(dict.fromkeys([*formats, *measured]))


def perturbed(w, perturbation: str, group_size: int):
    """W after the perturbation: a format's round trip (formats.quantize) or magnitude pruning."""
    if perturbation.startswith(PRUNE_PREFIX):
        return magnitude_prune(w, float(perturbation.removeprefix(PRUNE_PREFIX)))
    return quantize(w, perturbation, group_size)


# --- which matrices are measured -----------------------------------------------------------------------------


def stratified_sample(matrices: pd.DataFrame, count: int | None) -> list:
    """The names of `count` matrices (None or at least all: every one): the same number per block
    type (the first types one more when count does not divide), each type's layers evenly spaced
    over depth. The types take turns along one grid of count evenly spaced depths from the first
    to the last layer, so the sample as a whole holds count different depths, both ends included."""
    if count is None or count >= len(matrices):
        return list(matrices.index)
    types = list(dict.fromkeys(matrices["block_type"]))
    per_type = [count // len(types) + (i < count % len(types)) for i in range(len(types))]
    slots = [j for r in range(max(per_type)) for j in range(len(types)) if per_type[j] > r]  # round robin
    first, last = matrices["layer_index"].min(), matrices["layer_index"].max()
    depth = np.linspace(first, last, len(slots)) if len(slots) > 1 else np.array([first], float)
    chosen = []
    for slot, j in enumerate(slots):
        rows = matrices[(matrices["block_type"] == types[j]) & ~matrices.index.isin(chosen)]
        if len(rows):
            chosen.append((rows["layer_index"] - depth[slot]).abs().idxmin())
    return [name for name in matrices.index if name in set(chosen)]


# --- one matrix alone ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def applied_alone(model, name: str, new_weight, model_name: str = None):
    """Inside the block the parameter `name` holds new_weight(its original) and every other
    parameter is untouched; after it the original's exact bits are back (WeightSwap over one matrix)."""
    with WeightSwap(model, [name], model_name).applied(lambda _, w: new_weight(w)):
        yield


def measure_alone(model, base, name: str, new_weight, device: str, batch_size: int) -> dict:
    """{kl_divergence, nll_change}: nats per token, the model with `name` alone replaced by
    new_weight(original), scored on the base evaluation's windows against the base
    (variants.score_variant; an encoder: both are its embedding loss, 1 - cosine to the base's
    sentence embeddings, per sentence)."""
    with applied_alone(model, name, new_weight):
        scores = score_variant(model, base, device, batch_size)
    tokens = sum(scores.tokens)
    return {"kl_divergence": sum(scores.kl) / tokens, "nll_change": (sum(scores.nll) - sum(base.nll)) / tokens}


# --- the experiment ------------------------------------------------------------------------------------------


def forward_batches(base, device: str, batch_size: int):
    """A function giving, at each call, the base's inputs as (forward keyword arguments, mask)
    batches: a causal LM's windows (every position is an input), an encoder's sentences (at its
    base's batch size, each batch cut to its longest sentence; the mask marks the real tokens)."""
    import torch

    def causal():
        windows = torch.as_tensor(base.windows, dtype=torch.long)
        for start in range(0, len(windows), batch_size):
            yield {"input_ids": windows[start:start + batch_size].to(device), "use_cache": False}, None

    def encoder():
        size = int(base.settings.get("batch_size", 32))
        for start in range(0, len(base.input_ids), size):
            mask = base.attention_mask[start:start + size]
            length = max(1, int(mask.sum(1).max()))
            mask = mask[:, :length].to(device)
            yield {"input_ids": base.input_ids[start:start + size, :length].to(device), "attention_mask": mask}, mask

    return encoder if is_encoder_base(base) else causal


def weight_errors(originals: dict, perturbations, group_size: int, device: str, proxies: dict) -> None:
    """Fill the pairs missing from proxies (matrices no hook could price) with their weight error, proxy NaN."""
    for name, original in originals.items():
        w = original.to(device)
        for perturbation in perturbations:
            if (name, perturbation) not in proxies:
                dw = perturbed(w, perturbation, group_size).float() - w.float()
                proxies[(name, perturbation)] = {"weight_error": relative_weight_error(dw, w), "proxy": np.nan}


def proxy_pass(session, perturbations, group_size: int) -> tuple:
    """({(name, perturbation): {weight_error, proxy}} for every planned matrix, forward passes made)."""
    proxies = {}

    def price(name, second_moment, rows, transposed):
        w = session.swap.original[name].to(second_moment.device)
        for perturbation in perturbations:
            dw = perturbed(w, perturbation, group_size).float() - w.float()
            proxies[(name, perturbation)] = {"weight_error": relative_weight_error(dw, w),
                                             "proxy": output_error_proxy(dw, second_moment, rows, transposed)}

    passes = collect_proxies(session.model, list(session.matrices.index),
                             forward_batches(session.base, session.device, session.batch_size), session.device, price)
    weight_errors(session.swap.original, perturbations, group_size, session.device, proxies)  # matrices no hook saw
    return proxies, passes


def measurements(session, names, perturbations, group_size: int) -> dict:
    """{(name, perturbation): {kl_divergence, nll_change}}: each matrix of `names` alone perturbed."""
    out = {}
    for index, name in enumerate(names):
        started = time.perf_counter()
        for perturbation in perturbations:
            out[(name, perturbation)] = measure_alone(
                session.model, session.base, name, lambda w, p=perturbation: perturbed(w, p, group_size),
                session.device, session.batch_size)
        logging.info("%d/%d %s measured in %.1f s: %s", index + 1, len(names), name, time.perf_counter() - started,
                     ", ".join(f"{p} KL {out[(name, p)]['kl_divergence']:.3g}" for p in perturbations))
    return out


def estimates_table(model_name: str, matrices: pd.DataFrame, perturbations, proxies: dict, measured: dict):
    """layout.SENSITIVITY_ESTIMATE_COLUMNS, one row per (matrix, perturbation), estimated_kl empty."""
    rows = []
    for name, matrix in matrices.iterrows():
        for perturbation in perturbations:
            result = measured.get((name, perturbation))
            rows.append({"model": model_name, "param_name": name, "block_type": matrix["block_type"],
                         "layer_index": int(matrix["layer_index"]), "rows": int(matrix["rows"]),
                         "cols": int(matrix["cols"]), "params": int(matrix["params"]), "perturbation": perturbation,
                         "measured": result is not None, **(result or {"kl_divergence": np.nan, "nll_change": np.nan}),
                         **proxies[(name, perturbation)]})
    return pd.DataFrame(rows).reindex(columns=SENSITIVITY_ESTIMATE_COLUMNS)


def matrices_table(estimates: pd.DataFrame, matrices: pd.DataFrame, precision: pd.DataFrame | None,
                   model_name: str) -> pd.DataFrame:
    """layout.SENSITIVITY_MATRIX_COLUMNS, then sensitivity_columns(p) per perturbation: one row per
    matrix. precision: precision_alpha_hill.csv (layer_name, alpha_hill_relative_range) or None."""
    out = matrices.reindex(columns=SENSITIVITY_MATRIX_COLUMNS).copy()
    out["model"] = model_name
    if precision is not None and "alpha_hill_relative_range" in precision:
        spread = precision.drop_duplicates("layer_name").set_index("layer_name")["alpha_hill_relative_range"]
        out["alpha_hill_relative_range"] = spread.reindex(out.index).to_numpy(float)
    for metric in SENSITIVITY_METRICS:
        out[metric] = pd.to_numeric(out[metric], errors="coerce")
    columns = {}
    for perturbation, rows in estimates.groupby("perturbation", sort=False):
        rows = rows.set_index("param_name").reindex(out.index)
        measured, kl, nll, error = sensitivity_columns(perturbation)
        columns |= {measured: rows["measured"].fillna(False).astype(bool).to_numpy(),
                    kl: rows["estimated_kl"].to_numpy(float), nll: rows["nll_change"].to_numpy(float),
                    error: rows["weight_error"].to_numpy(float)}
    return pd.concat([out.reset_index(drop=True), pd.DataFrame(columns)], axis=1)


def empty_matrices_table(perturbations) -> pd.DataFrame:
    """The wide table of a skipped model: its columns, no row."""
    return pd.DataFrame(columns=[*SENSITIVITY_MATRIX_COLUMNS, *[c for p in perturbations
                                                                for c in sensitivity_columns(p)]])


def json_safe(value):
    """NaN and infinities as None (JSON has no NaN), through dicts and lists."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def sensitivity_experiment(session, settings: dict, model_name: str, precision: pd.DataFrame | None = None):
    """(estimates, matrices, agreement) of a session (experiments.experiment_session). settings:
    formats (the proxy's), harsh_format, prune_target, group_size, matrices (how many to measure:
    None all)."""
    group_size, low = settings["group_size"], low_format()
    measured_kinds = list(dict.fromkeys([low, settings["harsh_format"],
                                         prune_perturbation(settings["prune_target"])]))
    perturbations = perturbation_list(settings["formats"], measured_kinds)
    names = stratified_sample(session.matrices, settings["matrices"])
    started = time.perf_counter()
    proxies, passes = proxy_pass(session, perturbations, group_size)
    proxy_seconds = time.perf_counter() - started
    logging.info("[%s] proxy of %d matrices x %d perturbations in %.1f s (%d forward passes)", model_name,
                 len(session.matrices), len(perturbations), proxy_seconds, passes)
    started = time.perf_counter()
    measured = measurements(session, names, measured_kinds, group_size)
    measure_seconds = time.perf_counter() - started
    estimates, agreement = calibrate(estimates_table(model_name, session.matrices, perturbations, proxies, measured),
                                     anchor=low, prune_prefix=PRUNE_PREFIX)
    tokens = int(sum(session.base.tokens))
    agreement = {"model": model_name, "device": str(session.device), "windows": len(session.base.tokens),
                 "tokens": tokens, "windows_kept": session.base.settings.get("windows_kept"),
                 "encoder": is_encoder_base(session.base), "group_size": group_size, "perturbations": perturbations,
                 "measured_perturbations": measured_kinds, "low_format": low,
                 "harsh_format": settings["harsh_format"],
                 "prune_perturbation": prune_perturbation(settings["prune_target"]),
                 "matrices": len(session.matrices), "measured_matrices": names,
                 "sample": "every matrix" if len(names) == len(session.matrices) else
                 "stratified: per block type, layers evenly spaced over depth",
                 "calibration": CALIBRATION, **agreement,
                 "seconds": {"proxy": proxy_seconds, "measurements": measure_seconds}, "proxy_passes": passes}
    return estimates, matrices_table(estimates, session.matrices, precision, model_name), json_safe(agreement)
