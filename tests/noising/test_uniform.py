"""The uniform-substitution back-end (D3PM-uniform / SEDD-uniform / UDLM): the forward kernel's marginal, the
posterior against Bayes' rule, the sampler against an oracle x0 predictor, and the continuous-time bound against
its closed-form cases, the discrete-time D3PM sum and the model's exact likelihood."""

from __future__ import annotations

import itertools
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.tiny import SPECIAL, B, L, V, batch, make, sample
from tests.noising.test_simplex import Oracle
from textdiff.cli import main
from textdiff.config import recipe_from_dict
from textdiff.errors import TextdiffError
from textdiff.noising import get_backend, options_for
from textdiff.noising.base import Batch
from textdiff.noising.base import BOUND_T_MIN


def backend(vocab: int = V, **kw):
    return get_backend(options_for("uniform", **kw), SPECIAL, vocab)


def alpha(bk, t: float) -> float:
    return float(bk.alpha(torch.tensor(t)))


class Constant:
    """A stand-in denoiser whose x0 logits (V,) are the same everywhere."""

    cfg = SimpleNamespace(self_conditioning=False, time_conditioning=True)

    def __init__(self, logits: torch.Tensor):
        self.logits = logits

    def __call__(self, inputs, t, x0_prev=None, select=None):
        out = self.logits.expand(*inputs.shape, -1).clone()
        return out if select is None else out[select]


def uniform_logits(bk) -> torch.Tensor:
    return torch.zeros(V).masked_fill(~bk.real, float("-inf"))


# --- the forward process -----------------------------------------------------------------------------------------


def test_real_tokens_are_every_token_but_pad_mask_bos_sep_unk():
    bk = backend()
    assert SPECIAL.eos in bk.real_ids.tolist()
    assert not set(bk.real_ids.tolist()) & {SPECIAL.pad, SPECIAL.mask, SPECIAL.bos, SPECIAL.sep, SPECIAL.unk}
    assert bk.n_real == V - 5


@pytest.mark.parametrize("schedule", ["loglinear", "cosine"])
@pytest.mark.parametrize("t", [0.2, 0.5, 0.9, 1.0])
def test_corrupt_marginal_is_alpha_delta_plus_uniform_over_real_tokens(schedule, t):
    bk, n = backend(schedule=schedule), 40000
    x_t = bk.corrupt(torch.full((n, 1), 9), torch.full((n,), t), torch.Generator().manual_seed(0))
    freq = torch.bincount(x_t.flatten(), minlength=V).double() / n
    a = alpha(bk, t)
    expected = bk.real.double() * (1 - a) / bk.n_real
    expected[9] += a
    se = (expected * (1 - expected) / n).sqrt()
    assert ((freq - expected).abs() <= 5 * se + 1e-12).all(), (freq, expected)


def test_corrupt_is_the_identity_at_t0_and_never_touches_positions_outside_the_noise_mask():
    bk, ids = backend(), batch().ids
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(bk.corrupt(ids, torch.zeros(B), gen), ids)
    assert torch.equal(bk.corrupt(ids, torch.full((B,), 1e-9), gen), ids)
    keep = torch.zeros(B, L, dtype=torch.bool)
    keep[:, :4] = True
    x_t = bk.corrupt(ids, torch.ones(B), gen, noise_mask=keep)
    assert torch.equal(x_t[:, 4:], ids[:, 4:]) and not torch.equal(x_t[:, :4], ids[:, :4])
    assert bk.real[x_t[:, :4]].all()


def test_a_schedule_that_does_not_reach_uniform_noise_is_refused(monkeypatch):
    from textdiff.schedules import LogLinear

    monkeypatch.setattr(LogLinear, "alpha", lambda self, t: 0.9 - 0.8 * t)
    with pytest.raises(ValueError, match="alpha"):
        backend()


# --- the posterior -----------------------------------------------------------------------------------------------


