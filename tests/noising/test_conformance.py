"""The conformance suite every registered back-end runs: the loss is a finite float32 scalar with gradients (also
under bf16 autocast), loss and bound are seeded, the bound's shapes and token counts, save/load round trips,
self-conditioning reaches its input (or the recipe switch is refused), and the maths of the forward process:
`corrupt` at t matches the schedule's marginal, the sampler's start at t = 1 matches `corrupt` at t = 1, and a
reverse step to s = 0 gives clean tokens.

`BACKEND_CHECKS` lists the checks as functions of a back-end name, so a back-end registered inside a test (see
tests/test_adding_a_backend.py) runs the same suite; `MARGINALS` holds each back-end's statistical check of its own
forward process, and a test makes sure every registered back-end has one.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.tiny import B, BACKEND_NAMES, L, SPECIAL, V, batch, make, self_conditioned
from textdiff import checkpoint as ckpt
from textdiff.errors import TextdiffError
from textdiff.noising import BACKENDS
from textdiff.noising.base import real_token_mask

DIFFUSION = [n for n in BACKEND_NAMES if not BACKENDS[n].causal]


def check_loss_is_a_finite_float32_scalar_with_gradients(name):
    model, backend = make(name)
    out = backend.loss(model.train(), batch(), torch.Generator().manual_seed(0))
    assert out.loss.shape == () and out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p is not model.pos)


def check_loss_under_bf16_autocast_stays_float32(name):
    model, backend = make(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = backend.loss(model, batch(), torch.Generator().manual_seed(0))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)


def check_loss_and_bound_are_seeded(name):
    model, backend = make(name)
    a = backend.loss(model, batch(), torch.Generator().manual_seed(7)).loss
    b = backend.loss(model, batch(), torch.Generator().manual_seed(7)).loss
    assert torch.equal(a, b)
    if backend.has_bound:
        x = backend.bound(model, batch(), 3, torch.Generator().manual_seed(7))
        y = backend.bound(model, batch(), 3, torch.Generator().manual_seed(7))
        assert torch.equal(x.nll, y.nll)


def check_bound_shapes_and_token_counts(name):
    model, backend = make(name)
    if not backend.has_bound:
        with pytest.raises(NotImplementedError):
            backend.bound(model, batch(), 1, torch.Generator().manual_seed(0))
        return
    b = batch()
    out = backend.bound(model, b, 4, torch.Generator().manual_seed(0))
    assert out.nll.shape == out.mc_var.shape == out.n_tokens.shape == (B,)
    assert (out.nll >= 0).all() and (out.mc_var >= 0).all()
    expected = b.loss_mask.sum(1)  # like for like: AR predicts the first token too, after an [EOS] start
    assert torch.equal(out.n_tokens, expected)
    assert out.exact == backend.causal


def check_save_load_round_trip(name, tmp_path):
    model, _ = make(name, seed=1)
    ckpt.save_tensors(tmp_path / "model.safetensors", ckpt.model_tensors(model))
    fresh, _ = make(name, seed=2)
    ckpt.load_model_tensors(fresh, ckpt.load_tensors(tmp_path / "model.safetensors"), tmp_path)
    before, after = model.state_dict(), fresh.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    _, backend = make(name)
    loss = [backend.loss(m, batch(), torch.Generator().manual_seed(5)).loss for m in (model, fresh)]
    assert torch.equal(*loss)
    if fresh.tok is not None and fresh.head is not None:
        assert fresh.head.weight.data_ptr() == fresh.tok.weight.data_ptr()  # tying survives loading


def check_self_conditioning_reaches_its_input_or_is_refused(name):
    """A back-end that self-conditions trains the self-conditioning input in about half of the steps; one that does
    not refuses model.self_conditioning in one line naming the switch."""
    if not BACKENDS[name].self_conditioning:
        with pytest.raises((ValueError, TextdiffError), match="self_conditioning"):
            self_conditioned(name)
        return
    model, backend = self_conditioned(name)
    torch.nn.init.normal_(model.self_cond.weight)  # zero-initialised: make the second pass depend on the first
    grads = []
    for seed in range(6):
        model.zero_grad()
        backend.loss(model.train(), batch(), torch.Generator().manual_seed(seed)).loss.backward()
        grads.append(model.self_cond.weight.grad is not None and bool(model.self_cond.weight.grad.abs().sum() > 0))
    assert any(grads) and not all(grads)


# --- the forward process against its schedule ----------------------------------------------------------------------

N = 4000
"""Sequences drawn for each statistical check (seeded, so the checks are deterministic)."""


def _clean_ids(n: int = N, length: int = L) -> torch.Tensor:
    return torch.randint(6, V, (n, length), generator=torch.Generator().manual_seed(11))


def _within(observed: float, expected: float, var: float, n: int, sigmas: float = 5.0):
    """|observed - expected| within `sigmas` standard errors of a mean of n draws of variance var."""
    se = math.sqrt(max(var, 1e-12) / n)
    assert abs(observed - expected) <= sigmas * se + 1e-6, (observed, expected, se)


def masked_marginal(backend, model, t: float):
    """Each token is [MASK] w.p. 1 - alpha(t), else itself."""
    x0 = _clean_ids()
    x_t = backend.corrupt(x0, torch.full((N,), t), torch.Generator().manual_seed(1))
    assert ((x_t == x0) | (x_t == SPECIAL.mask)).all()
    p = 1.0 - float(backend.schedule.alpha(torch.tensor(t)))
    _within(float((x_t == SPECIAL.mask).float().mean()), p, p * (1 - p), x_t.numel())


def uniform_marginal(backend, model, t: float):
    """q(x_t | x0) = alpha onehot(x0) + (1 - alpha) u, u uniform over the real tokens."""
    x0 = _clean_ids()
    x_t = backend.corrupt(x0, torch.full((N,), t), torch.Generator().manual_seed(1))
    a = float(backend.alpha(torch.tensor(t)))
    real = real_token_mask(SPECIAL, V)
    assert real[x_t].all()
    p = a + (1 - a) / int(real.sum())
    _within(float((x_t == x0).float().mean()), p, p * (1 - p), x_t.numel())


def edit_marginal(backend, model, t: float):
    """With the empty prior every column is a data token shown w.p. alpha(t): x_t is a subsequence of x0 whose length
    is Binomial(n, alpha)."""
    bk = type(backend)(BACKENDS["edit"].Options(name="edit", edit_prior="empty"), SPECIAL, V)
    x0 = _clean_ids(n=1000)
    x_t = bk.corrupt(x0, torch.full((len(x0),), t), torch.Generator().manual_seed(1))
    a = float(bk.alpha(torch.tensor(t)))
    lengths = (x_t != SPECIAL.pad).sum(1).float()
    _within(float(lengths.mean()), L * a, L * a * (1 - a), len(x0))
    for row, clean in zip(x_t[:50].tolist(), x0[:50].tolist()):
        it = iter(clean)
        assert all(tok in it for tok in row if tok != SPECIAL.pad)  # a subsequence, in order


def embedding_marginal(backend, model, t: float):
    """z_t = alpha_t e + sigma_t eps: the standardised residual is N(0, 1)."""
    x0 = _clean_ids(n=500)
    model.requires_grad_(False)
    z = backend.corrupt(x0, torch.full((len(x0),), t), torch.Generator().manual_seed(1), model=model)
    a, s = (float(v) for v in model.noise.schedule.alpha_sigma(torch.tensor([t])))
    r = (z - a * model.noise.table()[x0]) / s
    _within(float(r.mean()), 0.0, 1.0, r.numel())
    _within(float((r ** 2).mean()), 1.0, 2.0, r.numel())


def simplex_marginal(backend, model, t: float):
    """x_t = alpha_t s0 + sigma_t k eps: the standardised residual is N(0, 1)."""
    x0 = _clean_ids(n=200)
    x_t = backend.corrupt(x0, torch.full((len(x0),), t), torch.Generator().manual_seed(1))
    a, s = (float(v) for v in backend.schedule.alpha_sigma(torch.tensor([t])))
    r = (x_t - a * backend.simplex(x0)) / (s * backend.k)
    _within(float(r.mean()), 0.0, 1.0, r.numel())
    _within(float((r ** 2).mean()), 1.0, 2.0, r.numel())


MARGINALS = {"masked": masked_marginal, "uniform": uniform_marginal, "edit": edit_marginal,
             "embedding": embedding_marginal, "simplex": simplex_marginal}
"""Each diffusion back-end's check that `corrupt(x0, t)` has its schedule's marginal (the AR baseline corrupts
nothing)."""


def check_corrupt_matches_the_schedules_marginal(name):
    model, backend = make(name)
    for t in (0.1, 0.5, 0.9):
        MARGINALS[name](backend, model, t)


def check_the_start_at_t_1_matches_corrupt_at_t_1(name):
    """The sampler's state at t = 1 from an all-hole input is distributed as corrupt(x0, 1) (for the edit back-end,
    whose state has a length, the lengths agree)."""
    model, backend = make(name)
    x0 = _clean_ids(n=2000)
    model.requires_grad_(False)
    noised = backend.corrupt(x0, torch.ones(len(x0)), torch.Generator().manual_seed(1), model=model)
    start = backend.start(model, backend.prior(x0.shape), torch.Generator().manual_seed(2))
    if backend.variable_length:
        a, b = ((v != SPECIAL.pad).sum(1).float() for v in (noised, backend.tokens(start)))
        _within(float(a.mean()), float(b.mean()), float(a.var() + b.var()), len(x0))
        return
    if noised.dtype == torch.long:
        for tok in range(V):  # the same token frequencies
            pa, pb = float((noised == tok).float().mean()), float((start == tok).float().mean())
            _within(pa, pb, pa * (1 - pa) + pb * (1 - pb) + 1e-9, noised.numel())
        return
    a, b = noised.float(), start.float()
    for stat in (lambda v: v.mean(), lambda v: (v ** 2).mean()):
        _within(float(stat(a)), float(stat(b)), float(stat(a ** 2)) + float(stat(b ** 2)), a.numel(), sigmas=6.0)


def check_a_step_to_s_0_gives_clean_tokens(name):
    """One reverse step from t = 1 straight to s = 0 leaves nothing undecided: no [MASK] anywhere, and the state is
    the clean tokens it shows."""
    model, backend = make(name)
    x = backend.prior((B, L))
    gen = torch.Generator().manual_seed(0)
    state = backend.start(model, x, gen)
    if backend.variable_length:  # a drawn script, its placeholders filled: the step to 0 lands on that x0 exactly
        script = backend.draw_script(*backend.script_logits(model, state.ids, torch.ones(B)), state, 1.0, gen)
        y = backend.placeholders(state, script)
        x0 = torch.where(y == SPECIAL.mask, backend.token_logits(model, y, torch.ones(B)).argmax(-1), y)
        assert torch.equal(backend.apply(state, script, x0, 1.0, 0.0, gen).ids, x0)
        return
    t, s = torch.ones(B), torch.zeros(B)
    pred = backend.predict(model, state, t)
    out = backend.step(pred, torch.softmax(pred.logits, -1), state, t, s, gen)
    assert out.tokens.shape == (B, L) and not (out.tokens == SPECIAL.mask).any()
    assert ((out.tokens >= 0) & (out.tokens < V)).all()
    if out.sample.dtype == torch.long:  # a token state is the tokens it shows
        assert torch.equal(backend.tokens(out.sample), out.tokens)


BACKEND_CHECKS = [check_loss_is_a_finite_float32_scalar_with_gradients, check_loss_under_bf16_autocast_stays_float32,
                  check_loss_and_bound_are_seeded, check_bound_shapes_and_token_counts,
                  check_self_conditioning_reaches_its_input_or_is_refused]
"""Checks every back-end (the AR baseline too) passes; DIFFUSION_CHECKS concern a forward process."""
DIFFUSION_CHECKS = [check_corrupt_matches_the_schedules_marginal, check_the_start_at_t_1_matches_corrupt_at_t_1,
                    check_a_step_to_s_0_gives_clean_tokens]


@pytest.mark.parametrize("check", BACKEND_CHECKS, ids=lambda c: c.__name__[6:])
@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_backend(name, check):
    check(name)


@pytest.mark.parametrize("check", DIFFUSION_CHECKS, ids=lambda c: c.__name__[6:])
@pytest.mark.parametrize("name", DIFFUSION)
def test_forward_process(name, check):
    check(name)


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_save_load_round_trip(name, tmp_path):
    check_save_load_round_trip(name, tmp_path)


def test_every_diffusion_backend_brings_its_marginal_check():
    assert set(DIFFUSION) <= set(MARGINALS)
