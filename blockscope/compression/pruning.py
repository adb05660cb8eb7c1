"""Unstructured magnitude pruning of one weight matrix."""


def pruned_count(size: int, sparsity: float) -> int:
    """Entries a matrix of `size` entries loses at this sparsity: round(sparsity * size)."""
    return int(round(sparsity * size))


def magnitude_prune(w, sparsity: float):
    """W with its round(sparsity * size) smallest-magnitude entries set to zero, exactly that many:
    every entry below the count-th smallest magnitude, then the entries equal to it in position
    order. Deterministic, and dequantised weights (a few levels per block) tie a lot: topk would
    pick among ties differently from run to run."""
    count = pruned_count(w.numel(), sparsity)
    out = w.clone()
    if count:
        magnitude, flat = w.abs().flatten(), out.view(-1)
        threshold = magnitude.kthvalue(count).values
        below = magnitude < threshold
        tied = (magnitude == threshold).nonzero().flatten()  # ascending positions
        flat[below] = 0
        flat[tied[: count - int(below.sum())]] = 0
    return out


def achieved_sparsity(pruned) -> float:
    """The fraction of zero entries after pruning (zeros already there are the smallest magnitudes,
    so they count among the pruned ones)."""
    return float((pruned == 0).sum()) / pruned.numel()