def kernel(bk, a: float) -> torch.Tensor:
    """The forward kernel as a matrix: K[x, y] = q(y | x) = a [x = y] + (1 - a) u(y)."""
    return a * torch.eye(bk.vocab_size, dtype=torch.float64) + (1 - a) * bk.uniform_u("cpu").double()[None]


@pytest.mark.parametrize("t,s", [(1.0, 0.7), (0.6, 0.3), (0.3, 0.0), (0.05, 0.01)])
def test_posterior_matches_bayes_rule_on_the_forward_kernel(t, s):
    """q(x_s | x_t, x0) = q(x_t | x_s) q(x_s | x0) / q(x_t | x0) from the kernel matrices, for one-hot x0 (the exact
    posterior) and for a spread x0 distribution (the plug-in, sum over x0 of q(x_s, x_t | x0) p(x0), normalised)."""
    vocab = 10
    bk = backend(vocab)
    a_t, a_s = alpha(bk, t), alpha(bk, s)
    K_s, K_ts, K_t = kernel(bk, a_s), kernel(bk, a_t / a_s), kernel(bk, a_t)
    assert torch.allclose(K_s @ K_ts, K_t)  # the kernels compose: alpha_{t|s} alpha_s = alpha_t
    pairs = [(x0, xt) for x0 in range(vocab) for xt in range(vocab) if x0 != SPECIAL.mask and K_t[x0, xt] > 0]
    x0, xt = (torch.tensor(v) for v in zip(*pairs))
    post = bk.posterior(torch.nn.functional.one_hot(x0, vocab).float()[None], xt[None], a_t, a_s)[0].double()
    bayes = K_ts[:, xt].T * K_s[x0] / K_t[x0, xt][:, None]  # (P, V)
    assert torch.allclose(post.sum(-1), torch.ones(len(pairs), dtype=torch.float64), atol=1e-6)
    assert torch.allclose(post, bayes, atol=1e-6)
    p = torch.softmax(torch.randn(len(pairs), vocab, generator=torch.Generator().manual_seed(0)), -1)
    p[:, SPECIAL.mask] = 0
    p = p / p.sum(-1, keepdim=True)
    plug = K_ts[:, xt].T * (p.double() @ K_s)
    plug = plug / plug.sum(-1, keepdim=True)
    assert torch.allclose(bk.posterior(p[None], xt[None], a_t, a_s)[0].double(), plug, atol=1e-6)


def test_a_special_token_the_distribution_rules_out_stays_put():
    """Greedy sampling puts no mass on a given [SEP]; its posterior row falls back to the [SEP] itself."""
    bk = backend()
    x_t = torch.tensor([[SPECIAL.sep, 9]])
    probs = torch.nn.functional.one_hot(torch.tensor([[7, 7]]), V).float()
    post = bk.posterior(probs, x_t, 0.5, 0.8)
    assert torch.isfinite(post).all() and post[0, 0, SPECIAL.sep] == 1.0
    out = bk.step(None, probs, x_t, torch.tensor([0.5]), torch.tensor([0.2]), torch.Generator().manual_seed(0))
    assert torch.equal(out.sample[0, 0], x_t[0, 0])


# --- the sampler -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("opts", [{}, {"steps": 1}, {"block_size": 3}, {"top_p": 0.5}, {"temperature": 0.0},
                                  {"top_k": 2}])
def test_sampler_with_an_oracle_x0_predictor_returns_x0(opts):
    bk, ids = backend(), batch().ids
    out = sample("uniform_ancestral", Oracle(ids), bk, bk.prior((B, L)), **{"steps": 6, **opts})
    assert torch.equal(out, ids)


