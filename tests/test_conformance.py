"""The conformance suite every back-end and every sampler runs: shapes, dtypes, save/load, seeded determinism,
no [MASK] after the last step, infilling keeps the given tokens, and the bound is >= the exact NLL. A variable-length
back-end (edit) starts unconditional samples from a span of unknown length instead of [MASK]s and has no fixed
blocks, so the semi-autoregressive check skips it."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from textdiff import checkpoint as ckpt
from textdiff.config import BackendConfig, DataConfig, ModelConfig, Recipe, SampleConfig
from textdiff.models import build_model
from textdiff.noising import BACKENDS, get_backend
from textdiff.noising.base import Batch, SpecialTokens
from textdiff.sampling import SAMPLERS

SPECIAL = SpecialTokens(pad=0, mask=1, bos=2, eos=3, unk=4, sep=5)
V, L, B = 24, 10, 4
BACKEND_NAMES = sorted(BACKENDS)
PAIRS = [(b, s) for b in BACKEND_NAMES for s in BACKENDS[b].samplers]


def make(backend_name: str, seed: int = 0, **backend_kw):
    recipe = Recipe(data=DataConfig(path="unused.jsonl", max_length=L),
                    model=ModelConfig(n_layer=2, n_embd=32, n_head=2), backend=BackendConfig(name=backend_name, **backend_kw))
    torch.manual_seed(seed)
    model = build_model(recipe, V, L).eval()
    return model, get_backend(recipe.backend, SPECIAL, V)


def batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, V, (B, L), generator=g)
    keep = torch.ones_like(ids, dtype=torch.bool)
    keep[0, -3:] = False  # a padded tail
    return Batch(ids, keep)


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_loss_is_a_finite_float32_scalar_with_gradients(name):
    model, backend = make(name)
    out = backend.loss(model.train(), batch(), torch.Generator().manual_seed(0))
    assert out.loss.shape == () and out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p is not model.pos)


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_loss_under_bf16_autocast_stays_float32(name):
    model, backend = make(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = backend.loss(model, batch(), torch.Generator().manual_seed(0))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_loss_and_bound_are_seeded(name):
    model, backend = make(name)
    a = backend.loss(model, batch(), torch.Generator().manual_seed(7)).loss
    b = backend.loss(model, batch(), torch.Generator().manual_seed(7)).loss
    assert torch.equal(a, b)
    if not backend.has_bound:
        pytest.skip(f"the {name} back-end has no likelihood bound")
    x = backend.bound(model, batch(), 3, torch.Generator().manual_seed(7))
    y = backend.bound(model, batch(), 3, torch.Generator().manual_seed(7))
    assert torch.equal(x.nll, y.nll)


@pytest.mark.parametrize("name", [n for n in BACKEND_NAMES if BACKENDS[n].has_bound])
def test_bound_shapes_and_token_counts(name):
    model, backend = make(name)
    b = batch()
    out = backend.bound(model, b, 4, torch.Generator().manual_seed(0))
    assert out.nll.shape == out.mc_var.shape == out.n_tokens.shape == (B,)
    assert (out.nll >= 0).all() and (out.mc_var >= 0).all()
    expected = b.loss_mask[:, 1:].sum(1) if backend.causal else b.loss_mask.sum(1)
    assert torch.equal(out.n_tokens, expected)
    assert out.exact == backend.causal


@pytest.mark.parametrize("name", [n for n in BACKEND_NAMES if not BACKENDS[n].has_bound])
def test_a_backend_without_a_bound_says_so(name):
    model, backend = make(name)
    with pytest.raises(NotImplementedError):
        backend.bound(model, batch(), 1, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_save_load_round_trip(name, tmp_path):
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


def self_conditioned(name: str):
    """A one-layer self-conditioned model of back-end `name` (time-conditioned unless masked) and its back-end."""
    recipe = Recipe(data=DataConfig(path="unused.jsonl", max_length=L), backend=BackendConfig(name=name),
                    model=ModelConfig(n_layer=1, n_embd=32, n_head=2, time_conditioning=name != "masked",
                                      self_conditioning=True))
    return build_model(recipe, V, L), get_backend(recipe.backend, SPECIAL, V)


@pytest.mark.parametrize("name", ["masked", "simplex", "uniform"])
def test_self_conditioned_training_reaches_the_self_conditioning_input(name):
    model, backend = self_conditioned(name)
    torch.nn.init.normal_(model.self_cond.weight)  # zero-initialised: make the second pass depend on the first
    grads = []
    for seed in range(6):
        model.zero_grad()
        backend.loss(model, batch(), torch.Generator().manual_seed(seed)).loss.backward()
        grads.append(model.self_cond.weight.grad is not None and bool(model.self_cond.weight.grad.abs().sum() > 0))
    assert any(grads) and not all(grads)  # about half of the steps take the self-conditioning pass


@pytest.mark.parametrize("name,sampler", [("masked", "ancestral"), ("masked", "confidence"),
                                          ("uniform", "uniform_ancestral")])
def test_greedy_sampling_feeds_the_models_own_distribution_back_as_self_conditioning(name, sampler):
    """Training feeds back softmax(x0 logits); greedy sampling must too, not its one-hot draws."""
    torch.manual_seed(0)
    model, backend = self_conditioned(name)
    model.eval()
    fed, logits_of = [], backend.x0_logits

    def spy(m, x, t, x0_prev=None):
        out = logits_of(m, x, t, x0_prev)
        fed.append((x0_prev, torch.softmax(out.float(), -1)))
        return out

    backend.x0_logits = spy
    opts = SampleConfig(sampler=sampler, steps=4, temperature=0.0)
    SAMPLERS[sampler](model, backend, backend.prior((B, L)), opts, torch.Generator().manual_seed(0))
    assert fed[0][0] is None and len(fed) > 1
    for (_, produced), (prev, _) in zip(fed, fed[1:]):
        assert torch.allclose(prev, produced)


def _start(backend, infill: bool) -> torch.Tensor:
    x = backend.prior((B, L))
    if infill:
        x = torch.full((B, L), SPECIAL.mask)  # holes of a fixed length, [MASK] per token, on every back-end
        x[:, :3] = torch.tensor([7, 8, 9])  # a given prefix (every sampler supports prefixes)
        if not backend.causal:
            x[:, 6] = 10  # and a given token in the middle
    return x


@pytest.mark.parametrize("name,sampler", PAIRS)
@pytest.mark.parametrize("infill", [False, True])
def test_sampler_fills_every_mask_and_keeps_given_tokens(name, sampler, infill):
    model, backend = make(name)
    x = _start(backend, infill)
    calls = []
    opts = SampleConfig(sampler=sampler, steps=4)
    out = SAMPLERS[sampler](model, backend, x.clone(), opts, torch.Generator().manual_seed(0),
                            lambda i, xs, p: calls.append(i))
    assert out.shape == (B, L) and out.dtype == torch.long
    assert not (out == SPECIAL.mask).any()
    given = ~torch.isin(x, torch.tensor([SPECIAL.mask, *backend.open_hole(2)]))  # a hole's own ids are not given
    assert torch.equal(out[given], x[given])
    assert calls and calls == sorted(calls)


@pytest.mark.parametrize("name,sampler", PAIRS)
def test_sampler_is_seeded(name, sampler):
    model, backend = make(name)
    opts = SampleConfig(sampler=sampler, steps=5, top_p=0.9, temperature=0.8)
    a = SAMPLERS[sampler](model, backend, backend.prior((B, L)), opts, torch.Generator().manual_seed(3))
    b = SAMPLERS[sampler](model, backend, backend.prior((B, L)), opts, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name,sampler", [p for p in PAIRS
                                          if not (BACKENDS[p[0]].causal or BACKENDS[p[0]].variable_length)])
@pytest.mark.parametrize("block_size", [0, 3])
def test_semi_autoregressive_blocks_reveal_left_to_right(name, sampler, block_size):
    model, backend = make(name)
    order = []

    def record(i, xs, p):
        order.append((xs != SPECIAL.mask).sum(0).clone())  # (L,) revealed count per position

    opts = SampleConfig(sampler=sampler, steps=8, block_size=block_size)
    out = SAMPLERS[sampler](model, backend, backend.prior((B, L)), opts, torch.Generator().manual_seed(0), record)
    assert not (out == SPECIAL.mask).any()
    if block_size:
        first_done = [next(i for i, c in enumerate(order) if c[pos] == B) for pos in range(L)]
        blocks_done = [max(first_done[lo:lo + block_size]) for lo in range(0, L, block_size)]
        assert blocks_done == sorted(blocks_done)


@pytest.mark.parametrize("name,sampler", [p for p in PAIRS
                                          if not (BACKENDS[p[0]].causal or BACKENDS[p[0]].variable_length)])
def test_blocks_cover_the_holes_only(name, sampler):
    """A given prefix (a seq2seq source) takes no block: one step per block of the holes fills them all."""
    model, backend = make(name)
    x = backend.prior((B, L))
    x[:, :4] = torch.tensor([7, 8, 9, 5])
    changed, last = [], x.clone()

    def record(i, xs, p):
        nonlocal last
        changed.append(not torch.equal(xs, last))
        last = xs.clone()

    opts = SampleConfig(sampler=sampler, steps=2, block_size=3)  # holes 4..9: blocks (4, 7), (7, 10)
    out = SAMPLERS[sampler](model, backend, x.clone(), opts, torch.Generator().manual_seed(0), record)
    assert not (out == SPECIAL.mask).any() and torch.equal(out[:, :4], x[:, :4])
    assert changed == [True, True]


def test_confidence_threshold_reveals_every_confident_draw_and_its_share_of_the_rest():
    model, backend = make("masked")
    left = {}
    for threshold in (1e-9, 1.0):  # every draw is that probable / none is (a random model is never certain)
        counts = []
        opts = SampleConfig(sampler="confidence", steps=4, temperature=0.0, threshold=threshold)
        SAMPLERS["confidence"](model, backend, backend.prior((B, L)), opts, torch.Generator().manual_seed(0),
                               lambda i, xs, p: counts.append(int((xs == SPECIAL.mask).sum(1).max())))
        left[threshold] = counts
    assert left[1e-9] == [0]  # all in the first step; the model is not called again
    assert left[1.0] == [7, 4, 2, 0]  # ceil(10 / 4), ceil(7 / 3), ceil(4 / 2), 2


def test_greedy_confidence_sampler_with_steps_equal_length_reveals_one_token_per_step():
    model, backend = make("masked")
    counts = []
    opts = SampleConfig(sampler="confidence", steps=L, temperature=0.0)
    SAMPLERS["confidence"](model, backend, backend.prior((B, L)), opts, torch.Generator().manual_seed(0),
                           lambda i, xs, p: counts.append(int((xs == SPECIAL.mask).sum(1)[0])))
    assert counts == list(range(L - 1, -1, -1))


def test_greedy_confidence_sampler_reveals_the_most_probable_position_first():
    """At temperature 0 every draw is a one-hot, so the ranking must come from the model's probabilities, not from
    the (all 1.0) filtered ones: each step reveals the masked position whose argmax is most probable."""
    model, backend = make("masked", seed=3)
    states = [backend.prior((B, L))]
    opts = SampleConfig(sampler="confidence", steps=L, temperature=0.0)
    SAMPLERS["confidence"](model, backend, states[0].clone(), opts, torch.Generator().manual_seed(0),
                           lambda i, xs, p: states.append(xs.clone()))
    for j, (before, after) in enumerate(zip(states, states[1:])):
        t = torch.full((B,), 1.0 - j / L)  # the sampler's time at step j
        probs = torch.softmax(backend.x0_logits(model, before, t).float(), -1)
        best = probs.max(-1).values.masked_fill(before != SPECIAL.mask, -1.0).argmax(1)  # (B,)
        revealed = ((before == SPECIAL.mask) & (after != SPECIAL.mask)).float().argmax(1)
        assert torch.equal(revealed, best)
        assert torch.equal(after[torch.arange(B), revealed], probs.argmax(-1)[torch.arange(B), revealed])


# --- the bound against the exact likelihood on a toy problem ------------------------------------------------------


@torch.no_grad()
def _conditional_logprob(model, backend, x, visible: tuple[int, ...], pos: int) -> float:
    inp = torch.full_like(x, SPECIAL.mask)
    for v in visible:
        inp[v] = x[v]
    logits = backend.x0_logits(model, inp[None], torch.ones(1))[0, pos]
    return float(torch.log_softmax(logits, -1)[x[pos]])


def exact_masked_nll(model, backend, x) -> float:
    """-log p(x) of the masked model's reverse process: tokens are revealed one at a time in a uniformly random
    order (the continuous-time limit), so p(x) is the average over all orders of the product of conditionals."""
    logs = []
    for order in itertools.permutations(range(len(x))):
        logs.append(sum(_conditional_logprob(model, backend, x, order[:i], order[i]) for i in range(len(x))))
    return -(torch.logsumexp(torch.tensor(logs), 0).item() - math.log(len(logs)))


def exact_masked_elbo(model, backend, x) -> float:
    """The NELBO in closed form: sum over mask sets M of (1/|M|) / C(n, |M|) * sum_{i in M} -log p(x_i | x_notM)."""
    n, total = len(x), 0.0
    for k in range(1, n + 1):
        for masked in itertools.combinations(range(n), k):
            visible = tuple(i for i in range(n) if i not in masked)
            ce = -sum(_conditional_logprob(model, backend, x, visible, i) for i in masked)
            total += ce / k / math.comb(n, k)
    return total


@pytest.mark.parametrize("mask_sampling", ["count", "time"])
def test_masked_bound_is_at_least_the_exact_nll_and_estimates_the_closed_form_elbo(mask_sampling):
    model, backend = make("masked", seed=3, mask_sampling=mask_sampling)
    for seq in ([7, 12, 9], [20, 20, 6]):
        x = torch.tensor(seq)
        nll, elbo = exact_masked_nll(model, backend, x), exact_masked_elbo(model, backend, x)
        assert elbo >= nll - 1e-6
        b = Batch(x[None].repeat(64, 1), torch.ones(64, 3, dtype=torch.bool))
        out = backend.bound(model, b, 64, torch.Generator().manual_seed(0))
        estimate = out.nll.mean().item()
        se = math.sqrt(out.mc_var.mean().item() / 64)
        assert abs(estimate - elbo) < 5 * se + 1e-3, (estimate, elbo, se)
        assert estimate >= nll - 5 * se
