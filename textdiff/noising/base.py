"""The back-end contract: what a noising process provides to the trainer, the samplers and the evaluator.

A back-end owns the parameterisation (what the model's outputs mean), the corruption, the loss, the likelihood
bound and the reverse step; the denoiser knows nothing about noise and the samplers know nothing about the model.

    training    corrupt(x0, t, generator, noise_mask) -> x_t      loss(model, batch, generator) -> LossOutput
                bound(model, batch, n_draws, generator) -> BoundOutput            (when has_bound)
    sampling    start(model, x, generator) -> state               the sampler input x (B, L) as a state at t = 1
                predict(model, state, t, x0_prev=None) -> Prediction
                step(pred, probs, state, t, s, generator) -> StepOutput          one reverse step t -> s
                tokens(state) -> ids (B, L)                       [MASK] where nothing is decided yet
                hold(model, state, ids, known, t, generator) -> state            keep the known tokens known
    options     Options: a frozen dataclass, the recipe's `backend:` section; check_recipe(recipe) for rules
                across sections; modules(...) for the back-end's own trainable parts (model.noise)

t and s are (B,) float tensors in [0, 1] (1: pure noise). `state` is whatever the back-end denoises: token ids
(masked, uniform), vectors (embedding), noisy logits (simplex). The generic loop in textdiff/sampling/loop.py
drives these methods for every fixed-length back-end; a sampler is then one step rule. A back-end whose reverse
step needs more than one model call (edit: a script pass, then a token pass) or none of this (the AR baseline's
KV cache) registers a whole sampler function instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
import torch.nn.functional as F

from textdiff.options import check_choice

BOUND_T_MIN = 1e-6
"""Lower end of t in the time-sampled bounds of the discrete back-ends (masked: the part below it is < 1e-6
nats/token; uniform: a decoder term covers it)."""


# --- options ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """A back-end's section of a recipe: `name` plus the keys of the back-end's own subclass, validated in
    `__post_init__` (ValueError naming the key and the allowed values)."""

    before: ClassVar[dict] = {}
    """Values for keys absent from a run's config.json because it was written before they existed (the behaviour
    such a run was trained with); a key not listed here takes its default."""

    name: str
    """Registered back-end (`textdiff.registry.BACKENDS`): the recipe's `backend.name`."""


@dataclass(frozen=True)
class NoiseOptions(Options):
    """Options of every back-end with a noise schedule in continuous time."""

    schedules: ClassVar[tuple[str, ...]] = ()
    """The names `schedule` may take, the default first."""

    schedule: Optional[str] = None
    """Noise schedule in continuous time t in [0, 1] (None: the back-end's default, the first allowed)."""
    time_sampling: str = "antithetic"
    """Training draws of t: `antithetic` (low-discrepancy, one stratum per example) or `uniform`."""

    def __post_init__(self):
        if self.schedule is not None:
            check_choice(f"backend.schedule (for the {self.name} back-end)", self.schedule, self.schedules)
        check_choice("backend.time_sampling", self.time_sampling, ("antithetic", "uniform"))

    def schedule_name(self) -> str:
        return self.schedule or self.schedules[0]


@dataclass(frozen=True)
class DiscreteOptions(NoiseOptions):
    """Options of the back-ends that corrupt token ids (masked, uniform, edit)."""

    schedules: ClassVar[tuple[str, ...]] = ("loglinear", "cosine")

    eps: float = 1e-3
    """Smallest t drawn in training (avoids the 1/t singularity; the likelihood bounds start at t = 1e-6)."""

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.eps < 0.5:
            raise ValueError(f"backend.eps={self.eps!r} must lie in (0, 0.5)")


@dataclass(frozen=True)
class GaussianOptions(NoiseOptions):
    """Options of the back-ends that add Gaussian noise under a log-SNR schedule (embedding, simplex)."""

    schedules: ClassVar[tuple[str, ...]] = ("cosine", "sqrt", "linear")
    targets: ClassVar[tuple[str, ...]] = ("x0", "eps")

    target: str = "x0"
    """What the model predicts: `x0` or `eps` (embedding also `v` = alpha eps - sigma x0)."""
    gamma_min: float = -10.0
    """Log noise-to-signal ratio at t = 0 (sigma_0^2 = sigmoid(gamma_min))."""
    gamma_max: float = 10.0
    """Log noise-to-signal ratio at t = 1."""

    def __post_init__(self):
        super().__post_init__()
        if self.target not in self.targets:
            raise ValueError(f"backend.target={self.target} is not supported by the {self.name} back-end; choose one of "
                             f"{', '.join(self.targets)}")
        if not self.gamma_max - self.gamma_min >= 1.0:
            raise ValueError(f"backend.gamma_max={self.gamma_max} must exceed backend.gamma_min={self.gamma_min} by >= 1")


