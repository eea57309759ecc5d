"""The Gaussian embedding back-end's analytic properties: the forward kernel, exact parameter conversions, DDIM
with an oracle, the DDPM posterior, the bound's parts, self-conditioning and every schedule / target."""

from __future__ import annotations

import math

import pytest
import torch

from textdiff.noising.embedding import GaussianPrediction, gaussian_logits
from textdiff.noising.base import Batch
from textdiff.schedules import GAUSSIAN_SCHEDULES, get_gaussian_schedule
from tests.tiny import SPECIAL, B, L, V, batch, make, sample


def ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(6, V, (B, L), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(GAUSSIAN_SCHEDULES))
def test_schedules_hit_their_end_points_and_their_derivative_is_exact(name):
    sched = get_gaussian_schedule(name, -10.0, 10.0).double()
    assert sched.gamma(torch.tensor([0.0, 1.0], dtype=torch.float64)).tolist() == pytest.approx([-10.0, 10.0], abs=1e-6)
    t = torch.linspace(0.02, 0.98, 25, dtype=torch.float64, requires_grad=True)
    g = sched.gamma(t)
    (grad,) = torch.autograd.grad(g.sum(), t)
    assert torch.allclose(grad, sched.gamma_prime(t.detach()).double().expand_as(grad), rtol=1e-6)
    assert (grad > 0).all()  # noise only grows
    alpha, sigma = sched.alpha_sigma(t.detach())
    assert torch.allclose(alpha ** 2 + sigma ** 2, torch.ones_like(alpha))  # variance preserving


def test_corruption_at_t_0_is_the_identity_within_sigma_0():
    model, backend = make("embedding")
    x = ids()
    z = backend.corrupt(x, torch.zeros(B), torch.Generator().manual_seed(0), model=model)
    e = model.noise.table()[x]
    sigma0 = math.sqrt(torch.sigmoid(torch.tensor(backend.cfg.gamma_min)).item())
    assert (z - e).abs().max() < 6 * sigma0 and sigma0 < 0.01
    decoded = gaussian_logits(z, 1.0, 1.0, model.noise.table()).argmax(-1)  # nearest embedding
    assert torch.equal(decoded, x)


@pytest.mark.parametrize("t", [0.2, 0.5, 0.9])
def test_the_marginal_of_corrupt_is_q_of_z_t_given_x0(t):
    model, backend = make("embedding")
    x = torch.full((4096, 1), 9)
    z = backend.corrupt(x, torch.full((4096,), t), torch.Generator().manual_seed(1), model=model)[:, 0]  # (N, d)
    alpha, sigma = model.noise.schedule.alpha_sigma(torch.tensor([t]))
    e = model.noise.table()[9]
    se = sigma.item() / math.sqrt(4096)
    assert (z.mean(0) - alpha * e).abs().max() < 5 * se
    assert torch.allclose(z.var(0), torch.full_like(e, sigma.item() ** 2), rtol=0.12)


def test_noise_mask_leaves_the_other_positions_clean():
    model, backend = make("embedding")
    x, keep = ids(), torch.zeros(B, L, dtype=torch.bool)
    keep[:, :4] = True
    z = backend.corrupt(x, torch.full((B,), 0.7), torch.Generator().manual_seed(0), noise_mask=keep, model=model)
    e = model.noise.table()[x]
    assert torch.equal(z[~keep], e[~keep]) and not torch.allclose(z[keep], e[keep])


@pytest.mark.parametrize("target", ["x0", "eps", "v"])
def test_eps_x0_v_conversions_round_trip(target):
    _, backend = make("embedding", target=target, x0_from="vector")
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(B, L, 8, generator=g), torch.randn(B, L, 8, generator=g)
    t = torch.rand(B, generator=g)
    alpha, sigma = get_gaussian_schedule("cosine", -10.0, 10.0).alpha_sigma(t)
    z = alpha[:, None, None] * x0 + sigma[:, None, None] * eps
    truth = {"x0": x0, "eps": eps, "v": alpha[:, None, None] * eps - sigma[:, None, None] * x0}[target]
    assert torch.allclose(backend.from_x0(x0, z, alpha, sigma), truth, atol=1e-4)
    assert torch.allclose(backend.to_x0(truth, z, alpha, sigma), x0, atol=1e-3)
    out = torch.randn(B, L, 8, generator=g)
    assert torch.allclose(backend.from_x0(backend.to_x0(out, z, alpha, sigma), z, alpha, sigma), out, atol=1e-3)


