"""The simplex-logit back-end (SSD-LM / TESS): the ±k projection, the Gaussian marginal of the forward process,
the eps parameterisation, and the sampler against an oracle x0 predictor."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import tiny_recipe_dict
from tests.tiny import SPECIAL, B, L, V, batch, make, sample
from textdiff.cli import main
from textdiff.config import recipe_from_dict
from textdiff.data import build_sequences, load_texts
from textdiff.errors import TextdiffError
from textdiff.noising import get_backend, options_for
from textdiff.noising.base import Batch
from textdiff.pipeline import TextDiffusionPipeline
from textdiff.training import train_recipe


def backend(**kw):
    return get_backend(options_for("simplex", **kw), SPECIAL, V)


class Oracle:
    """A stand-in denoiser that knows x0: it ignores its input and returns confident x0 logits (or, given the
    noise, the true eps). `embed_probs` is the identity, so the input is softmax(x_t) itself."""

    def __init__(self, x0: torch.Tensor, eps: torch.Tensor | None = None, self_conditioning: bool = False):
        self.x0, self.eps, self.seen = x0, eps, []
        self.cfg = SimpleNamespace(self_conditioning=self_conditioning, time_conditioning=True)

    def embed_probs(self, probs):
        return probs

    def __call__(self, inputs, t, x0_prev=None, select=None):
        self.seen.append(x0_prev)
        out = self.eps if self.eps is not None else 30.0 * F.one_hot(self.x0, V).float()
        return out if select is None else out[select]


def test_clean_tokens_projected_to_plus_minus_k_decode_back():
    bk, ids = backend(simplex_k=3.0), batch().ids
    s0 = bk.simplex(ids)  # (B, L, V)
    assert s0.shape == (B, L, V) and set(s0.unique().tolist()) == {-3.0, 3.0}
    assert torch.equal(bk.decode(s0), ids)
    assert torch.equal(bk.decode(bk.corrupt(ids, torch.zeros(B), torch.Generator().manual_seed(0))), ids)
    assert torch.equal(bk.decode(ids), ids)  # token ids pass through


def test_decode_never_returns_mask():
    bk = backend()
    logits = torch.zeros(B, L, V)
    logits[..., SPECIAL.mask] = 100.0
    assert not (bk.decode(logits) == SPECIAL.mask).any()


@pytest.mark.parametrize("schedule", ["cosine", "sqrt", "linear"])
def test_corrupt_marginal_is_the_gaussian_around_the_scaled_simplex(schedule):
    bk, k = backend(schedule=schedule, simplex_k=5.0), 5.0
    ids = torch.full((4096, 1), 9)
    t = torch.full((4096,), 0.4)
    x_t = bk.corrupt(ids, t, torch.Generator().manual_seed(0))  # (N, 1, V)
    alpha, sigma = (float(v[0]) for v in bk.schedule.alpha_sigma(t))
    on, off = x_t[:, 0, 9], x_t[:, 0, 10]
    se = sigma * k / math.sqrt(4096)
    assert abs(on.mean() - alpha * k) < 5 * se and abs(off.mean() + alpha * k) < 5 * se
    assert abs(on.std() / (sigma * k) - 1) < 0.05 and abs(off.std() / (sigma * k) - 1) < 0.05
    assert abs(alpha ** 2 + sigma ** 2 - 1) < 1e-5


def test_noise_mask_keeps_other_positions_clean():
    bk, ids = backend(), batch().ids
    keep = torch.zeros(B, L, dtype=torch.bool)
    keep[:, :4] = True
    x_t = bk.corrupt(ids, torch.ones(B), torch.Generator().manual_seed(0), noise_mask=keep)
    assert torch.equal(x_t[:, 4:], bk.simplex(ids)[:, 4:]) and not torch.equal(x_t[:, :4], bk.simplex(ids)[:, :4])


def test_eps_parameterisation_recovers_x0_from_the_true_noise():
    bk, ids = backend(target="eps"), batch().ids
    t = torch.full((B,), 0.5)
    x_t, eps = bk.noise(bk.simplex(ids), t, torch.Generator().manual_seed(0))
    logits = bk.predict(Oracle(ids, eps=eps), x_t, t).logits
    assert torch.allclose(logits[..., 6:], bk.simplex(ids)[..., 6:], atol=1e-3)
    assert torch.equal(logits.argmax(-1), ids) and torch.isinf(logits[..., SPECIAL.mask]).all()


def test_eps_loss_is_zero_for_the_true_noise_and_x0_loss_small_for_the_oracle():
    ids = batch().ids
    b = Batch(ids, torch.ones_like(ids, dtype=torch.bool))
    bk = backend(target="eps")
    gen = torch.Generator().manual_seed(0)  # replay the loss's draws: t first, then eps, from one generator
    _, eps = bk.noise(bk.simplex(ids), bk.uniforms(B, gen), gen)
    assert bk.loss(Oracle(ids, eps=eps), b, torch.Generator().manual_seed(0)).loss < 1e-10
    assert backend().loss(Oracle(ids), b, torch.Generator().manual_seed(0)).loss < 1e-6


SAMPLER_NAMES = ["simplex", "simplex_ddim"]


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
@pytest.mark.parametrize("opts", [{}, {"block_size": 3}, {"top_p": 0.5}, {"temperature": 0.0}, {"top_k": 2},
                                  {"eta": 1.0}])
def test_sampler_with_an_oracle_x0_predictor_returns_x0(sampler, opts):
    bk, ids = backend(), batch().ids
    if "eta" in opts and sampler == "simplex":
        pytest.skip("eta is an option of simplex_ddim only")
    out = sample(sampler, Oracle(ids), bk, bk.prior((B, L)), steps=6, **opts)
    assert torch.equal(out, ids)


def test_ddim_step_with_eta_one_is_the_ddpm_posterior():
    """q(x_s | x_t, x0) for x_t = alpha_t s0 + sigma_t k eps: mean and variance of many draws."""
    bk, k = backend(), 5.0
    ids = torch.full((1, 1), 9)
    s0 = bk.simplex(ids)
    t, s = 0.6, 0.4
    x_t = bk.noise(s0, torch.full((1,), t), torch.Generator().manual_seed(0))[0]
    one_hot = F.one_hot(ids, V).float()
    g = torch.Generator().manual_seed(1)
    tt, ss = torch.tensor([t]), torch.tensor([s])
    draws = torch.cat([bk.ddim(one_hot, x_t, tt, ss, 1.0, g).sample for _ in range(4000)])  # (N, 1, V)
    (a_t, sg_t), (a_s, sg_s) = ((float(a), float(b)) for a, b in (bk.schedule.alpha_sigma(v) for v in (tt, ss)))
    a_ts = a_t / a_s
    var = (sg_t ** 2 - a_ts ** 2 * sg_s ** 2) * sg_s ** 2 / sg_t ** 2  # of x / k
    mean = (a_ts * sg_s ** 2 / sg_t ** 2) * x_t + (a_s * (sg_t ** 2 - a_ts ** 2 * sg_s ** 2) / sg_t ** 2) * s0
    assert torch.allclose(draws.mean(0), mean[0], atol=5 * k * var ** 0.5 / 4000 ** 0.5)
    assert abs(draws.std(0).mean() / (k * var ** 0.5) - 1) < 0.03


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_sampler_infills_with_an_oracle_and_keeps_given_tokens_clean(sampler):
    bk, ids = backend(), batch().ids
    x = bk.prior((B, L))
    x[:, :2] = ids[:, :2]
    seen = []
    out = sample(sampler, Oracle(ids), bk, x, steps=4, callback=lambda i, xs, p: seen.append(xs.clone()))
    assert torch.equal(out, ids) and all(torch.equal(s[:, :2], ids[:, :2]) for s in seen)


def test_sampler_feeds_the_previous_distribution_back_with_self_conditioning():
    bk, ids = backend(), batch().ids
    oracle = Oracle(ids, self_conditioning=True)
    sample("simplex", oracle, bk, bk.prior((B, L)), steps=3)
    assert oracle.seen[0] is None and all(p is not None and p.shape == (B, L, V) for p in oracle.seen[1:])


def test_corrupt_and_loss_are_seeded():
    model, bk = make("simplex")
    ids = batch().ids
    a = bk.corrupt(ids, torch.full((B,), 0.3), torch.Generator().manual_seed(4))
    b = bk.corrupt(ids, torch.full((B,), 0.3), torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert bk.loss(model, batch(), torch.Generator().manual_seed(4)).loss == \
        bk.loss(model, batch(), torch.Generator().manual_seed(4)).loss


def test_v_target_is_refused_with_the_key_named():
    with pytest.raises(TextdiffError, match="backend.target=v"):
        recipe_from_dict({"data": {"path": "x.jsonl"}, "backend": {"name": "simplex", "target": "v"}})


def test_train_sample_infill_and_eval_through_the_cli(write_recipe, tmp_path, capsys):
    """The tiny recipe's settings on the toy corpus: train, sample, infill; eval ppl refuses in one line."""
    recipe = write_recipe("simplex", model={"time_conditioning": True, "self_conditioning": True},
                          sample={"sampler": "simplex", "steps": 8, "num_samples": 2, "infill": "the [MASK:2] the river."})
    assert main(["train", str(recipe), "--set", "train.steps=8"]) == 0
    out = capsys.readouterr().out
    assert "=== 2 samples (simplex" in out and "validation loss" in out
    assert next(ln for ln in out.splitlines() if ln.startswith("-> ")).split()[-2:] == ["the", "river."]
    run = tmp_path / "run-simplex"
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in r for r in rows) and not any("val_nll" in r for r in rows)

    assert main(["sample", str(run), "-n", "2", "--steps", "6", "--block-size", "8", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["infill", str(run), "the old [MASK:2] the [MASK].", "-n", "2", "--top-p", "0.9"]) == 0
    lines = capsys.readouterr().out.splitlines()  # an 8-step model may fill a hole with [EOS] (decoded as nothing)
    assert len(lines) == 2 and all(ln.split()[:3] == [f"[{i}]", "the", "old"] and "the" in ln.split()[3:]
                                    for i, ln in enumerate(lines))

    assert main(["eval", str(run), "--metrics", "ppl"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no likelihood bound" in err and "genppl" in err


def test_the_simplex_model_learns_the_toy_language(corpus, tmp_path):
    """A short run: the validation loss falls far below a uniform guess (log V) and, at low noise, the model reads
    the tokens off its input almost perfectly."""
    raw = tiny_recipe_dict(corpus, tmp_path / "run", "simplex")
    raw["model"]["time_conditioning"] = True
    raw["train"].update(steps=80, eval_every=80, checkpoint_every=80)
    run = train_recipe(recipe_from_dict(raw), progress=False)
    pipe = TextDiffusionPipeline.from_pretrained(run)
    vocab = len(pipe.tokenizer)
    val = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if "val_loss" in ln][-1]
    assert val["val_loss"] < 0.5 * math.log(vocab)
    seqs = build_sequences(pipe.recipe.data, pipe.tokenizer, load_texts(pipe.recipe.data)["validation"])
    ids = seqs.batch(torch.arange(16)).ids
    t = torch.full((16,), 0.1)
    with torch.no_grad():
        logits = pipe.backend.predict(pipe.model, pipe.backend.corrupt(ids, t, torch.Generator().manual_seed(0)), t).logits
    assert F.cross_entropy(logits.flatten(0, 1), ids.flatten()) < 0.2  # 0.03 at 80 steps (seed 0)
