"""Unstructured magnitude pruning of one weight matrix."""


def pruned_count(size: int, sparsity: float) -> int:
    """Entries a matrix of `size` entries loses at this sparsity: round(sparsity * size)."""
    return int(round(sparsity * size))


def magnitude_prune(w, sparsity: float):
    """W with its round(sparsity * size) smallest-magnitude entries set to zero (exactly that many:
    ties are broken by position, so the achieved sparsity is the allocated one to 1 / size)."""
    import torch

    count = pruned_count(w.numel(), sparsity)
    out = w.clone()
    if count:
        smallest = torch.topk(w.abs().flatten(), count, largest=False, sorted=False).indices
        out.view(-1)[smallest] = 0
    return out


def achieved_sparsity(pruned) -> float:
    """The fraction of zero entries after pruning (zeros already there are the smallest magnitudes,
    so they count among the pruned ones)."""
    return float((pruned == 0).sum()) / pruned.numel()
