"""What the README's "Adding a back-end" promises: one class with its Options and one step rule, registered here
inside the test, pass the same conformance suites as the shipped back-ends and train and sample from a recipe
through the `textdiff` command, with nothing else changed."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
import yaml

from tests.conftest import tiny_recipe_dict
from tests.noising import test_conformance as backend_suite
from tests.sampling import test_conformance as sampler_suite
from tests.tiny import SPECIAL
from textdiff.noising.base import Backend, LossOutput, Options, Prediction, StepOutput, per_row
from textdiff.registry import BACKENDS, SAMPLERS
from textdiff.sampling import step_rule


@dataclass(frozen=True)
class PowerOptions(Options):
    """The toy back-end's keys."""

    power: float = 2.0
    """alpha(t) = 1 - t^power: the probability that a token is still clean at time t."""

    def __post_init__(self):
        if not self.power > 0:
            raise ValueError(f"backend.power={self.power!r} must be > 0")


class PowerMasking(Backend):
    """Absorbing-state diffusion with alpha(t) = 1 - t^p, trained by MDLM's weighted cross-entropy."""

    Options = PowerOptions
    default_sampler = "power_reveal"
    samplers = ("power_reveal",)
    has_bound = False
    time_free = True
    self_conditioning = False

    def alpha(self, t):
        return 1.0 - t.double() ** self.cfg.power

    def corrupt(self, x0, t, generator, noise_mask=None, model=None):
        masked = torch.rand(x0.shape, generator=generator, device=x0.device) < per_row(1.0 - self.alpha(t), x0)
        masked = masked if noise_mask is None else masked & noise_mask
        return x0.masked_fill(masked, self.special.mask)

    def predict(self, model, x_t, t, x0_prev=None):
        logits = model(x_t, t, x0_prev=self.cond_input(model, x0_prev)).float()
        logits[..., self.special.mask] = float("-inf")
        known = F.one_hot(x_t, logits.shape[-1]).bool()
        return Prediction(torch.where((x_t != self.special.mask)[..., None], known.float().log(), logits))

    def loss(self, model, batch, generator):
        t = 1e-3 + (1 - 1e-3) * self.uniforms(batch.ids.shape[0], generator, batch.ids.device)
        x_t = self.corrupt(batch.ids, t, generator, batch.loss_mask)
        masked = x_t == self.special.mask
        ce = F.cross_entropy(self.predict(model, x_t, t).logits[masked], batch.ids[masked], reduction="none")
        weight = (self.cfg.power / t).float()[masked.nonzero()[:, 0]]  # -alpha' / (1 - alpha)
        n = int(batch.loss_mask.sum())
        return LossOutput((weight * ce).sum() / max(n, 1), n)

    def step(self, pred, probs, state, t, s, generator):
        a_t, a_s = self.alpha(t), self.alpha(s)
        p = torch.where(s <= 0, torch.ones_like(a_t), (a_s - a_t) / (1 - a_t).clamp_min(1e-12)).float()
        reveal = (state == self.special.mask) & (torch.rand(state.shape, generator=generator) < per_row(p, state))
        drawn = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).view(state.shape)
        sample = torch.where(reveal, drawn, state)
        return StepOutput(sample, sample)

    def settled(self, state, where):
        return not bool((state == self.special.mask)[where].any())


def power_marginal(backend, model, t: float):
    x0 = backend_suite._clean_ids()
    x_t = backend.corrupt(x0, torch.full((len(x0),), t), torch.Generator().manual_seed(1))
    p = t ** backend.cfg.power
    backend_suite._within(float((x_t == SPECIAL.mask).float().mean()), p, p * (1 - p), x_t.numel())


def power_reveal(backend, pred, probs, state, step):
    """The back-end's own reverse step."""
    return backend.step(pred, probs, state, step.t, step.s, step.generator)


@pytest.fixture(scope="module")
def registered():
    BACKENDS.register("power")(PowerMasking)
    step_rule("power_reveal")(power_reveal)
    backend_suite.MARGINALS["power"] = power_marginal
    yield "power"
    BACKENDS.unregister("power")
    SAMPLERS.unregister("power_reveal")
    del backend_suite.MARGINALS["power"]


@pytest.mark.parametrize("check", backend_suite.BACKEND_CHECKS + backend_suite.DIFFUSION_CHECKS,
                         ids=lambda c: c.__name__[6:])
def test_the_new_backend_passes_the_backend_suite(registered, check):
    check(registered)


def test_the_new_backend_round_trips(registered, tmp_path):
    backend_suite.check_save_load_round_trip(registered, tmp_path)


@pytest.mark.parametrize("check", sampler_suite.SAMPLER_CHECKS + sampler_suite.BLOCK_CHECKS,
                         ids=lambda c: c.__name__[6:])
def test_its_sampler_passes_the_sampler_suite(registered, check):
    check(registered, "power_reveal")


def test_it_trains_and_samples_from_a_recipe_through_the_cli(registered, corpus, tmp_path, capsys):
    from textdiff.cli import main

    raw = tiny_recipe_dict(corpus, tmp_path / "run", "power")
    raw["backend"]["power"] = 3.0
    raw["sample"]["block_size"] = 8
    (tmp_path / "power.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "power.yaml"), "--no-samples"]) == 0
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "run"), "-n", "2", "--steps", "6", "--json"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert main(["infill", str(tmp_path / "run"), "the old [MASK:2] the [MASK]."]) == 0
    assert capsys.readouterr().out.split()[:2] == ["the", "old"]
    assert main(["sample", str(tmp_path / "run"), "--eta", "0.5"]) == 2  # an option of other samplers: refused
    assert "not of 'power_reveal'" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**raw, "backend": {"name": "power", "power": -1.0}}))
    assert main(["train", str(tmp_path / "bad.yaml")]) == 2
    assert "backend.power=-1.0 must be > 0" in capsys.readouterr().err