def test_sampler_infills_with_an_oracle_and_shows_blocks_not_started_as_mask():
    bk, ids = backend(), batch().ids
    x = bk.prior((B, L))
    x[:, :2] = ids[:, :2]
    seen = []
    out = sample("uniform_ancestral", Oracle(ids), bk, x, steps=4, block_size=4,
                 callback=lambda i, xs, p: seen.append(xs.clone()))
    assert torch.equal(out, ids) and all(torch.equal(s[:, :2], ids[:, :2]) for s in seen)
    assert (seen[0][:, 6:] == SPECIAL.mask).all() and not (seen[0][:, 2:6] == SPECIAL.mask).any()  # blocks from the hole


def test_sampler_feeds_the_previous_distribution_back_with_self_conditioning():
    bk, ids = backend(), batch().ids
    oracle = Oracle(ids, self_conditioning=True)
    sample("uniform_ancestral", oracle, bk, bk.prior((B, L)), steps=3)
    assert oracle.seen[0] is None and all(p is not None and p.shape == (B, L, V) for p in oracle.seen[1:])


# --- the bound ---------------------------------------------------------------------------------------------------


def per_token(out) -> tuple[float, float]:
    n = float(out.n_tokens.sum())
    return float(out.nll.sum()) / n, math.sqrt(float(out.mc_var.sum())) / n


def test_bound_of_an_oracle_is_tiny_and_of_a_uniform_predictor_is_log_v():
    bk = backend()
    ids = torch.randint(6, V, (256, 8), generator=torch.Generator().manual_seed(0))
    b = Batch(ids, torch.ones_like(ids, dtype=torch.bool))
    oracle, _ = per_token(bk.bound(Oracle(ids), b, 8, torch.Generator().manual_seed(0)))
    assert 0 <= oracle < 1e-3  # the decoder term alone is ~ t_min log(V'/t_min)
    uniform, se = per_token(bk.bound(Constant(uniform_logits(bk)), b, 8, torch.Generator().manual_seed(0)))
    assert abs(uniform - math.log(bk.n_real)) < 5 * se, (uniform, se)