def _oracle(backend, model, truth):
    table = model.noise.table()

    def predict(model_, z, t, x0_prev=None):
        x0 = table[truth]
        return GaussianPrediction(backend.rounding_logits(x0, table), x0, model.noise.schedule, table)
    return predict


def ddim_step(model, backend, x0, z, t: float, s: float, eta: float = 0.0, generator=None):
    """One DDIM step of the back-end toward the x0 estimate x0 (B, L, d), times as numbers."""
    pred = GaussianPrediction(None, x0, model.noise.schedule, model.noise.table())
    tt, ss = torch.full((z.shape[0],), t), torch.full((z.shape[0],), s)
    return backend.ddim(pred, z, tt, ss, eta, generator)


@pytest.mark.parametrize("steps", [1, 4, 50])
def test_ddim_with_an_oracle_x0_predictor_recovers_x0_exactly(steps, monkeypatch):
    model, backend = make("embedding")
    truth = ids(3)
    monkeypatch.setattr(backend, "predict", _oracle(backend, model, truth))
    states = []
    out = sample("ddim", model, backend, backend.prior((B, L)), steps=steps, temperature=0.0,
                 callback=lambda i, x, p: states.append(x))
    assert torch.equal(out, truth)
    # deterministic DDIM with the true x0 follows q's own path: z_s = alpha_s x0 + sigma_s eps for one fixed eps
    e = model.noise.table()[truth]
    z1 = backend.start(model, backend.prior((B, L)), torch.Generator().manual_seed(0))
    z = z1
    for j in range(steps):
        t, s = 1 - j / steps, 1 - (j + 1) / steps
        z = ddim_step(model, backend, e, z, t, s)
        a_s, s_s = model.noise.schedule.alpha_sigma(torch.tensor([s]))
        a_1, s_1 = model.noise.schedule.alpha_sigma(torch.tensor([1.0]))
        eps = (z1 - a_1 * e) / s_1
        assert torch.allclose(z, a_s * e + s_s * eps, atol=1e-4)


def test_eta_1_is_the_ddpm_posterior():
    """q(z_s | z_t, x0) = N(alpha_{t|s} sigma_s^2 / sigma_t^2 z_t + alpha_s sigma_{t|s}^2 / sigma_t^2 x0,
    sigma_{t|s}^2 sigma_s^2 / sigma_t^2 I) with alpha_{t|s} = alpha_t / alpha_s (VDM, eq. 28)."""
    model, backend = make("embedding")
    t, s = 0.7, 0.4
    (a_t, a_s), (s_t, s_s) = (v.tolist() for v in model.noise.schedule.alpha_sigma(torch.tensor([t, s])))
    x0 = torch.randn(1, 1, 16)
    z_t = torch.randn(1, 1, 16)
    a_ts = a_t / a_s
    var_ts = s_t ** 2 - a_ts ** 2 * s_s ** 2
    mean = a_ts * s_s ** 2 / s_t ** 2 * z_t + a_s * var_ts / s_t ** 2 * x0
    var = var_ts * s_s ** 2 / s_t ** 2
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([ddim_step(model, backend, x0, z_t, t, s, 1.0, g) for _ in range(4000)])  # (N, 1, 16)
    assert (draws.mean(0) - mean).abs().max() < 5 * math.sqrt(var / 4000)
    assert torch.allclose(draws.var(0), torch.full_like(mean, var)[0], rtol=0.1)


def test_the_bound_is_its_three_parts_and_the_end_terms_are_tiny():
    model, backend = make("embedding")
    b = batch()
    prior, recon = backend._ends(model, b.ids, torch.Generator().manual_seed(0))
    assert (prior >= 0).all() and prior.max() < 0.01 and recon.max() < 1e-3  # sigma_1 ~ 1, sigma_0 ~ 0.007
    out = backend.bound(model, b, 16, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.nll).all() and (out.nll > 0).all()
    assert (out.mc_var > 0).all()


