"""The output-error proxy of a perturbed weight matrix: how far the matrix's outputs move on the
corpus windows when W becomes W + dW, from one forward pass for every matrix and perturbation.

A linear layer y = x W^T with inputs X (tokens, in) moves its outputs by X dW^T; their squared size
per token is ||X dW^T||_F^2 / tokens = Tr(dW S dW^T) / tokens, with S = X^T X the input's
second-moment matrix (the quantity GPTQ and OBS minimise per layer). S is collected once per matrix
by forward pre-hooks on the modules that hold the weights, over the same windows the measurements
use; every perturbation of that matrix is then priced without another pass. transformers' Conv1D
(GPT-2) stores W as (in, out): there the outputs move by X dW, Tr(dW^T S dW).
"""

import logging

# The modules whose input a hook can read: nn.Linear (y = x W^T) and transformers' Conv1D (y = x W).
TRANSPOSED_MODULES = ("Conv1D",)


def output_error_proxy(dw, second_moment, tokens: int, transposed: bool = False) -> float:
    """Tr(dW S dW^T) / tokens = ||X dW^T||_F^2 / tokens (S = X^T X over `tokens` input rows); a
    Conv1D weight (in, out): Tr(dW^T S dW) / tokens. In float32: Tr(A B^T) as the dot product of
    the flattened A = dW S and B = dW."""
    import torch

    dw = dw.float()
    if transposed:
        dw = dw.T.contiguous()
    return float(torch.vdot((dw @ second_moment).flatten(), dw.flatten())) / tokens


def relative_weight_error(dw, w) -> float:
    """||dW||_F / ||W||_F: the perturbation's size in weight space (0 for a zero matrix left zero)."""
    norm = float(w.float().norm())
    return float(dw.float().norm()) / norm if norm > 0 else 0.0


def owning_modules(model, names) -> dict:
    """param name -> the module that holds it as `.weight`, for the names a hook can price (a
    Linear or a Conv1D); the others are left out (their proxy stays unknown)."""
    import torch

    modules = dict(model.named_modules())
    out = {}
    for name in names:
        module = modules.get(name.removesuffix(".weight")) if name.endswith(".weight") else None
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in TRANSPOSED_MODULES:
            out[name] = module
        else:
            logging.info("no output-error proxy for %s: held by %s", name, type(module).__name__)
    return out


def is_transposed(module) -> bool:
    return type(module).__name__ in TRANSPOSED_MODULES


def input_size(module) -> int:
    """The size of the vectors a module multiplies: Linear's in_features, Conv1D's weight rows."""
    return int(module.weight.shape[0] if is_transposed(module) else module.weight.shape[1])


def moment_groups(modules: dict, budget: int) -> list:
    """The names in order, cut into groups whose float32 second moments (in^2 x 4 bytes each) fit
    in `budget` bytes together (at least one matrix per group): one forward pass per group."""
    groups, used = [[]], 0
    for name, module in modules.items():
        size = input_size(module) ** 2 * 4
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += size
    return [group for group in groups if group]


def second_moments(model, modules: dict, batches, device: str) -> dict:
    """name -> (S = X^T X as float32 on the device, rows of X): the inputs each module received
    while the model read `batches`, an iterable of (keyword arguments of the model's forward, mask):
    every position, or with a mask (batch, length) only the positions where it is nonzero (an
    encoder's padding is no input)."""
    import torch

    moments = {name: [torch.zeros(input_size(m), input_size(m), device=device), 0] for name, m in modules.items()}
    current = {"mask": None}

    def hook(name):
        def accumulate(module, args):
            if not args:  # called with keyword arguments only: this module's input goes unseen
                return
            x, mask = args[0].detach(), current["mask"]
            x = x[mask.bool()] if mask is not None and x.shape[:-1] == mask.shape else x.reshape(-1, x.shape[-1])
            x = x.float()
            moments[name][0].addmm_(x.T, x)
            moments[name][1] += x.shape[0]
        return accumulate

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in modules.items()]
    try:
        with torch.inference_mode():
            for kwargs, mask in batches:
                current["mask"] = mask
                model(**kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return {name: (s, count) for name, (s, count) in moments.items()}


def moment_budget(device: str) -> int:
    """Bytes the second moments of one pass may take: a quarter of the free memory of the device
    (the CPU's available memory)."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(torch.device(device))[0] // 4
    import psutil

    return psutil.virtual_memory().available // 4


def collect_proxies(model, names, batches, device: str, price, budget: int = None) -> int:
    """For each of `names` a hook can read, price(name, S, rows, transposed) once its S is known
    (none for a module that saw no input); S is freed after. batches(): a fresh iterable of
    (forward keyword arguments, mask) for second_moments. Returns the forward passes made (one per
    group of matrices whose S fit in `budget` bytes together)."""
    modules = owning_modules(model, names)
    groups = moment_groups(modules, moment_budget(device) if budget is None else budget)
    for group in groups:
        moments = second_moments(model, {name: modules[name] for name in group}, batches(), device)
        for name in group:
            s, rows = moments.pop(name)
            if rows:
                price(name, s, rows, is_transposed(modules[name]))
            del s
    return len(groups)
