"""No silently ignored option: every declared sampling option and every model / back-end switch, on every back-end,
either changes the output or is refused in one line naming it.

The tables below list a non-default value for each; a test fails when an option or switch is declared that they do
not list, so a new one is covered from the day it is added. "Changes the output": the samples (sampling options),
or the training loss on a fixed batch or the samples (switches), at the same seeds as the defaults."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.tiny import B, BACKEND_NAMES, L, PAIRS, SPECIAL, V, batch, sample
from textdiff.config import DataConfig, ModelConfig, Recipe
from textdiff.errors import TextdiffError
from textdiff.models import build_model
from textdiff.noising import BACKENDS, get_backend, options_for
from textdiff.registry import SAMPLERS
from textdiff.sampling import all_options

SAMPLING = {"temperature": 0.0, "top_k": 2, "top_p": 0.3, "joint_edits": True, "block_size": 3, "cache": "prefix",
            "eos_stop": True, "eta": 1.0, "clamp": True, "threshold": 0.3,
            "remasking": "random"}
"""A non-default value of every sampling option."""
NEEDS = {"cache": {"block_size": 3}, "eos_stop": {"temperature": 50.0}}
"""What an option's value needs beside it (the defaults it is compared with have it too): Fast-dLLM's caches act on
semi-autoregressive blocks; eos_stop on rows that draw [EOS], which a tiny random model rarely does unflattened."""

BACKEND = {"time_sampling": "uniform", "eps": 0.3, "mask_sampling": "time", "edit_prior": "empty", "max_insert": 2,
           "target": "eps", "gamma_min": -4.0, "gamma_max": 4.0, "x0_from": "vector", "output_prior": False,
           "embed_dim": 8, "embed_norm": False, "time_warp": False, "loss": "simple", "ce_weight": 0.25,
           "simplex_k": 3.0, "start_token": False}
"""A non-default value of every back-end key (`schedule`: the back-end's second allowed one)."""
MODEL = {"n_layer": 1, "n_embd": 16, "n_head": 1, "mlp_ratio": 2, "dropout": 0.3, "positions": "learned",
         "tie_embeddings": False, "time_conditioning": True, "self_conditioning": True, "block_size": 5}
"""A non-default value of every switch of textdiff's own transformer."""
ELSEWHERE = {"segments": "seq2seq recipes (tests/test_seq2seq.py)", "aligned_positions": "seq2seq recipes",
             "backbone": "tests/models/test_backbones.py", "pretrained": "a backbone", "shift": "a backbone",
             "anneal_steps": "a backbone", "lora": "a backbone"}
"""Model keys that need a seq2seq recipe or a transformers backbone (refused without one: test_needs_refusal)."""


def _steps(sampler: str) -> dict:
    return {"steps": 4} if SAMPLERS[sampler].takes_steps else {}


def _starts(backend) -> list[torch.Tensor]:
    """Unconditional generation and an infill template (a given prefix, a hole)."""
    x = backend.prior((B, L))
    y = x.clone()
    y[:, 0] = 7
    return [x, y]


def _samples(model, backend, sampler: str, **options) -> list[torch.Tensor]:
    return [sample(sampler, model, backend, x.clone(), seed=seed, **_steps(sampler), **options)
            for x in _starts(backend) for seed in range(3)]


def _tiny(name: str, model: dict | None = None, **backend_kw):
    """The recipe check (ValueError naming the key when refused), then a seeded tiny model and its back-end."""
    recipe = Recipe(data=DataConfig(path="unused.jsonl", max_length=L),
                    model=ModelConfig(**{"n_layer": 2, "n_embd": 32, "n_head": 2, **(model or {})}),
                    backend=options_for(name, **backend_kw))
    torch.manual_seed(0)
    model = build_model(recipe, V, L).eval()
    with torch.no_grad():  # off the zero initialisations (adaLN-zero gates make a fresh block the identity)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, get_backend(recipe.backend, SPECIAL, V)


def test_the_tables_cover_every_option_and_switch():
    assert set(all_options()) == set(SAMPLING)
    keys = {f.name for b in BACKENDS.values() for f in dataclasses.fields(b.Options)} - {"name"}
    assert keys - {"schedule"} == set(BACKEND)
    assert {f.name for f in dataclasses.fields(ModelConfig)} == set(MODEL) | set(ELSEWHERE)


@pytest.mark.parametrize("option", sorted(SAMPLING))
@pytest.mark.parametrize("name,sampler", PAIRS)
def test_a_sampling_option_changes_the_samples_or_is_refused(name, sampler, option):
    model, backend = _tiny(name)
    if option not in SAMPLERS[sampler].options:
        with pytest.raises(ValueError, match=f"takes no option {option}"):
            _samples(model, backend, sampler, **{option: SAMPLING[option]})
        return
    base = NEEDS.get(option, {})
    try:
        changed = _samples(model, backend, sampler, **base, **{option: SAMPLING[option]})
    except ValueError as e:
        assert option in str(e) and "\n" not in str(e)
        return
    assert any(not torch.equal(a, b) for a, b in zip(changed, _samples(model, backend, sampler, **base))), option


def _outputs(model, backend) -> list[torch.Tensor]:
    """The training loss on a fixed batch (train mode, seeded) and the default sampler's samples."""
    torch.manual_seed(1)
    model.train()
    gen = torch.Generator().manual_seed(0)
    backend.loss(model, batch(1), gen)  # a first step (the embedding back-end's time warp fits itself to it)
    loss = backend.loss(model, batch(), gen).loss.detach()
    model.eval()
    return [loss.reshape(1)] + _samples(model, backend, backend.default_sampler)


def _switch(name: str, key: str):
    """(model keys, back-end keys) setting `key` to its table value."""
    if key == "schedule":
        return {}, {"schedule": getattr(BACKENDS[name].Options, "schedules", ("", "cosine"))[1]}
    if key in MODEL:
        return {key: MODEL[key]}, {}
    return {}, {key: BACKEND[key]}


BASES = {"embedding": [{}, {"x0_from": "vector", "target": "eps"}],
         "masked": [{}, {"mask_sampling": "time", "model": {"time_conditioning": True}}]}
"""Where a switch is checked from: the defaults, and for some back-ends a second setting under which other keys
may stop acting (a vector head, a time-conditioned masked model)."""
SWITCHES = [(b, i, k) for b in BACKEND_NAMES for i in range(len(BASES.get(b, [{}])))
            for k in [*MODEL, "schedule", *BACKEND]]


@pytest.mark.parametrize("name,base_no,key", SWITCHES)
def test_a_switch_changes_the_output_or_is_refused(name, base_no, key):
    start = dict(BASES.get(name, [{}])[base_no])
    start_model = start.pop("model", {})
    model_kw, backend_kw = _switch(name, key)
    if key in start or key in start_model:
        return  # the base sets it already
    try:
        model, backend = _tiny(name, {**start_model, **model_kw}, **start, **backend_kw)
    except (ValueError, TypeError, TextdiffError) as e:  # refused (TypeError: not a key of this back-end)
        assert key in str(e) and "\n" not in str(e), str(e)
        return
    base = _outputs(*_tiny(name, start_model, **start))
    try:
        new = _outputs(model, backend)
    except ValueError as e:
        assert key in str(e) and "\n" not in str(e), str(e)
        return
    assert any(a.shape != b.shape or not torch.equal(a, b) for a, b in zip(new, base)), (name, key)


@pytest.mark.parametrize("key", sorted(k for k in ELSEWHERE if k not in ("segments", "aligned_positions", "backbone")))
def test_needs_refusal(key):
    value = {"pretrained": False, "shift": True, "anneal_steps": 5, "lora": {"r": 4}}[key]
    with pytest.raises(ValueError, match=f"model.{key}"):
        ModelConfig(**{key: value})


@pytest.mark.parametrize("call,key,value", [("generate", "mbr", 3), ("generate", "guidance_scale", 1.0),
                                            ("infill", "length", 5), ("infill", "mbr", 2),
                                            ("infill", "guidance_scale", 1.0), ("denoise", "length", 5)])
def test_a_sample_key_a_call_does_not_use_is_refused(masked_run, call, key, value):
    """length is generate's, mbr and guidance_scale translate's (seq2seq): elsewhere they would change nothing."""
    from textdiff.pipeline import TextDiffusionPipeline

    pipe = TextDiffusionPipeline.from_pretrained(masked_run)
    first = {"generate": 1, "infill": "the [MASK] king", "denoise": pipe.backend.prior((1, 8))}[call]
    with pytest.raises(TextdiffError, match=f"{key}={value!r}: {call} does not use it") as e:
        getattr(pipe, call)(first, steps=2, **{key: value})
    assert "\n" not in str(e.value)
