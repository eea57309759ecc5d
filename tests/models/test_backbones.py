"""The backbone adapter's conformance suite, run on tiny random Llama, Qwen2, GPT-2, BERT, ModernBERT and
DiffusionGemma models built locally (tests/models/tiny_backbones.py): the loss and bound of the back-ends, attention
made full (A2D) or kept causal (ar), the output shift, the KV cache, the masked bound against the exact likelihood of
the toy problem, and a few training steps, sampling, infilling and the run directory's round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.models.tiny_backbones import ARCHITECTURES, ENCODERS
from tests.noising.test_masked import exact_masked_elbo, exact_masked_nll
from textdiff import checkpoint as ckpt
from textdiff.config import DataConfig, ModelConfig, Recipe, recipe_from_dict
from textdiff.models import Denoiser, backbones, build_model
from textdiff.noising import get_backend, options_for
from textdiff.noising.base import Batch
from textdiff.pipeline import TextDiffusionPipeline
from textdiff.tokenization import special_tokens
from textdiff.training import train_recipe

CAUSAL = [a for a in ARCHITECTURES if a not in ENCODERS and a != "diffusion_gemma"]
L = 12


def make(folder: Path, backend: str = "masked", seed: int = 0, **model):
    """A backbone denoiser of `folder` (eval mode), its back-end and its tokenizer."""
    tok = backbones.load_tokenizer(str(folder))
    recipe = Recipe(data=DataConfig(path="unused.jsonl", max_length=L),
                    model=ModelConfig(backbone=str(folder), **model), backend=options_for(backend))
    torch.manual_seed(seed)
    net = build_model(recipe, len(tok), L).eval()
    return net, get_backend(recipe.backend, special_tokens(tok), len(tok)), tok


def batch(tok, seed: int = 0) -> Batch:
    words = [i for t, i in tok.get_vocab().items() if t.isalpha()]
    g = torch.Generator().manual_seed(seed)
    ids = torch.tensor(words)[torch.randint(len(words), (3, L), generator=g)]
    return Batch(ids, torch.ones_like(ids, dtype=torch.bool))


def backend_for(arch: str) -> str:
    return "uniform" if arch == "diffusion_gemma" else "masked"  # DiffusionGemma is a uniform-noise model


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_loss_is_a_finite_float32_scalar_with_gradients_and_the_bound_has_its_shapes(arch, backbone_dir):
    model, backend, tok = make(backbone_dir(arch), backend_for(arch))
    assert isinstance(model, Denoiser)
    b = batch(tok)
    out = backend.loss(model.train(), b, torch.Generator().manual_seed(0))
    assert out.loss.shape == () and out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.blocks.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert backend.loss(model, b, torch.Generator().manual_seed(0)).loss.dtype == torch.float32
    bound = backend.bound(model.eval(), b, 2, torch.Generator().manual_seed(0))
    assert bound.nll.shape == (3,) and (bound.nll > 0).all() and torch.equal(bound.n_tokens, b.loss_mask.sum(1))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_diffusion_denoiser_sees_later_tokens_and_an_ar_one_does_not(arch, backbone_dir):
    model, backend, tok = make(backbone_dir(arch), backend_for(arch))
    ids = batch(tok).ids
    later = ids.clone()
    later[:, 8] = ids[:, 9]
    with torch.no_grad():
        assert not torch.allclose(model(ids)[:, 0], model(later)[:, 0])
    if arch in CAUSAL:
        ar, _, _ = make(backbone_dir(arch), "ar")
        with torch.no_grad():
            assert torch.allclose(ar(ids)[:, :8], ar(later)[:, :8], atol=1e-5)


@pytest.mark.parametrize("arch", CAUSAL)
def test_a2d_shift_reads_position_i_from_hidden_state_i_minus_1(arch, backbone_dir):
    shifted, _, tok = make(backbone_dir(arch), seed=1)
    plain, _, _ = make(backbone_dir(arch), seed=1, shift=False)
    assert shifted.shift and not plain.shift
    ids = batch(tok).ids
    with torch.no_grad():
        a, b = shifted(ids), plain(ids)
    assert torch.allclose(a[:, 1:], b[:, :-1], atol=1e-5) and torch.allclose(a[:, 0], b[:, 0], atol=1e-5)
    select = torch.zeros_like(ids, dtype=torch.bool)
    select[:, [0, 5]] = True
    with torch.no_grad():
        assert torch.allclose(shifted(ids, select=select), a[select], atol=1e-5)


@pytest.mark.parametrize("arch", CAUSAL)
def test_the_kv_cache_gives_the_logits_of_the_full_causal_forward(arch, backbone_dir):
    model, _, tok = make(backbone_dir(arch), "ar")
    ids = batch(tok).ids
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(3, L)
        steps = [model(ids[:, :4], cache=cache)] + [model(ids[:, i:i + 1], cache=cache) for i in range(4, L)]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_masked_bound_is_at_least_the_exact_nll_of_the_toy_problem(arch, backbone_dir):
    model, backend, tok = make(backbone_dir(arch), seed=3)
    x = batch(tok).ids[0, :3]
    nll, elbo = exact_masked_nll(model, backend, x), exact_masked_elbo(model, backend, x)
    assert elbo >= nll - 1e-6
    b = Batch(x[None].repeat(64, 1), torch.ones(64, 3, dtype=torch.bool))
    out = backend.bound(model, b, 16, torch.Generator().manual_seed(0))
    se = (out.mc_var.mean().item() / 64) ** 0.5
    assert out.nll.mean().item() >= nll - 5 * se - 1e-4


def backbone_recipe(corpus: Path, folder: Path, out: Path, backend: str = "masked", **model) -> dict:
    return {"out_dir": str(out), "data": {"path": str(corpus), "max_length": L},
            "model": {"backbone": str(folder), **model}, "backend": {"name": backend},
            "train": {"steps": 3, "batch_size": 4, "lr": 3e-3, "warmup_steps": 1, "precision": "fp32",
                      "eval_every": 3, "eval_batches": 1, "checkpoint_every": 3, "log_every": 1},
            "sample": {"steps": 4, "num_samples": 0, **({"sampler": "ar"} if backend == "ar" else {})}}


def check_round_trip(run: Path, causal: bool) -> TextDiffusionPipeline:
    """The run reloads with the saved weights, samples and (diffusion) infills keeping the given tokens."""
    assert not [p for p in run.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    pipe = TextDiffusionPipeline.from_pretrained(run)
    saved = ckpt.load_tensors(run / "model.safetensors")
    mine = ckpt.model_tensors(pipe.model)
    assert saved.keys() == mine.keys() and all(torch.equal(saved[k], mine[k]) for k in saved)
    out = pipe.generate(2, length=L, **({} if causal else {"steps": 4}))
    assert len(out.texts) == 2 and not (out.ids == pipe.backend.special.mask).any()
    if not causal:
        filled = pipe.infill("the [MASK:2] sees the [MASK]", num_samples=2, steps=3)
        row = pipe.template_row("the [MASK:2] sees the [MASK]")
        known = torch.tensor(row) != pipe.backend.special.mask
        assert torch.equal(filled.ids[:, known], torch.tensor(row)[known].expand(2, -1))
        assert not (filled.ids == pipe.backend.special.mask).any()
    return pipe


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_backbone_run_trains_samples_infills_and_reloads(arch, backbone_dir, corpus, tmp_path):
    run = train_recipe(recipe_from_dict(backbone_recipe(corpus, backbone_dir(arch), tmp_path / "run", backend_for(arch))),
                       progress=False)
    cfg = json.loads((run / "config.json").read_text())
    tok = json.loads((run / "tokenizer_config.json").read_text())
    assert cfg["backbone"]["kind"] in ("encoder", "causal", "diffusion_gemma")
    assert all(tok[f"{role}_token"] == token for role, token in cfg["backbone"]["roles"].items())
    pipe = check_round_trip(run, causal=False)
    if arch in CAUSAL:  # the tokenizer had no [MASK] or [PAD]: both added, the embeddings grown to match
        assert cfg["backbone"]["roles"]["mask"] == "[MASK]" and pipe.model.tok.weight.shape[0] == cfg["vocab_size"]


@pytest.mark.parametrize("arch", CAUSAL[:1])
def test_a_causal_backbone_trains_as_the_ar_baseline(arch, backbone_dir, corpus, tmp_path):
    run = train_recipe(recipe_from_dict(backbone_recipe(corpus, backbone_dir(arch), tmp_path / "run", "ar")),
                       progress=False)
    check_round_trip(run, causal=True)


def test_activation_checkpointing_goes_through_the_backbones_own_switch(backbone_dir):
    model, backend, tok = make(backbone_dir("llama"))
    model.checkpoint_blocks = True
    assert model.checkpoint_blocks
    out = backend.loss(model.train(), batch(tok), torch.Generator().manual_seed(0))
    out.loss.backward()
    model.checkpoint_blocks = False
    assert not model.checkpoint_blocks


def test_self_and_time_conditioning_are_zero_initialised_input_modules(backbone_dir):
    plain, _, tok = make(backbone_dir("bert"), "uniform", seed=2)
    cond, _, _ = make(backbone_dir("bert"), "uniform", seed=2, self_conditioning=True, time_conditioning=True)
    ids, t = batch(tok).ids, torch.tensor([0.1, 0.5, 0.9])
    probs = torch.softmax(torch.randn(3, L, len(tok)), -1)
    with torch.no_grad():  # the pretrained network starts exactly as it was
        assert torch.allclose(plain(ids), cond(ids, t, x0_prev=cond.embed_probs(probs)), atol=1e-5)
    for module in (cond.cond.self_cond, cond.cond.time[-1]):
        module.weight.data.normal_()
    with torch.no_grad():
        assert not torch.allclose(cond(ids, t), cond(ids, t, x0_prev=cond.embed_probs(probs)), atol=1e-3)
        assert not torch.allclose(cond(ids, t), cond(ids, t.flip(0)), atol=1e-3)


@pytest.mark.skipif("diffusion_gemma" not in ARCHITECTURES, reason="this transformers has no DiffusionGemma")
def test_diffusion_gemmas_own_generate_stays_reachable(backbone_dir):
    model, _, _ = make(backbone_dir("diffusion_gemma"), "uniform")
    prompt = torch.full((1, 1), model.bos)
    out = model.net.generate(input_ids=prompt, max_new_tokens=8, max_denoising_steps=2)
    assert out.sequences.shape[0] == 1


def test_annealing_starts_causal_and_ends_full(backbone_dir):
    model, _, tok = make(backbone_dir("llama"), shift=False, anneal_steps=4)
    ids = batch(tok).ids
    later = ids.clone()
    later[:, 8] = ids[:, 9]
    model.train()

    def first_position(x, seen: int) -> torch.Tensor:
        model.anneal_seen.fill_(seen)
        return model.hidden(x)[:, 0]

    assert torch.allclose(first_position(ids, 0), first_position(later, 0), atol=1e-5)  # causal at step 0
    assert int(model.anneal_seen) == 1  # each training forward counts
    assert not torch.allclose(first_position(ids, 4), first_position(later, 4), atol=1e-4)  # full once annealed
    with torch.no_grad():  # evaluation and sampling see everything from the start
        assert not torch.allclose(first_position(ids, 0), first_position(later, 0), atol=1e-4)


def test_textdiffs_own_transformer_presents_the_same_protocol():
    from tests.tiny import make as make_own

    assert isinstance(make_own("masked")[0], Denoiser)


@pytest.mark.parametrize("arch", [a for a in ("bert", "llama", "diffusion_gemma") if a in ARCHITECTURES])
def test_a_self_conditioned_backbone_trains_and_feeds_its_estimate_back(arch, backbone_dir):
    model, backend, tok = make(backbone_dir(arch), backend_for(arch), self_conditioning=True)
    b = batch(tok)
    for seed in range(4):  # half the steps take the self-conditioned second pass
        out = backend.loss(model.train(), b, torch.Generator().manual_seed(seed))
        assert torch.isfinite(out.loss)
    ids = b.ids
    probs = torch.softmax(torch.randn(3, L, len(tok)), -1)
    if arch != "diffusion_gemma":  # zero-initialised: give the input module something to pass on
        model.cond.self_cond.weight.data.normal_()
    with torch.no_grad():
        assert not torch.allclose(model.eval()(ids), model(ids, x0_prev=model.embed_probs(probs)), atol=1e-4)
