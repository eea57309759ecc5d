"""The shared transformer: KV-cache generation matches a full forward; optional inputs change the output."""

from __future__ import annotations

import torch

from textdiff.config import ModelConfig
from textdiff.models.transformer import Transformer


def test_kv_cache_matches_full_causal_forward():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layer=2, n_embd=32, n_head=4), vocab_size=50, max_len=16, causal=True).eval()
    ids = torch.randint(0, 50, (3, 12))
    full = model(ids)
    cache = model.new_cache(3, 12)
    steps = [model(ids[:, :5], cache=cache)]
    for i in range(5, 12):
        steps.append(model(ids[:, i:i + 1], cache=cache))
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_causal_model_does_not_look_ahead_and_denoiser_does():
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (1, 8))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 50
    for causal in (True, False):
        model = Transformer(ModelConfig(n_layer=1, n_embd=16, n_head=2), 50, 8, causal=causal).eval()
        same = torch.allclose(model(ids)[0, :-1], model(changed)[0, :-1])
        assert same == causal


def test_time_conditioning_and_self_conditioning_inputs():
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=2, time_conditioning=True, self_conditioning=True)
    model = Transformer(cfg, 40, 10)
    for p in model.parameters():  # adaLN-zero and the self-conditioning input start at zero; wake them up
        torch.nn.init.normal_(p, std=0.05)
    ids = torch.randint(0, 40, (2, 10))
    t0, t1 = torch.zeros(2), torch.ones(2)
    assert model(ids, t0).shape == (2, 10, 40)
    assert not torch.allclose(model(ids, t0), model(ids, t1))
    prev = torch.softmax(torch.randn(2, 10, 40), -1)
    assert not torch.allclose(model(ids, t0), model(ids, t0, x0_prev=model.embed_probs(prev)))
    select = torch.zeros(2, 10, dtype=torch.bool)
    select[0, 3] = select[1, 7] = True
    assert torch.allclose(model(ids, t0, select=select), model(ids, t0)[select], atol=1e-6)


def test_learned_positions_and_untied_head():
    cfg = ModelConfig(n_layer=1, n_embd=16, n_head=2, positions="learned", tie_embeddings=False)
    model = Transformer(cfg, 30, 12)
    assert model.head.weight.data_ptr() != model.tok.weight.data_ptr()
    assert model(torch.randint(0, 30, (2, 12))).shape == (2, 12, 30)


def test_vector_inputs_are_the_same_as_their_token_embeddings():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layer=2, n_embd=32, n_head=2), 40, 10).eval()
    ids = torch.randint(0, 40, (2, 10))
    assert torch.allclose(model(ids), model(model.tok(ids)), atol=1e-6)
    bare = Transformer(ModelConfig(n_layer=2, n_embd=32, n_head=2), 40, 10, token_input=False, vocab_head=False)
    assert bare.tok is None and bare.head is None
    assert bare.hidden(torch.randn(2, 10, 32)).shape == (2, 10, 32)


def test_aligned_positions_restart_the_target_at_zero_per_sequence():
    from textdiff.models.transformer import aligned_positions

    segments = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0, 0]])
    assert aligned_positions(segments).tolist() == [[0, 1, 2, 0, 1, 2, 3], [0, 1, 2, 3, 4, 0, 1], list(range(7))]
    torch.manual_seed(0)
    cfg = dict(n_layer=2, n_embd=32, n_head=4, segments=True)
    plain = Transformer(ModelConfig(**cfg), 50, 7).eval()
    aligned = Transformer(ModelConfig(**cfg, aligned_positions=True), 50, 7).eval()
    aligned.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 50, (3, 7))
    with plain.segmented(segments), aligned.segmented(segments):
        out, ref = aligned(ids), plain(ids)
    assert torch.allclose(out[2], ref[2], atol=1e-6)  # no target: the usual positions
    assert not torch.allclose(out[:2], ref[:2], atol=1e-4)
    for i in range(3):  # each sequence's positions are its own, whatever its neighbours' source lengths
        with aligned.segmented(segments[i:i + 1]):
            assert torch.allclose(aligned(ids[i:i + 1])[0], out[i], atol=1e-5)


def test_aligned_positions_need_segments_and_rotary():
    import pytest

    for bad in (dict(segments=False), dict(segments=True, positions="learned")):
        with pytest.raises(ValueError, match="model.aligned_positions needs"):
            ModelConfig(aligned_positions=True, **bad)
