"""KL to the base from what the base keeps per prediction: its top-k log-probabilities, exact,
and draws from the rest of its distribution (docs/metrics.md, "KL to the base")."""

# Per prediction the base's top-k tokens are kept exactly (eval.kl_top_k) and the rest of
# its distribution by samples drawn from it (eval.kl_tail_samples): an unbiased estimate of
# the full KL at a fraction of its bytes.
DEFAULT_TOP_K = 64
DEFAULT_TAIL_SAMPLES = 32
SAMPLING_SEED = 0
# Probability outside the top k is floored here, in base and variant alike: below it, 1 - the
# top-k mass is float32 rounding of the logsumexp, not mass (and a zero would make KL infinite).
REST_FLOOR = 1e-12


def rest_mass(top_logprobs):
    """Probability outside the top-k ids: 1 - sum exp(top-k log-probs), in float64, floored at
    REST_FLOOR."""
    import torch

    return (-torch.expm1(torch.logsumexp(top_logprobs.double(), -1))).clamp_min(REST_FLOOR)


def kl_to_base(base_top, variant_top, base_tail, variant_tail):
    """Per prediction KL(base || variant) = sum_v p_b(v) (log p_b(v) - log p_m(v)), from the
    log-probabilities of the base's top-k tokens (..., k) and of s draws from its distribution
    outside them (..., s): exact over the top k and the rest's mass (R = 1 - top-k mass),
        sum_top p_b (log p_b - log p_m) + R_b log(R_b / R_m),
    plus R_b KL(tail_b || tail_m) of the renormalised tails, estimated without bias and >= 0
    per draw by mean_s(d + exp(-d) - 1), d = log tail_b - log tail_m at the draw (Schulman's k3;
    exact in expectation because the variant's tail sums to one). docs/metrics.md."""
    import torch

    base_top, variant_top = base_top.double(), variant_top.double()
    rest_b, rest_v = rest_mass(base_top), rest_mass(variant_top)
    kl = (base_top.exp() * (base_top - variant_top)).sum(-1) + rest_b * (rest_b.log() - rest_v.log())
    if base_tail.shape[-1]:  # none when the top k is the whole vocabulary
        d = (base_tail.double() - rest_b.log()[..., None]) - (variant_tail.double() - rest_v.log()[..., None])
        kl = kl + rest_b * (d + torch.expm1(-d)).mean(-1)
    return kl


def tail_samples(exp, top_ids, count: int, generator):
    """(..., count) token ids drawn from the distribution proportional to `exp` (exp(z - max),
    consumed: worked in place) outside `top_ids`, by systematic sampling (one uniform offset per
    prediction, `count` evenly spaced points of the tail's CDF): each draw follows the tail
    distribution, with less spread than independent ones."""
    import torch

    if count == 0 or top_ids.shape[-1] >= exp.shape[-1]:
        return top_ids.new_empty((*top_ids.shape[:-1], 0))
    cdf = exp.scatter_(-1, top_ids, 0.0).cumsum_(-1)
    offset = torch.rand((*cdf.shape[:-1], 1), generator=generator, device=cdf.device)
    points = (torch.arange(count, device=cdf.device) + offset).clamp_min_(1e-6) / count * cdf[..., -1:]
    return torch.searchsorted(cdf, points).clamp_max_(cdf.shape[-1] - 1)