def test_time_warp_keeps_the_estimate_unbiased():
    """Importance sampling of t changes the variance of the bound's estimate, not its expectation."""
    model, backend = make("embedding", seed=2)
    b = batch()
    plain = backend.bound(model, b, 64, torch.Generator().manual_seed(0))
    with torch.no_grad():  # a lopsided fitted density
        model.noise.warp.level.copy_(torch.linspace(0.01, 5.0, len(model.noise.warp.level)) ** 2)
    warped = backend.bound(model, b, 64, torch.Generator().manual_seed(1))
    se = (plain.mc_var + warped.mc_var).sqrt()
    assert ((plain.nll - warped.nll).abs() < 5 * se + 1e-3).all()


def test_time_warp_maps_strata_monotonically_and_learns_from_training():
    model, backend = make("embedding")
    warp = model.noise.warp
    u = torch.linspace(0, 0.999, 50)
    t, density = warp.times(u)
    assert torch.allclose(t, u, atol=1e-5) and torch.allclose(density, torch.ones(50))  # starts uniform
    model.train()
    for i in range(20):
        backend.loss(model, batch(i), torch.Generator().manual_seed(i))
    t, density = warp.times(u)
    assert (t[1:] >= t[:-1]).all() and not torch.allclose(density, torch.ones(50))
    assert abs((1.0 / density).mean().item() - 1.0) < 0.1  # a density: E_u[1/p(t(u))] = 1


@pytest.mark.parametrize("kw", [{"target": "x0", "x0_from": "vector"}, {"target": "eps", "x0_from": "vector"},
                                {"target": "v", "x0_from": "vector"}, {"loss": "simple"},
                                {"schedule": "learned"}, {"schedule": "sqrt"}, {"schedule": "linear"},
                                {"output_prior": False}, {"embed_norm": False}, {"time_warp": False}])