# --- data in, numbers out -----------------------------------------------------------------------------------------


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
class Prediction:
    """The model's view of x0 at time t."""

    logits: torch.Tensor
    """(B, L, V) float32 x0 logits (a continuous back-end's rounding logits); -inf where a token is impossible."""
    x0: Optional[torch.Tensor] = None
    """(B, L, d) the x0 estimate in a continuous space (Gaussian back-ends), else None."""


@dataclass
class StepOutput:
    """One reverse step from t to s < t."""

    sample: Any
    """The state at time s (the back-end's own kind: ids, vectors, logits)."""
    tokens: torch.Tensor
    """(B, L) the token ids the step decided: the sampler's output once s = 0, and what a callback shows."""


def real_token_mask(special: SpecialTokens, vocab_size: int) -> torch.Tensor:
    """(V,) bool: the tokens noise may write, every token but [PAD] [MASK] [BOS] [SEP] [UNK] ([EOS] is real)."""
    real = torch.ones(vocab_size, dtype=torch.bool)
    real[[special.pad, special.mask, special.bos, special.sep, special.unk]] = False
    return real


def per_row(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (B,) tensor shaped to broadcast over `like` (B, ...)."""
    return x.reshape(-1, *([1] * (like.dim() - 1)))


def block_of(model) -> int:
    """The model's block size K (model.block_size; 0: not a block model)."""
    return getattr(model.cfg, "block_size", 0)


def clean_context(model, x0: torch.Tensor) -> dict:
    """The keyword a block model's training forward takes beside the noisy sequence: its clean one (nothing for
    any other model)."""
    return {"context": x0} if block_of(model) else {}


def block_uniforms(v: torch.Tensor, length: int, block: int) -> torch.Tensor:
    """Uniforms per block from one per sequence, v (B,) -> (B, L / K): v shifted by b / (L / K) for block b
    (stratified across a sequence's blocks, as antithetic draws are across a batch)."""
    n = length // block
    return (v[:, None] + torch.arange(n, device=v.device, dtype=v.dtype) / n) % 1.0


def per_token(values: torch.Tensor, block: int) -> torch.Tensor:
    """Values per block (B, L / K) repeated over each block's K positions: (B, L)."""
    return values.repeat_interleave(block, dim=1)


def draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per position from probs (..., V) (unnormalised weights will do) -> ids (...).

    By the inverse CDF in float64: a uniform u times the row's total, the first token whose running sum passes it.
    Exact (a zero-probability token is never drawn) and 3x faster than `torch.multinomial` on a CPU for a
    vocabulary of 8k, which matters to samplers that draw every undecided position each step. float64 keeps the
    tail of a large vocabulary honest (a float16 / bfloat16 draw truncates it, Zheng et al. 2024); MPS, without
    float64, sums in float32."""
    flat = probs.reshape(-1, probs.shape[-1])
    dtype = torch.float32 if flat.device.type == "mps" else torch.float64
    cdf = flat.to(dtype).cumsum(dim=-1)  # (N, V)
    total = cdf[:, -1:].contiguous()
    bad = "draw: a distribution over the vocabulary sums to zero or is not a number"
    if flat.device.type != "cpu":  # checked on the device: no host sync per sampling step
        torch._assert_async((total > 0).all(), bad)
    elif not bool((total > 0).all()):  # NaN fails this too
        raise ValueError(bad)
    u = torch.rand(total.shape, generator=generator, device=flat.device, dtype=dtype) * total
    ids = torch.searchsorted(cdf, u, right=True)
    last = torch.searchsorted(cdf, total, right=False)  # the last token of nonzero weight (u rounding up to total)
    return torch.minimum(ids, last).view(probs.shape[:-1])


def ddim_update(x0: torch.Tensor, z: torch.Tensor, at_t: tuple, at_s: tuple, eta: float = 0.0,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) of a variance-preserving Gaussian process from z_t to z_s (s < t) given an
    x0 estimate, per sequence: at_t = (alpha_t, sigma_t), at_s = (alpha_s, sigma_s), each (B,); eta = 0 is
    deterministic, eta = 1 the DDPM posterior q(z_s | z_t, x0). x0, z (B, L, ...)."""
    a_t, s_t, a_s, s_s = (per_row(v.to(z.dtype), z) for v in (*at_t, *at_s))
    eps = (z - a_t * x0) / s_t
    c = eta * s_s / s_t * (1.0 - (a_t / a_s) ** 2).clamp_min(0.0).sqrt()  # DDIM's sigma_{t -> s}
    z_s = a_s * x0 + (s_s ** 2 - c ** 2).clamp_min(0.0).sqrt() * eps
    if eta > 0:
        z_s = z_s + c * torch.randn(z.shape, generator=generator, device=z.device)
    return z_s


# --- the back-end -------------------------------------------------------------------------------------------------


class Backend:
    """Base class; subclasses register with `@register(name)` in `textdiff.noising` and set `Options`."""

    name = "base"
    Options: ClassVar[type] = Options
    """The frozen dataclass of this back-end's recipe keys."""
    causal = False
    """The denoiser is causal (the AR baseline) instead of bidirectional."""
    default_sampler = "ancestral"
    samplers: tuple[str, ...] = ()
    """Sampler names that work with this back-end."""
    has_bound = True
    """`bound()` gives a likelihood bound (False: the back-end has none, e.g. simplex diffusion)."""
    variable_length = False
    """Samples change length (insertions, deletions): sampler inputs mark holes of unknown length with `open_hole`,
    positions are not kept, and position-based features (semi-autoregressive blocks, guidance) do not apply."""
    self_conditioning = True
    """The back-end feeds its previous x0 estimate back (model.self_conditioning); False refuses the switch."""
    block_diffusion = False
    """The back-end trains and bounds a block model (model.block_size): its loss and bound pass the clean sequence
    as the model's `context` and draw the noise of each block on its own."""
    scores_every_token = True
    """The loss and `bound()` count every position of the loss mask (an AR run from before `backend.start_token`
    leaves each sequence's first token out)."""
    time_free = False
    """`predict` depends on t only through the model: an unchanged state under a model without time conditioning
    gives the same prediction, so the sampling loop may reuse it (MDLM's cache)."""

    def __init__(self, cfg: Options, special: SpecialTokens, vocab_size: int):
        self.cfg, self.special, self.vocab_size = cfg, special, vocab_size

    # --- recipe hooks ------------------------------------------------------------------------------------------

    @classmethod
    def check_recipe(cls, recipe) -> None:
        """Rules across recipe sections that concern this back-end; raise ValueError naming the keys."""
        if recipe.model.self_conditioning and not cls.self_conditioning:
            raise ValueError(f"model.self_conditioning=true: the {cls.name} back-end does not self-condition (its "
                             f"model never sees an x0 estimate); set it to false")
        reads_tokens = cls.model_options(recipe.backend).get("token_input", True)
        if not recipe.model.tie_embeddings and not reads_tokens and recipe.model.backbone is None:
            raise ValueError(f"model.tie_embeddings=false: the {cls.name} back-end's model reads vectors, not tokens, "
                             "so it has no token embedding to tie to its vocab head; leave the key out")

    @classmethod
    def model_options(cls, cfg: Options) -> dict:
        """Keyword arguments for the shared Transformer (`token_input`, `vocab_head`)."""
        return {}

    @classmethod
    def modules(cls, cfg: Options, model_cfg, vocab_size: int):
        """The back-end's own trainable parts (an nn.Module attached to the model as `model.noise`), or None."""
        return None

    # --- training ------------------------------------------------------------------------------------------------

    def uniforms(self, batch: int, generator: torch.Generator, device=None) -> torch.Tensor:
        """(B,) numbers in [0, 1); antithetic draws put one in each of B equal strata."""
        if getattr(self.cfg, "time_sampling", "uniform") == "antithetic":
            u = torch.rand(1, generator=generator, device=device)
            return (u + torch.arange(batch, device=device) / batch) % 1.0
        return torch.rand(batch, generator=generator, device=device)

    @staticmethod
    def self_condition_now(model, generator: torch.Generator) -> bool:
        """Self-conditioning in training (Chen et al. 2022): in half of the steps a first no-grad pass's x0 estimate
        is fed to the second pass."""
        return model.cfg.self_conditioning and bool(torch.rand(1, generator=generator, device=generator.device) < 0.5)

    def feedback(self, pred: Prediction) -> torch.Tensor:
        """What self-conditioning feeds the next prediction: the x0 distribution (B, L, V), or a continuous x0
        estimate where the back-end has one."""
        return torch.softmax(pred.logits.float(), dim=-1)

    def self_condition(self, model, state, t, context=None) -> torch.Tensor:
        """Analog-Bits self-conditioning: a no-grad first pass whose `feedback` the second pass sees (`context`: the
        clean sequence a block model's training pass sees beside the noisy one)."""
        with torch.no_grad():
            extra = {"context": context} if context is not None and block_of(model) else {}
            return self.feedback(self.predict(model, state, t, **extra))

    def first_pass(self, model, state, t, context=None) -> Optional[torch.Tensor]:
        """The x0_prev a model trained with self-conditioning sees outside sampling (bound, distillation): its own
        first pass (a block model's beside the clean `context`, as in training); None for a model without it."""
        return self.self_condition(model, state, t, context) if model.cfg.self_conditioning else None

    @staticmethod
    def cond_input(model, x0_prev):
        """The previous x0 distribution (B, L, V) as the model's self-conditioning input (B, L, D)."""
        return None if x0_prev is None else model.embed_probs(x0_prev)

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
        raise NotImplementedError(f"the {self.name} back-end has no tractable likelihood bound; use generative "
                                  "perplexity")

    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator,
                noise_mask: Optional[torch.Tensor] = None, model=None):
        """x_t ~ q(x_t | x0) at times t (B,), only where noise_mask (B, L) holds; `model` for back-ends whose
        corruption uses learned parts (model.noise)."""
        raise NotImplementedError

    # --- sampling ------------------------------------------------------------------------------------------------

    def prior(self, shape: tuple[int, int], device=None) -> torch.Tensor:
        """The sampler input of unconditional generation: [MASK] everywhere (a hole at every position)."""
        return torch.full(shape, self.special.mask, dtype=torch.long, device=device)

    def open_hole(self, width: int) -> list[int]:
        """Sampler-input ids for a hole that may take up to `width` tokens: here exactly `width` [MASK]s."""
        return [self.special.mask] * width

    def start(self, model, x: torch.Tensor, generator: torch.Generator):
        """The state at t = 1 that the sampler input x (B, L) describes: its given tokens clean, its [MASK]s a draw
        of the prior. Here the ids themselves ([MASK] is the absorbing state)."""
        return x.clone()

    def predict(self, model, state, t: torch.Tensor, x0_prev=None) -> Prediction:
        raise NotImplementedError

    def step(self, pred: Prediction, probs: torch.Tensor, state, t: torch.Tensor, s: torch.Tensor,
             generator: torch.Generator) -> StepOutput:
        """The back-end's reverse step t -> s (each (B,)); probs (B, L, V) is the x0 distribution to draw tokens
        from (pred.logits after the sampler's temperature / top-k / top-p)."""
        raise NotImplementedError

    def tokens(self, state) -> torch.Tensor:
        """(B, L) the token ids a state shows ([MASK] where undecided)."""
        return state

    def hold(self, model, state, ids: torch.Tensor, known: torch.Tensor, t: torch.Tensor, generator):
        """The state with the known positions (B, L) (given tokens, finished blocks) showing `ids` as the model saw
        them in training at time t. Token states keep them already: unchanged."""
        return state

    def select(self, where: torch.Tensor, new, old):
        """`new` at the positions `where` (B, L), `old` elsewhere (a state with any trailing dimensions)."""
        return torch.where(where.view(*where.shape, *([1] * (new.dim() - 2))), new, old)

    def settled(self, state, where: torch.Tensor) -> bool:
        """Nothing at the positions `where` (B, L) can change any more (every step after it is a no-op)."""
        return False

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) of a sampler's output."""
        return x

    # --- classifier guidance (textdiff.classifier) ---------------------------------------------------------------

    def classifier_input(self, x_t) -> torch.Tensor:
        """The noisy state as a guidance classifier reads it: token distributions (B, L, V), here the one-hot of the
        ids x_t, or vectors (B, L, d) (then `classifier_input_dim` is d)."""
        return F.one_hot(x_t, self.vocab_size).float()

    def classifier_input_dim(self, model) -> int:
        """0 when `classifier_input` gives token distributions, else the width of its vectors."""
        return 0

    def classifier_guided(self, model, out: Prediction, grad: torch.Tensor, t: torch.Tensor) -> Prediction:
        """The prediction `out` moved by grad = scale * d log p(c | input) / d input (shaped like `classifier_input`).
        x0 logits (B, L, V): first-order re-weighting, l_iv += grad_iv (-inf entries stay -inf)."""
        return Prediction(out.logits + grad, out.x0)

