"""Sampling a block model block by block over its KV cache, and Fast-dLLM's approximate caches: the exact cache
changes nothing it should not (cached = uncached token for token at temperature 0, a batch of mixed lengths), rows
of different prompts batch as they sample alone, [EOS] ends a row, and the bad options are refused in one line."""

from __future__ import annotations

import pytest
import torch

from tests.noising.test_blocks import block_model
from tests.tiny import SPECIAL, B, L, make, sample
from textdiff.registry import SAMPLERS


def mixed_prompts() -> torch.Tensor:
    """Four rows: no prompt, and prompts of 1, 3 and 6 tokens (ending inside a block, at its edge, or later)."""
    x = torch.full((B, L), SPECIAL.mask)
    for row, n in enumerate((0, 1, 3, 6)):
        x[row, :n] = torch.arange(7, 7 + n)
    return x


GREEDY = [("masked", "confidence", {}), ("masked", "confidence", {"threshold": 0.2}),
          ("masked", "confidence", {"remasking": "random"}), ("masked", "confidence", {"remasking": "entropy"}),
          ("masked", "confidence", {"remasking": "dilated"}),
          ("masked", "ancestral", {})]
"""At temperature 0 the tokens are greedy; random remasking and the ancestral step still draw which positions to
reveal, so both paths must use the generator alike (each block over its own columns)."""


def time_conditioned_block_model(K: int):
    """A masked block model with time conditioning (t per position: 0 on the clean blocks), its gates and time
    embedding drawn at random and large enough that a clean block written at the wrong time changes the tokens."""
    model, backend = make("masked", model={"block_size": K, "time_conditioning": True}, mask_sampling="time")
    torch.manual_seed(1)
    for n, p in model.named_parameters():
        if "ada" in n or "time_mlp" in n:
            torch.nn.init.normal_(p, std=0.1 if "ada" in n else 0.3)
    return model, backend


@pytest.mark.parametrize("name,sampler,opts", GREEDY)
@pytest.mark.parametrize("K", [2, 5])
@pytest.mark.parametrize("variant", ["plain", "timed", "self_conditioned"])
def test_the_exact_cache_gives_the_uncached_tokens_at_temperature_0(name, sampler, opts, K, variant):
    model, backend = (time_conditioned_block_model(K) if variant == "timed" else
                      block_model(name, K=K, self_conditioning=variant == "self_conditioned"))
    if variant == "self_conditioned":  # off its zero initialisation, so that the feedback changes the tokens
        torch.manual_seed(2)
        torch.nn.init.normal_(model.self_cond.weight, std=0.3)
    x = mixed_prompts()
    cached = sample(sampler, model, backend, x.clone(), steps=2, temperature=0.0, **opts)
    uncached = sample(sampler, model, backend, x.clone(), steps=2, temperature=0.0, cache="none", **opts)
    assert torch.equal(cached, uncached)
    assert not (cached == SPECIAL.mask).any() and torch.equal(cached[x != SPECIAL.mask], x[x != SPECIAL.mask])


@pytest.mark.parametrize("eos_stop", [False, True])
def test_rows_of_different_prompts_batch_as_they_sample_alone(eos_stop):
    model, backend = block_model(K=2)
    x = mixed_prompts()
    together = sample("confidence", model, backend, x.clone(), steps=2, temperature=0.0, eos_stop=eos_stop)
    alone = torch.cat([sample("confidence", model, backend, row[None].clone(), steps=2, temperature=0.0,
                              eos_stop=eos_stop) for row in x])
    assert torch.equal(together, alone)


def test_a_row_ends_at_its_first_generated_eos_and_the_rest_is_padding(monkeypatch):
    """Position 3 draws [EOS] for sure: with eos_stop its row is [PAD] after it (the later blocks never sampled);
    a given [EOS] (row 3's prompt) is no end."""
    model, backend = block_model(K=2)
    predict, calls = backend.predict, []

    def eos_at_3(m, x_t, t, x0_prev=None):
        pred = predict(m, x_t, t, x0_prev)
        calls.append(x_t.shape[1])
        if m.start == 2:  # the block of positions 2 and 3
            pred.logits[:, 1, SPECIAL.eos] = 1e4
        return pred

    monkeypatch.setattr(backend, "predict", eos_at_3)
    x = mixed_prompts()
    x[3, 1] = SPECIAL.eos
    out = sample("confidence", model, backend, x.clone(), steps=2, temperature=0.0, eos_stop=True)
    assert (out[:3, 3] == SPECIAL.eos).all() and (out[:3, 4:] == SPECIAL.pad).all()
    assert (out[3, 6:] != SPECIAL.pad).all()  # its [EOS] is given, at 1; position 3 is given too: it goes on
    assert len(calls) <= 2 + 2 + 2 * 3  # rows 0-2 stop after block 1: the batch steps on for row 3 only

@pytest.mark.parametrize("sampler", ["ancestral", "confidence", "uniform_ancestral"])
def test_block_models_pass_the_sampler_checks(sampler):
    name = "uniform" if sampler == "uniform_ancestral" else "masked"
    model, backend = block_model(name, K=2)
    x = mixed_prompts()
    calls = []
    out = sample(sampler, model, backend, x.clone(), steps=2, callback=lambda i, ids, p: calls.append(i))
    again = sample(sampler, model, backend, x.clone(), steps=2)
    assert torch.equal(out, again) and not (out == SPECIAL.mask).any()
    assert torch.equal(out[x != SPECIAL.mask], x[x != SPECIAL.mask]) and calls == sorted(calls) and calls


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("name,sampler", [("masked", "confidence"), ("uniform", "uniform_ancestral"),
                                          ("embedding", "ddim"), ("simplex", "simplex")])
