"""Samplers for absorbing-state (masked) diffusion: step rules of the generic loop."""

from __future__ import annotations

import torch

from textdiff.noising.base import StepOutput, draw
from textdiff.sampling import step_rule
from textdiff.options import check_unit
from textdiff.sampling.options import Option

THRESHOLD = Option(0.0, "also reveal, every step, each draw at least this probable (Fast-dLLM's confidence-aware "
                        "parallel decoding; 0: off; the steps become a ceiling)", check_unit)

REMASKING_MODES = ("low_confidence", "random", "entropy", "margin", "dilated")


def remasking_mode(name: str, value) -> None:
    if value not in REMASKING_MODES:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {', '.join(REMASKING_MODES)}")


REMASKING = Option("low_confidence", "which of a step's draws it keeps: low_confidence (the most probable ones, "
                                     "LLaDA's default), random (as many, at uniformly random positions; at one "
                                     "token a step, exact any-order sampling of the model), entropy or margin (at "
                                     "the positions of lowest entropy / widest top-two margin, ranked before the "
                                     "draw, so each kept token is an unbiased draw; Dream's orders) or dilated "
                                     "(a fixed order that reveals positions far apart together)", remasking_mode)


def dilated_rank(n: int, device=None) -> torch.Tensor:
    """(n,) each column's place in the dilated order: the bit-reversal permutation (0, 4, 2, 6, 1, 5, 3, 7 for 8),
    so the positions a step reveals together lie as far apart as they can, and each later one sits between
    revealed neighbours (Luxembourg et al. 2025's dilated unmasking)."""
    bits = max(1, (n - 1).bit_length())
    idx = torch.arange(2 ** bits)
    rev = torch.zeros_like(idx)
    for b in range(bits):
        rev |= ((idx >> b) & 1) << (bits - 1 - b)
    order = rev[rev < n]  # the columns, first revealed first
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n)
    return rank.to(device)


@step_rule("ancestral")
def ancestral(backend, pred, probs, state, step):
    """MDLM's ancestral sampler (Sahoo et al. 2024, eq. 7): each masked token is revealed with probability
    (alpha_s - alpha_t) / (1 - alpha_t), its value drawn from the x0 distribution. With MDLM's cache (the loop's):
    when a step reveals nothing and the model ignores t, the next step reuses the last prediction."""
    return backend.step(pred, probs, state, step.t, step.s, step.generator)


@step_rule("confidence", reveals_per_step=True)
def confidence(backend, pred, probs, state, step, *, threshold: float = THRESHOLD, remasking: str = REMASKING):
    """Confidence-based remasking (MaskGIT, Chang et al. 2022; LLaDA's low-confidence remasking): every step draws
    all masked tokens and keeps the most confident ones, so the mask count falls linearly to zero. A token's
    confidence is the model's own probability of it (softmax of the logits before temperature and top-k/p
    filtering, as LLaDA ranks), so greedy decoding (temperature 0, a one-hot draw) still ranks positions.
    With threshold > 0 (Fast-dLLM's confidence-aware parallel decoding, Wu et al. 2025) a step reveals every draw
    at least that confident, and at least its share of the masks left spread over the steps left: the easy
    positions (the padding after a seq2seq target, say) go in a few steps and the steps saved go to the hard ones;
    a block whose positions are all revealed skips the rest of its steps.
    With remasking=random (LLaDA's other remasking) the same number of draws is kept each step, at uniformly random
    positions (after the confident ones under a threshold): MaskGIT's schedule without low_confidence's bias toward
    the likeliest tokens (which buys judge perplexity with diversity). remasking=entropy / margin (Dream's `entropy`
    and `topk_margin` orders; Kim et al. 2025) keep them at the positions the model is surest of, by the entropy
    of the position's distribution or the gap between its two likeliest tokens: a ranking made before the draw,
    so, as with random, a kept token is drawn from the model's own distribution (no bias toward likely tokens),
    while the positions decoded together are the ones least dependent on each other's value. remasking=dilated keeps
    them in a fixed order, the bit reversal of the columns (0, 2, 1, 3 in a block of 4): the tokens drawn together
    in one step are far apart, and adjacent tokens (the most dependent) are not drawn in the same step."""
    masked = (state == backend.special.mask) & step.active  # (B, L)
    drawn = draw(probs, step.generator)
    model_probs = torch.softmax(pred.logits.float(), dim=-1)
    conf = torch.gather(model_probs, -1, drawn[..., None]).squeeze(-1).masked_fill(~masked, -1.0)  # (B, L)
    n_masked = masked.sum(dim=1)
    if threshold > 0:  # every confident draw, and the rest spread evenly over the steps left
        n_reveal = torch.maximum(-(-n_masked // (step.count - step.index)), (conf >= threshold).sum(dim=1))
    else:  # the mask count falls linearly to zero
        n_reveal = n_masked - (step.pending.float() * (1.0 - (step.index + 1) / step.count)).floor().long()  # (B,)
    if remasking != "low_confidence":  # the confident draws first (under a threshold), then the mode's order
        if remasking == "random":
            order = torch.rand(conf.shape, generator=step.generator, device=conf.device)  # [0, 1)
        elif remasking == "dilated":
            order = -dilated_rank(conf.shape[1], conf.device).float()[None, :]  # (1, L)
        elif remasking == "entropy":
            order = torch.special.xlogy(model_probs, model_probs).sum(dim=-1)  # minus the entropy, <= 0
        else:
            top2 = model_probs.topk(2, dim=-1).values
            order = top2[..., 0] - top2[..., 1]  # [0, 1]
        if threshold > 0:
            order = torch.where(conf >= threshold, 2.0 + conf, order)  # above every order of the rest
        conf = order.masked_fill(~masked, -torch.inf)
    rank = conf.argsort(dim=1, descending=True).argsort(dim=1)  # (B, L) 0 = kept first
    sample = torch.where(masked & (rank < n_reveal[:, None]), drawn, state)
    return StepOutput(sample, sample)
