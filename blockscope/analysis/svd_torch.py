"""Singular values on torch (CUDA, or the CPU for tests): batched over same-shape matrices, by
torch.linalg.svdvals (gesdd) or the Gram path (float64 Gram, torch.linalg.eigvalsh). torch is
imported only when called, so that a CPU job never loads it."""

import numpy as np

from blockscope.analysis.gram import gram_floor


class CudaOutOfMemory(RuntimeError):
    pass


def singular_values_torch(matrices: list, device: str, methods: list) -> list:
    """sigma of each matrix on `device` (cuda, or cpu for tests), by its method in `methods`
    (gesdd or gram, one per matrix: spectra.svd_method_for's choice), batched over the matrices
    of one shape and method. A CUDA out-of-memory raises CudaOutOfMemory."""
    import torch

    batches = {}
    for index, (matrix, method) in enumerate(zip(matrices, methods)):
        batches.setdefault((matrix.shape, method), []).append(index)
    result = [None] * len(matrices)
    try:
        for (_, method), indices in batches.items():
            batch = torch.from_numpy(np.stack([matrices[i] for i in indices])).to(device)
            by_gram = method == "gram"
            sigma = (gram_singular_values_torch(batch) if by_gram else torch.linalg.svdvals(batch)).cpu().numpy()
            for row, i in enumerate(indices):
                result[i] = sigma[row]
            del batch
    except torch.cuda.OutOfMemoryError as exc:
        raise CudaOutOfMemory(str(exc)) from None
    return result


def gram_singular_values_torch(batch):
    """The Gram path in torch: float64 Gram of the short side, torch.linalg.eigvalsh, sigma as in
    gram.sigma_from_gram (below gram_floor: 0), descending, in the batch's dtype."""
    import torch

    wide = batch.shape[-2] < batch.shape[-1]
    values = batch.to(torch.float64)
    gram = values @ values.mT if wide else values.mT @ values
    del values
    eigs = torch.linalg.eigvalsh(gram).flip(-1)
    floor = gram_floor(1.0, eigs.shape[-1]) * eigs[..., :1].clamp_min(0)
    return torch.where(eigs > floor, eigs, 0.0).sqrt().to(batch.dtype)