def test_every_parameterisation_trains_and_samples(kw):
    model, backend = make("embedding", **kw)
    out = backend.loss(model.train(), batch(), torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    x = sample("ddim", model.eval(), backend, backend.prior((B, L)), steps=3, clamp=True)
    assert x.shape == (B, L) and not (x == SPECIAL.mask).any()


def test_learned_schedule_end_points_get_gradients():
    model, backend = make("embedding", schedule="learned")
    backend.loss(model.train(), batch(), torch.Generator().manual_seed(0)).loss.backward()
    sched = model.noise.schedule
    assert sched.g0.grad is not None and sched.log_span.grad is not None and sched.g0.grad != 0


def test_self_conditioning_feeds_the_previous_estimate_back():
    from textdiff.config import DataConfig, ModelConfig, Recipe
    from textdiff.models import build_model
    from textdiff.noising import get_backend, options_for

    recipe = Recipe(data=DataConfig(path="unused.jsonl", max_length=L), backend=options_for("embedding"),
                    model=ModelConfig(n_layer=2, n_embd=32, n_head=2, time_conditioning=True, self_conditioning=True))
    torch.manual_seed(0)
    model = build_model(recipe, V, L).eval()
    backend = get_backend(recipe.backend, SPECIAL, V)
    torch.nn.init.normal_(model.self_cond.weight, std=0.1)
    seen = []
    real = backend.predict

    def spy(model_, z, t, x0_prev=None):
        seen.append(x0_prev)
        return real(model_, z, t, x0_prev)
    backend.predict = spy
    sample("ddpm", model, backend, backend.prior((B, L)), steps=3)
    assert seen[0] is None and all(s is not None for s in seen[1:])
    b = batch()
    z = backend.corrupt(b.ids, torch.full((B,), 0.6), torch.Generator().manual_seed(0), model=model)
    t = torch.full((B,), 0.6)
    assert not torch.allclose(real(model, z, t).x0, real(model, z, t, x0_prev=torch.randn(B, L, 64)).x0)


def test_the_loss_is_float32_under_bf16_and_x0_keeps_float32_precision():
    model, backend = make("embedding")
    b = batch()
    z = backend.corrupt(b.ids, torch.zeros(B), torch.Generator().manual_seed(0), model=model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = backend.predict(model, z, torch.zeros(B))
    assert pred.x0.dtype == torch.float32
    assert torch.equal(pred.x0, model.noise.table()[b.ids])  # the output prior makes t = 0 exact


# --- end to end: an embedding run works with sample, infill and eval exactly like a masked run ----------------------


@pytest.fixture(scope="module")
def embedding_run(tmp_path_factory, corpus):
    from tests.conftest import _train

    return _train(corpus, tmp_path_factory.mktemp("runs") / "embedding", "embedding", 60,
                  {"model": {"time_conditioning": True}, "backend": {"embed_dim": 16}})


def test_sample_infill_and_eval_on_an_embedding_run(embedding_run, capsys, tmp_path):
    import json

    from textdiff.cli import main

    assert main(["sample", str(embedding_run), "-n", "2", "--steps", "8", "--json"]) == 0
    rows = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and all(r["text"] for r in rows)
    for extra in ([], ["--sampler", "ddpm"], ["--eta", "0.5", "--clamp"], ["--block-size", "4"]):
        assert main(["infill", str(embedding_run), "the old [MASK:2] the [MASK].", "--steps", "6", *extra]) == 0
        words = capsys.readouterr().out.split()
        assert words[:2] == ["the", "old"] and words[4] == "the" and len(words) == 6, (extra, words)
    out_json = tmp_path / "ppl.json"
    assert main(["eval", str(embedding_run), "--metrics", "ppl", "--draws", "4", "--out", str(out_json)]) == 0
    assert "ELBO bound, 4 time draws" in capsys.readouterr().out
    result = json.loads(out_json.read_text())["ppl"]
    assert not result["exact"] and result["stderr"] > 0 and math.isfinite(result["nats_per_token"])


def test_an_embedding_run_refuses_masked_samplers(embedding_run):
    from textdiff.errors import TextdiffError
    from textdiff.pipeline import TextDiffusionPipeline

    pipe = TextDiffusionPipeline.from_pretrained(embedding_run)
    with pytest.raises(TextdiffError, match="ddim, ddpm"):
        pipe.generate(1, steps=4, sampler="confidence")
    a, b = pipe.generate(2, steps=4, seed=3, eta=0.0), pipe.generate(2, steps=4, seed=3, eta=0.0)
    assert torch.equal(a.ids, b.ids)


@pytest.mark.parametrize("filters", [{"temperature": 0.0}, {"temperature": 5.0}, {"top_k": 1}, {"top_p": 0.01}])
def test_decoding_filters_act_at_a_normal_step_count(embedding_run, filters):
    """Near t = 0 the rounding distribution is one-hot, so filters applied to the last step's tokens alone changed
    nothing at 8 steps: they shape the x0 estimate every step moves toward."""
    from textdiff.pipeline import TextDiffusionPipeline

    pipe = TextDiffusionPipeline.from_pretrained(embedding_run)
    plain = pipe.generate(4, steps=8, seed=0).ids
    assert not torch.equal(pipe.generate(4, steps=8, seed=0, **filters).ids, plain)


def test_steering_leaves_the_estimate_alone_at_the_default_filters():
    from textdiff.sampling import filter_probs

    model, backend = make("embedding", model={"time_conditioning": True})
    z = backend.start(model, torch.full((B, L), SPECIAL.mask), torch.Generator().manual_seed(0))
    pred = backend.predict(model, z, torch.full((B,), 0.5))
    assert torch.equal(backend.steer(pred, filter_probs(pred.logits)).x0, pred.x0)
    greedy = backend.steer(pred, filter_probs(pred.logits, temperature=0.0)).x0
    assert torch.allclose(greedy, pred.table[pred.logits.argmax(-1)], atol=1e-4)


def test_a_flattening_temperature_acts_on_a_vector_head_too():
    model, backend = make("embedding", model={"time_conditioning": True}, x0_from="vector", target="eps")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = backend.prior((B, L))
    plain = [sample("ddim", model, backend, x.clone(), seed=seed, steps=4) for seed in range(3)]
    flat = [sample("ddim", model, backend, x.clone(), seed=seed, steps=4, temperature=5.0) for seed in range(3)]
    assert any(not torch.equal(a, b) for a, b in zip(flat, plain))
