"""Block diffusion (BD3-LM): the two-stream training forward, the block-wise bound and its K = 1 identity with the
exact autoregressive likelihood of the same network, and the recipe checks."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import SPECIAL, B, L, batch, make
from textdiff.errors import TextdiffError
from textdiff.sampling.cached import Cached, write


def block_model(name="masked", K=2, **model):
    """A tiny block model; adaLN-zero's gates are drawn at random, so that every position's output reads the others."""
    time = name != "masked"
    net, backend = make(name, model={"block_size": K, "time_conditioning": time, **model},
                        **({"mask_sampling": "count"} if name == "masked" else {}))
    torch.manual_seed(1)
    for n, p in net.named_parameters():
        if "ada" in n:
            torch.nn.init.normal_(p, std=0.1)
    return net, backend


@torch.no_grad()
def test_with_blocks_of_the_whole_length_the_two_streams_are_the_bidirectional_model():
    """K = L: the noisy stream's block sees itself only, so the model is today's bidirectional denoiser."""
    model, _ = block_model(K=L)
    x = batch().ids.masked_fill(torch.rand(B, L, generator=torch.Generator().manual_seed(1)) < 0.5, SPECIAL.mask)
    assert torch.allclose(model(x, context=batch().ids), model(x), atol=1e-5)


@pytest.mark.parametrize("name", ["masked", "uniform"])
@torch.no_grad()
def test_the_noisy_stream_sees_its_own_block_and_the_clean_blocks_before_it(name):
    """Block 2's output does not change with the noisy tokens of other blocks or the clean tokens after it."""
    model, _ = block_model(name)
    x0, t = batch().ids, torch.full((B,), 0.5)
    x_t = x0.clone()
    x_t[:, 4:6] = SPECIAL.mask
    base = model(x_t, t, context=x0)[:, 4:6]
    other_noise = x_t.clone()
    other_noise[:, [0, 1, 7]] = 9  # noisy tokens of blocks 0 and 3
    later_clean = x0.clone()
    later_clean[:, 6:] = 11  # clean tokens of the blocks after
    assert torch.allclose(model(other_noise, t, context=x0)[:, 4:6], base, atol=1e-5)
    assert torch.allclose(model(x_t, t, context=later_clean)[:, 4:6], base, atol=1e-5)
    earlier_clean = x0.clone()
    earlier_clean[:, 0] = 11
    assert not torch.allclose(model(x_t, t, context=earlier_clean)[:, 4:6], base, atol=1e-5)


@pytest.mark.parametrize("name", ["masked", "uniform"])
@torch.no_grad()
def test_the_cache_gives_the_uncached_prediction(name):
    """A block's prediction over the cache of the clean blocks before it (written at t = 0) equals the prediction of
    the whole sequence under the block-causal mask with those blocks clean at t = 0."""
    model, backend = block_model(name)
    x0 = batch().ids
    state = x0.clone()
    state[:, 4:] = SPECIAL.mask
    t = torch.where(torch.arange(L) < 4, 0.0, 0.7).expand(B, L)
    full = backend.predict(model, state, t).logits[:, 4:6]
    cache = model.new_cache(B, L)
    write(model, cache, state[:, :4], 0)
    cached = backend.predict(Cached(model, cache, 4), state[:, 4:6], torch.full((B,), 0.7)).logits
    assert torch.allclose(cached, full, atol=1e-4)


@torch.no_grad()
def test_at_one_token_per_block_the_masked_bound_is_the_exact_autoregressive_nll_of_the_same_network():
    model, backend = block_model(K=1)
    b = batch()
    bound = backend.bound(model, b, 1, torch.Generator().manual_seed(0))
    nll = torch.zeros(B)
    cache = model.new_cache(B, L)
    for i in range(L):  # -log p(x_i | x_<i): the token as [MASK] over the cache of the clean prefix
        logits = backend.predict(Cached(model, cache, i), torch.full((B, 1), SPECIAL.mask), torch.ones(B)).logits
        nll -= torch.log_softmax(logits[:, 0], -1).gather(1, b.ids[:, i:i + 1])[:, 0] * b.loss_mask[:, i]
        write(model, cache, b.ids[:, i:i + 1], i)
    assert torch.allclose(bound.nll, nll, atol=1e-4) and torch.equal(bound.n_tokens, b.loss_mask.sum(1))
    again = backend.bound(model, b, 3, torch.Generator().manual_seed(5))  # nothing left to draw: no variance
    assert torch.allclose(again.nll, bound.nll, atol=1e-4) and torch.allclose(again.mc_var, torch.zeros(B), atol=1e-6)


@pytest.mark.parametrize("name", ["masked", "uniform"])
def test_a_block_model_trains_with_self_conditioning_and_bounds_above_zero(name):
    model, backend = block_model(name, self_conditioning=True)
    torch.nn.init.normal_(model.self_cond.weight)
    out = backend.loss(model.train(), batch(), torch.Generator().manual_seed(1))
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.self_cond.weight.grad is not None
    bound = backend.bound(model.eval(), batch(), 2, torch.Generator().manual_seed(0))
    assert (bound.nll > 0).all() and torch.isfinite(bound.nll).all()


@pytest.mark.parametrize("raw, needle", [
    ({"model": {"block_size": 3}}, "must divide data.max_length"),
    ({"model": {"block_size": 20}}, "must divide data.max_length"),
    ({"model": {"block_size": 2}, "backend": {"name": "embedding"}}, "block diffusion is for the back-ends"),
    ({"model": {"block_size": 2}, "backend": {"name": "ar"}}, "block diffusion is for the back-ends"),
    ({"model": {"block_size": -2}}, "model.block_size=-2"),
])
def test_bad_block_recipes_are_refused_in_one_line(raw, needle):
    from textdiff.config import recipe_from_dict

    recipe = {"data": {"path": "x.jsonl", "max_length": 10}, **raw}
    with pytest.raises(TextdiffError, match=needle) as info:
        recipe_from_dict(recipe)
    assert "\n" not in str(info.value)