def test_fast_dllm_caches_fill_every_hole_and_keep_the_given_tokens(name, sampler, mode):
    model, backend = make(name)
    x = mixed_prompts()
    out = sample(sampler, model, backend, x.clone(), steps=4, block_size=3, cache=mode)
    assert not (out == SPECIAL.mask).any() and torch.equal(out[x != SPECIAL.mask], x[x != SPECIAL.mask])


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_one_step_per_block_under_an_approximate_cache_is_exact(mode):
    """A block's first step is computed over the whole sequence, so with one step per block nothing is approximated."""
    model, backend = make("masked")
    x = mixed_prompts()
    steps = len(range(0, L, 3))  # the holes of the no-prompt row take 4 blocks of 3
    plain = sample("confidence", model, backend, x.clone(), steps=steps, block_size=3, temperature=0.0)
    cached = sample("confidence", model, backend, x.clone(), steps=steps, block_size=3, temperature=0.0, cache=mode)
    assert torch.equal(plain, cached)


def test_every_step_rule_takes_the_cache_options():
    for name, sampler in SAMPLERS.items():
        if hasattr(sampler, "rule"):
            assert {"cache", "eos_stop"} <= set(sampler.options), name


@pytest.fixture(scope="module")
def block_run(tmp_path_factory, corpus):
    from tests.conftest import _train

    return _train(corpus, tmp_path_factory.mktemp("runs") / "block", "masked", 30,
                  {"model": {"block_size": 4}, "sample": {"sampler": "confidence", "steps": 2}})


def test_a_block_run_trains_samples_infills_and_bounds_through_the_cli(block_run, capsys):
    from textdiff.cli import main

    assert main(["sample", str(block_run), "-n", "3", "--json", "--eos-stop"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    assert main(["infill", str(block_run), "the old [MASK:5]"]) == 0
    assert capsys.readouterr().out.split()[:2] == ["the", "old"]
    assert main(["eval", str(block_run), "--metrics", "ppl", "--draws", "2", "--max-sequences", "8"]) == 0
    assert "ELBO bound" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["sample", "RUN", "--block-size", "3"], "trained with blocks of 4"),
    (["sample", "RUN", "--cache", "dual"], "has its exact cache"),
    (["sample", "RUN", "--cache", "sideways"], "--cache='sideways' is not allowed"),
    (["sample", "RUN", "--steps", "5"], "more than the 4 tokens to generate in a block"),
    (["infill", "RUN", "the [MASK:2] sees the river ."], "sees only the text before a hole"),
])
def test_bad_options_on_a_block_run_are_refused_in_one_line(block_run, capsys, argv, needle):
    from textdiff.cli import main

    assert main([str(block_run) if a == "RUN" else a for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_fast_dllm_options_are_refused_where_they_cannot_work(masked_run, ar_run, capsys):
    from textdiff.cli import main

    for argv, needle in ((["sample", str(masked_run), "--cache", "prefix"], "needs --block-size > 0"),
                         (["sample", str(ar_run), "--cache", "dual"], "not of 'ar'")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err


def test_model_calls_are_the_block_steps_alone_the_writes_ride_on_the_next_blocks_first_step():
    """5 blocks of 2, 2 steps each, no prompt: 10 model calls, the head at every one; each finished block is written
    by the next block's first call (the cached-equals-uncached tests check that this is exact)."""
    from textdiff.evaluation.genppl import counting_forwards

    model, backend = block_model(K=2)
    heads = []
    hook = model.head.register_forward_hook(lambda *_: heads.append(1))
    with counting_forwards(model) as nfe:
        sample("confidence", model, backend, torch.full((B, L), SPECIAL.mask), steps=2, temperature=0.0)
    hook.remove()
    assert nfe[0] == 5 * 2 and len(heads) == 5 * 2


def test_a_prompt_of_whole_blocks_is_written_by_the_first_generated_blocks_call():
    """A 6-token prompt over blocks of 2: blocks 0-2 take no step; they are written (one on its own, the last with
    block 3's first step), and the text equals the uncached loop's at temperature 0."""
    from textdiff.evaluation.genppl import counting_forwards

    model, backend = block_model(K=2)
    x = torch.full((1, L), SPECIAL.mask)
    x[0, :6] = torch.arange(7, 13)
    with counting_forwards(model) as nfe:
        out = sample("confidence", model, backend, x.clone(), steps=2, temperature=0.0)
    assert nfe[0] == 2 + 2 * 2  # writes of blocks 0 and 1, then 2 blocks x 2 steps
    assert torch.equal(out, sample("confidence", model, backend, x.clone(), steps=2, temperature=0.0, cache="none"))


@pytest.mark.parametrize("sampler,opts", [("ancestral", {}), ("confidence", {}), ("confidence", {"remasking": "random"})])
def test_eos_stop_ends_the_same_rows_with_and_without_the_cache(sampler, opts):
    """At temperature 3 rows draw [EOS] early; ended rows take no more draws in either path (the ancestral step
    draws only the positions it reveals), so the two stay token for token equal."""
    model, backend = block_model(K=2)
    x = mixed_prompts()
    outs = [sample(sampler, model, backend, x.clone(), seed=seed, steps=2, temperature=3.0, eos_stop=True,
                   cache=cache, **opts) for seed in range(4) for cache in ("auto", "none")]
    assert all(torch.equal(a, b) for a, b in zip(outs[::2], outs[1::2]))
    assert any((o == SPECIAL.pad).any() for o in outs)  # some row did end