def gauss_log_t(f, t_min: float, n: int) -> float:
    """int_{t_min}^1 f(t) dt by Gauss-Legendre in log t."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    lo = math.log(t_min)
    return sum(-0.5 * lo * w * math.exp(u) * f(math.exp(u)) for u, w in zip(0.5 * lo * (1 - nodes), weights))


def test_integrand_of_a_uniform_predictor_integrates_to_log_v_minus_the_entropy_at_t_min():
    """With p_theta = u the model is the stationary chain, so the diffusion term is KL(q(x_t_min | x0) || u)."""
    bk = backend()
    real = bk.real_ids

    def expected(t):  # E_{x_t ~ q(. | x0 = 9)} of the integrand
        q = torch.full((len(real),), (1 - alpha(bk, t)) / bk.n_real, dtype=torch.float64)
        q[real == 9] += alpha(bk, t)
        h = bk.integrand(uniform_logits(bk).expand(len(real), -1), torch.full_like(real, 9), real,
                         torch.full((len(real),), t, dtype=torch.float64))
        return float((q * h.double()).sum())

    a = alpha(bk, BOUND_T_MIN)
    c = (1 - a) / bk.n_real
    entropy = -((a + c) * math.log(a + c) + (bk.n_real - 1) * c * math.log(c))
    assert gauss_log_t(expected, BOUND_T_MIN, 64) == pytest.approx(math.log(bk.n_real) - entropy, abs=1e-5)


class TwoTokens:
    """Every sequence of two tokens under a tiny untrained transformer, for exact sums over x_t."""

    def __init__(self, x0: list[int]):
        self.model, self.bk = make("uniform", seed=3)
        self.x0 = torch.tensor(x0)
        real = self.bk.real_ids
        self.states = torch.tensor(list(itertools.product(real.tolist(), repeat=2)))  # (S, 2) where q(x_t | x0) > 0

    def q(self, t: float) -> torch.Tensor:
        """(S,) q(x_t | x0) of every state."""
        a = alpha(self.bk, t)
        q = torch.full(self.states.shape, (1 - a) / self.bk.n_real, dtype=torch.float64)
        return (q + a * (self.states == self.x0)).prod(1)

    @torch.no_grad()
    def probs(self, x: torch.Tensor, t: float) -> torch.Tensor:
        return torch.softmax(self.bk.predict(self.model, x, torch.full((len(x),), t)).logits, -1)

    @torch.no_grad()
    def expected_integrand(self, t: float) -> float:
        logits = self.bk.predict(self.model, self.states, torch.full((len(self.states),), t)).logits
        h = self.bk.integrand(logits.flatten(0, 1), self.x0.repeat(len(self.states)), self.states.flatten(),
                              torch.full((self.states.numel(),), t, dtype=torch.float64))
        return float((self.q(t) * h.double().view(-1, 2).sum(1)).sum())

    def decoder(self, x: torch.Tensor, t_min: float) -> torch.Tensor:
        """(S,) p_dec(x0 | x) of the bound's last step."""
        prior = torch.ones(V).index_fill(0, torch.tensor([SPECIAL.mask]), 0.0) / (V - 1)
        post = self.bk.posterior(prior.expand(*x.shape, -1), x, alpha(self.bk, t_min), 1.0).double()
        return post[:, 0, self.x0[0]] * post[:, 1, self.x0[1]]

    def continuous_bound(self, t_min: float, nodes: int) -> float:
        recon = -(self.q(t_min) * self.decoder(self.states, t_min).log()).sum()
        return gauss_log_t(self.expected_integrand, t_min, nodes) + float(recon)

    def d3pm_diffusion_term(self, t_min: float, steps: int) -> float:
        """The discrete-time NELBO's KL terms, sum_k E_q KL(q(x_s | x_t, x0) || p(x_s | x_t)), on a geometric grid,
        the posterior from the kernel matrices."""
        bk, total = self.bk, 0.0
        grid = [t_min ** (1 - k / steps) for k in range(steps + 1)]
        for s, t in zip(grid, grid[1:]):
            a_t, a_s = alpha(bk, t), alpha(bk, s)
            K_s, K_ts, K_t = kernel(bk, a_s), kernel(bk, a_t / a_s), kernel(bk, a_t)
            model = bk.posterior(self.probs(self.states, t), self.states, a_t, a_s).double()  # (S, 2, V)
            kl = 0.0
            for i in range(2):
                x0, xt = self.x0[i], self.states[:, i]
                true = K_ts[:, xt].T * K_s[x0] / K_t[x0, xt][:, None]  # (S, V)
                kl = kl + (torch.xlogy(true, true) - torch.xlogy(true, model[:, i])).sum(1)
            total += float((self.q(t) * kl).sum())
        return total

    @torch.no_grad()
    def exact_nll(self, t_min: float, steps: int) -> float:
        """-log p(x0) of the model's reverse chain (1 -> t_min on a geometric grid, the continuous-time process as
        steps grow) and its decoder, by carrying the distribution over every state of non-[MASK] tokens."""
        bk = self.bk
        toks = torch.tensor([v for v in range(V) if v != SPECIAL.mask])
        every = torch.tensor(list(itertools.product(toks.tolist(), repeat=2)))  # (S', 2)
        p = (bk.real[toks][:, None] & bk.real[toks][None, :]).double() / bk.n_real ** 2  # x_1 uniform over R^2
        grid = [t_min ** (k / steps) for k in range(steps + 1)]
        for t, s in zip(grid, grid[1:]):
            post = bk.posterior(self.probs(every, t), every, alpha(bk, t), alpha(bk, s)).double()[..., toks]
            p = torch.einsum("s,si,sj->ij", p.flatten(), post[:, 0], post[:, 1])
        return -math.log(float((p.flatten() * self.decoder(every, t_min)).sum()))


