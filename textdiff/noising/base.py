"""The back-end contract: what a noising process must provide to the trainer, the samplers and the evaluator.

A back-end owns the parameterisation (what the model's outputs mean), the corruption, the loss and the
likelihood bound; the denoiser knows nothing about noise and the samplers know nothing about the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from textdiff.config import BackendConfig

BOUND_T_MIN = 1e-6
"""Lower end of t in the time-sampled bounds of the discrete back-ends (masked: the part below it is < 1e-6
nats/token; uniform: a decoder term covers it)."""


@dataclass(frozen=True)
class SpecialTokens:
    pad: int
    mask: int
    bos: int
    eos: int
    sep: int
    unk: int


@dataclass
class Batch:
    """ids: (B, L) clean tokens; loss_mask: (B, L) bool, the positions that count in the loss and bound."""

    ids: torch.Tensor
    loss_mask: torch.Tensor

    def to(self, device) -> "Batch":
        return Batch(self.ids.to(device), self.loss_mask.to(device))


@dataclass
class LossOutput:
    loss: torch.Tensor
    """Scalar to minimise: an estimate of the negative ELBO (or exact NLL) in nats per counted token."""
    n_tokens: int
    """Counted tokens in the batch (the loss's denominator)."""


@dataclass
class BoundOutput:
    """Per-sequence negative log-likelihood (an ELBO bound for diffusion), in nats."""

    nll: torch.Tensor
    """(B,) nats per sequence, averaged over time draws."""
    mc_var: torch.Tensor
    """(B,) Monte Carlo variance of that average (0 for exact likelihoods)."""
    n_tokens: torch.Tensor
    """(B,) counted tokens per sequence."""
    exact: bool

    @classmethod
    def from_draws(cls, draws: torch.Tensor, n_tokens: torch.Tensor) -> "BoundOutput":
        """The Monte Carlo estimate from D independent draws (B, D) of a per-sequence NELBO."""
        n_draws = draws.shape[1]
        var = draws.var(dim=1) / n_draws if n_draws > 1 else torch.zeros_like(draws[:, 0])
        return cls(draws.mean(dim=1), var, n_tokens, exact=False)


@dataclass
class StepOutput:
    """One denoising step from t to s < t."""

    sample: torch.Tensor
    """(B, L) the sequence at time s."""
    x0_probs: Optional[torch.Tensor] = None
    """(B, L, V) the model's x0 distribution at time t (for self-conditioning and callbacks)."""


def real_token_mask(special: SpecialTokens, vocab_size: int) -> torch.Tensor:
    """(V,) bool: the tokens noise may write, every token but [PAD] [MASK] [BOS] [SEP] [UNK] ([EOS] is real)."""
    real = torch.ones(vocab_size, dtype=torch.bool)
    real[[special.pad, special.mask, special.bos, special.sep, special.unk]] = False
    return real


class Backend:
    """Base class; subclasses register with `@register(name)` in `textdiff.noising`."""

    name = "base"
    causal = False
    """The denoiser is causal (the AR baseline) instead of bidirectional."""
    default_sampler = "ancestral"
    samplers: tuple[str, ...] = ()
    """Sampler names that work with this back-end."""

    has_bound = True
    """`bound()` gives a likelihood bound (False: the back-end has none, e.g. simplex diffusion)."""
    default_schedule = "loglinear"
    schedules: tuple[str, ...] = ()
    """Schedule names this back-end accepts in `backend.schedule` (empty: it has no schedule)."""
    variable_length = False
    """Samples change length (insertions, deletions): sampler inputs mark holes of unknown length with `open_hole`,
    positions are not kept, and position-based features (semi-autoregressive blocks, guidance) do not apply."""

    def __init__(self, cfg: BackendConfig, special: SpecialTokens, vocab_size: int):
        self.cfg, self.special, self.vocab_size = cfg, special, vocab_size

    @classmethod
    def model_options(cls, cfg: BackendConfig) -> dict:
        """Keyword arguments for the shared Transformer (`token_input`, `vocab_head`)."""
        return {}

    @classmethod
    def modules(cls, cfg: BackendConfig, model_cfg, vocab_size: int):
        """The back-end's own trainable parts (an nn.Module attached to the model as `model.noise`), or None."""
        return None

    def uniforms(self, batch: int, generator: torch.Generator, device=None) -> torch.Tensor:
        """(B,) numbers in [0, 1); antithetic draws put one in each of B equal strata."""
        if self.cfg.time_sampling == "antithetic":
            u = torch.rand(1, generator=generator, device=device)
            return (u + torch.arange(batch, device=device) / batch) % 1.0
        return torch.rand(batch, generator=generator, device=device)

    @staticmethod
    def self_condition_now(model, generator: torch.Generator) -> bool:
        """Self-conditioning in training (Chen et al. 2022): in half of the steps a first no-grad pass's x0 estimate
        is fed to the second pass."""
        return model.cfg.self_conditioning and bool(torch.rand(1, generator=generator, device=generator.device) < 0.5)

    @staticmethod
    def _cond_input(model, x0_prev):
        """The previous x0 distribution (B, L, V) as the model's self-conditioning input (B, L, D)."""
        return None if x0_prev is None else model.embed_probs(x0_prev)

    def _self_condition(self, model, x_t, t):
        """Analog-Bits self-conditioning: a no-grad pass whose x0 distribution (B, L, V) is fed back in
        (for back-ends with `x0_logits`)."""
        with torch.no_grad():
            return torch.softmax(self.x0_logits(model, x_t, t), dim=-1)

    def loss(self, model, batch: Batch, generator: torch.Generator) -> LossOutput:
        raise NotImplementedError

    def one_draw_loss(self, model, batch: Batch, generator, nll) -> LossOutput:
        """The training loss from one draw per sequence of a NELBO estimate `nll(model, ids, keep, v, generator,
        t_min, self_cond) -> (B,)` nats at uniforms v (B,) and t_min = backend.eps, per counted token."""
        v = self.uniforms(batch.ids.shape[0], generator, batch.ids.device)
        self_cond = self.self_condition_now(model, generator)
        total = nll(model, batch.ids, batch.loss_mask, v, generator, self.cfg.eps, self_cond).sum()
        n = int(batch.loss_mask.sum())
        return LossOutput(loss=total / max(n, 1), n_tokens=n)

    def stratified_bound(self, model, batch: Batch, n_draws: int, generator, nll) -> BoundOutput:
        """The NELBO per sequence from n_draws stratified draws of the same `nll` at t_min = BOUND_T_MIN (the model
        self-conditions on a first pass when it was trained to, as in sampling)."""
        ids, keep = batch.ids, batch.loss_mask
        u = torch.rand(ids.shape[0], generator=generator, device=ids.device)
        self_cond = model.cfg.self_conditioning
        draws = [nll(model, ids, keep, (u + d / n_draws) % 1.0, generator, BOUND_T_MIN, self_cond)
                 for d in range(n_draws)]
        return BoundOutput.from_draws(torch.stack(draws, dim=1), keep.sum(dim=1))  # draws (B, D)

    def bound(self, model, batch: Batch, n_draws: int, generator: torch.Generator) -> BoundOutput:
        raise NotImplementedError

    def prior(self, shape: tuple[int, int], device=None) -> torch.Tensor:
        """The starting sequence of generation: [MASK] everywhere (for AR: the positions still to be written)."""
        return torch.full(shape, self.special.mask, dtype=torch.long, device=device)

    def open_hole(self, width: int) -> list[int]:
        """Sampler-input ids for a hole that may take up to `width` tokens: here exactly `width` [MASK]s."""
        return [self.special.mask] * width

    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator,
                noise_mask: Optional[torch.Tensor] = None, model=None) -> torch.Tensor:
        """x_t ~ q(x_t | x0) at times t (B,), only where noise_mask (B, L) holds; `model` for back-ends whose
        corruption uses learned parts (model.noise)."""
        raise NotImplementedError

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    # --- classifier guidance (textdiff.classifier) ---------------------------------------------------------------

    def classifier_input(self, x_t: torch.Tensor) -> torch.Tensor:
        """The noisy state as a guidance classifier reads it: token distributions (B, L, V), here the one-hot of the
        ids x_t, or vectors (B, L, d) (then `classifier_input_dim` is d)."""
        return F.one_hot(x_t, self.vocab_size).float()

    def classifier_input_dim(self, model) -> int:
        """0 when `classifier_input` gives token distributions, else the width of its vectors."""
        return 0

    def classifier_guided(self, model, out, grad: torch.Tensor, t: torch.Tensor):
        """The prediction `out` moved by grad = scale * d log p(c | input) / d input (shaped like `classifier_input`).
        x0 logits (B, L, V): first-order re-weighting, l_iv += grad_iv (-inf entries stay -inf)."""
        return out + grad