def test_continuous_bound_is_the_limit_of_the_discrete_time_d3pm_sum():
    """The discrete-time KL sum converges to the integral of the integrand at rate 1/steps (for this model
    -2.6e-3 at 100 steps, -6.4e-4 at 400, -1.6e-4 at 1600, of 6.197)."""
    case = TwoTokens([7, 12])
    t_min = 1e-2
    integral = gauss_log_t(case.expected_integrand, t_min, 32)
    coarse, fine = (case.d3pm_diffusion_term(t_min, n) - integral for n in (25, 100))
    assert abs(fine) < 4e-3 and abs(fine) < abs(coarse) / 2.5, (integral, coarse, fine)


@pytest.mark.parametrize("seq", [[7, 12], [20, 20]])
def test_bound_is_at_least_the_exact_nll_and_estimates_the_closed_form_bound(seq):
    case = TwoTokens(seq)
    nll = case.exact_nll(BOUND_T_MIN, 50)  # 6.2515 for [7, 12]; 6.2535 at 100 steps, 6.2551 at 400
    bound = case.continuous_bound(BOUND_T_MIN, 32)
    assert bound >= nll  # 6.365 for [7, 12]
    b = Batch(case.x0[None].repeat(256, 1), torch.ones(256, 2, dtype=torch.bool))
    out = case.bk.bound(case.model, b, 64, torch.Generator().manual_seed(0))
    estimate, se = out.nll.mean().item(), math.sqrt(out.mc_var.mean().item() / 256)
    assert abs(estimate - bound) < 5 * se and estimate >= nll - 5 * se, (estimate, se, bound, nll)


def test_bound_under_bf16_autocast_is_a_finite_float32():
    model, bk = make("uniform")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = bk.bound(model, batch(), 2, torch.Generator().manual_seed(0))
    assert out.nll.dtype == torch.float32 and torch.isfinite(out.nll).all() and torch.isfinite(out.mc_var).all()


def test_special_tokens_counted_in_the_data_give_a_finite_loss_and_bound():
    """Pad mode with pad_in_loss counts [PAD]: it is no noise token, yet the kernel and the bound hold for it."""
    model, bk = make("uniform")
    b = batch()
    b.ids[:, -3:] = SPECIAL.pad
    b.loss_mask[:] = True
    out = bk.loss(model.train(), b, torch.Generator().manual_seed(0))
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.isfinite(out.loss) and grads and all(torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(bk.bound(model.eval(), b, 4, torch.Generator().manual_seed(0)).nll).all()


# --- recipes and the command line --------------------------------------------------------------------------------


def test_the_schedule_must_be_a_masking_one():
    with pytest.raises(TextdiffError, match="backend.schedule"):
        recipe_from_dict({"data": {"path": "x.jsonl"}, "backend": {"name": "uniform", "schedule": "sqrt"}})


def test_train_sample_infill_and_eval_through_the_cli(write_recipe, tmp_path, capsys):
    recipe = write_recipe("uniform", model={"time_conditioning": True},
                          sample={"sampler": "uniform_ancestral", "steps": 8, "num_samples": 2,
                                  "infill": "the [MASK:2] the river."})
    assert main(["train", str(recipe), "--set", "train.steps=8"]) == 0
    out = capsys.readouterr().out
    assert "=== 2 samples (uniform_ancestral" in out
    assert next(ln for ln in out.splitlines() if ln.startswith("-> ")).split()[-2:] == ["the", "river."]
    run = tmp_path / "run-uniform"
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_nll" in r for r in rows)

    assert main(["sample", str(run), "-n", "2", "--steps", "6", "--block-size", "8", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["infill", str(run), "the old [MASK:2] the [MASK].", "-n", "2", "--top-p", "0.9"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(ln.split()[:3] == [f"[{i}]", "the", "old"] for i, ln in enumerate(lines))
    assert main(["eval", str(run), "--metrics", "ppl", "--draws", "2", "--max-sequences", "8"]) == 0
    assert "ELBO bound" in capsys.readouterr().out
    assert main(["sample", str(run), "--sampler", "ancestral"]) == 2
    assert "uniform_ancestral" in capsys.readouterr().err
