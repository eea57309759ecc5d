"""The one transformer every back-end shares: pre-norm blocks, rotary or learned positions, attention through
`F.scaled_dot_product_attention`, optional adaLN-zero time conditioning (DiT, Peebles & Xie 2023) and an
optional self-conditioning input (Chen et al. 2022, Analog Bits). Bidirectional for diffusion, causal (with a
KV cache) for the autoregressive baseline, or block-causal (model.block_size = K: block diffusion, BD3-LM, Arriola
et al. 2025): each block of K positions sees itself and the blocks before it; trained in one forward over the noisy
and the clean sequence side by side (`context`), sampled block by block over a KV cache of the finished blocks. It knows nothing about noise: `forward(inputs, t) -> logits`, where
the inputs are token ids or, for back-ends that diffuse in a continuous space, one input vector per position.
A back-end's own trainable parts (an embedding table, projections, a learned schedule) hang off the model as
`model.noise`, so they train, checkpoint and EMA with it.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from textdiff.config import ModelConfig


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of continuous times t in [0, 1] (scaled by 1000, as in DDPM).  (B,) -> (B, dim)"""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Rotary(nn.Module):
    """Rotary position embedding (Su et al. 2021), applied to queries and keys."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim), persistent=False)
        self._cache: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def cos_sin(self, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cache is None or self._cache[0] < length or self._cache[1].device != device:
            pos = torch.arange(max(length, 256), device=device, dtype=torch.float32)
            freqs = torch.outer(pos, self.inv_freq.to(device))  # (L, hd/2)
            self._cache = (len(pos), freqs.cos(), freqs.sin())
        return self._cache[1], self._cache[2]

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: (B, H, L, hd); cos, sin: (L, hd/2), or (B, 1, L, hd/2) for positions of each sequence's own."""
        x1, x2 = x.float().chunk(2, dim=-1)
        out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
        return out.type_as(x)


def aligned_positions(segments: torch.Tensor) -> torch.Tensor:
    """(B, L) positions of seq2seq sequences whose target restarts at 0 after the source: the source (segment 0,
    [SEP] included) at 0, 1, ..., the target (segment 1) at 0, 1, ... again (model.aligned_positions)."""
    col = torch.arange(segments.shape[1], device=segments.device)
    return torch.where(segments == 1, col - (segments == 0).sum(1, keepdim=True), col)


class KVCache:
    """Keys and values per layer for a batch: the AR baseline's prefix, a block model's finished blocks, or a whole
    sequence's (Fast-dLLM's approximate caches). A forward at positions [start, start + L) attends to the cached
    positions [0, length) with its own keys and values in their slots (appended past `length`, overwriting within
    it); with `store` they are written for good and `length` grows, else the entries held (before `length`) are
    left as they were: slots past `length` are scratch, written in place (a block's steps over a block model's
    cache copy nothing)."""

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int, device, dtype):
        shape = (batch, n_head, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.length = 0
        self.store = True
        """Whether the next forward writes its keys and values (set by the caller around a forward)."""

    def attend(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values (B, H, N, hd) a forward of k, v (B, H, L, hd) at positions from `start` attends to."""
        end = start + k.shape[2]
        n = max(self.length, end)
        if self.store or start >= self.length:
            self.k[layer][:, :, start:end], self.v[layer][:, :, start:end] = k, v
            return self.k[layer][:, :, :n], self.v[layer][:, :, :n]
        keys, values = self.k[layer][:, :, :n].clone(), self.v[layer][:, :, :n].clone()
        keys[:, :, start:end], values[:, :, start:end] = k, v
        return keys, values

    def advance(self, start: int, length: int) -> None:
        if self.store:
            self.length = max(self.length, start + length)


@functools.lru_cache(maxsize=16)
def block_causal_mask(length: int, block: int, device: str) -> torch.Tensor:  # the two-stream mask's clean part
    """(L, L) bool: position i attends to j iff j's block is not after i's (bidirectional within a block)."""
    blk = torch.arange(length, device=device) // block
    return blk[None, :] <= blk[:, None]


@functools.lru_cache(maxsize=16)
def two_stream_mask(length: int, block: int, device: str) -> torch.Tensor:
    """(2L, 2L) bool for [noisy x_t, clean x0] side by side (BD3-LM's vectorised training): a noisy position sees its
    own noisy block and the clean blocks before it; a clean position sees the clean blocks up to its own."""
    blk = torch.arange(length, device=device) // block
    same, before = blk[None, :] == blk[:, None], blk[None, :] < blk[:, None]
    top = torch.cat([same, before], dim=1)
    bottom = torch.cat([torch.zeros_like(same), block_causal_mask(length, block, device)], dim=1)
    return torch.cat([top, bottom], dim=0)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, causal: bool):
        super().__init__()
        self.n_head, self.causal, self.dropout = cfg.n_head, causal, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x, rope, layer: int = 0, cache: Optional[KVCache] = None, mask=None, start: int = 0):
        """x (B, L, D) at positions from `start`; mask (L, N) bool of the keys each query sees, or None."""
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_head, D // self.n_head).permute(2, 0, 3, 1, 4)  # 3 × (B, H, L, hd)
        if rope is not None:
            q, k = Rotary.apply(q, *rope), Rotary.apply(k, *rope)
        causal = self.causal and mask is None
        if cache is not None:
            k, v = cache.attend(layer, k, v, start)
            if causal and start > 0 and L > 1:
                raise ValueError("a multi-token step after the prefill is not supported by the KV cache")
            causal = causal and L > 1  # a single new query may see every cached key
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, H, L, hd)
        return self.proj(y.transpose(1, 2).reshape(B, L, D))


    def store(self, x, rope, layer: int, cache: KVCache, start: int) -> None:
        """Only the keys and values of x (B, L, D) at positions from `start`, written into the cache."""
        B, L, D = x.shape
        _, k, v = self.qkv(x).view(B, L, 3, self.n_head, D // self.n_head).permute(2, 0, 3, 1, 4)
        if rope is not None:
            k = Rotary.apply(k, *rope)
        cache.store = True
        cache.attend(layer, k, v, start)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, cfg.mlp_ratio * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


def per_token(v: torch.Tensor) -> torch.Tensor:
    """A conditioning vector per sequence (B, D) made (B, 1, D); one per token (B, L, D) as it is."""
    return v[:, None] if v.dim() == 2 else v


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + per_token(scale)) + per_token(shift)


class Block(nn.Module):
    """Pre-norm transformer block; with `mod` (B, 6, D) it becomes an adaLN-zero block."""

    def __init__(self, cfg: ModelConfig, causal: bool):
        super().__init__()
        affine = not cfg.time_conditioning
        self.ln1 = nn.LayerNorm(cfg.n_embd, elementwise_affine=affine, bias=False)
        self.ln2 = nn.LayerNorm(cfg.n_embd, elementwise_affine=affine, bias=False)
        self.attn = Attention(cfg, causal)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.time_conditioning:
            self.ada = nn.Linear(cfg.n_embd, 6 * cfg.n_embd)
            nn.init.zeros_(self.ada.weight)
            nn.init.zeros_(self.ada.bias)

    def forward(self, x, rope, c=None, layer: int = 0, cache=None, mask=None, start: int = 0):
        if c is None:
            x = x + self.drop(self.attn(self.ln1(x), rope, layer, cache, mask, start))
            return x + self.drop(self.mlp(self.ln2(x)))
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).chunk(6, dim=-1)  # 6 × (B, D) or (B, L, D)
        x = x + per_token(g1) * self.drop(self.attn(modulate(self.ln1(x), sh1, sc1), rope, layer, cache, mask, start))
        return x + per_token(g2) * self.drop(self.mlp(modulate(self.ln2(x), sh2, sc2)))


    def store(self, x, rope, c, layer: int, cache: KVCache, start: int) -> None:
        """The keys and values this block's attention reads for x, written into the cache; nothing else is computed."""
        h = self.ln1(x)
        if c is not None:
            sh1, sc1 = self.ada(c).chunk(6, dim=-1)[:2]
            h = modulate(h, sh1, sc1)
        self.attn.store(h, rope, layer, cache, start)


class Transformer(nn.Module):
    """Token ids or input vectors (and optionally t, a self-conditioning input) -> vocab logits or hidden states.

    Args:
        cfg: the model section of the recipe.
        vocab_size: size of the input and output vocabulary.
        max_len: longest sequence (sizes learned positions; rotary has no limit).
        causal: causal attention (the AR baseline) instead of bidirectional (the denoiser).
        token_input: build the token embedding (False when the back-end always feeds vectors).
        vocab_head: build the vocab-logit head (False when the back-end reads only hidden states).
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int, max_len: int, causal: bool = False,
                 token_input: bool = True, vocab_head: bool = True):
        super().__init__()
        self.cfg, self.vocab_size, self.max_len, self.causal = cfg, vocab_size, max_len, causal
        D = cfg.n_embd
        self.tok = nn.Embedding(vocab_size, D) if token_input else None
        self.pos = nn.Embedding(max_len, D) if cfg.positions == "learned" else None
        self.rotary = Rotary(D // cfg.n_head) if cfg.positions == "rotary" else None
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.time_conditioning:
            self.time_mlp = nn.Sequential(nn.Linear(D, D), nn.SiLU(), nn.Linear(D, D))
            self.final_ada = nn.Linear(D, 2 * D)
        if cfg.self_conditioning:
            self.self_cond = nn.Linear(D, D, bias=False)  # previous x0 estimate, as an input-space vector
        self.blocks = nn.ModuleList(Block(cfg, causal) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(D, elementwise_affine=not cfg.time_conditioning, bias=False)
        self.head = nn.Linear(D, vocab_size, bias=False) if vocab_head else None
        self.seg = nn.Embedding(2, D) if cfg.segments else None  # seq2seq: source 0 / target 1
        self.segments: Optional[torch.Tensor] = None  # (B, L) segment ids of the current call (see `segmented`)
        self.noise: Optional[nn.Module] = None
        self.checkpoint_blocks = False  # activation checkpointing in training (train.activation_checkpointing)
        self._init_weights()
        if cfg.tie_embeddings and self.tok is not None and self.head is not None:
            self.head.weight = self.tok.weight

    def _init_weights(self):
        for name, p in self.named_parameters():
            if p.dim() == 2 and "ada" not in name:
                std = 0.02 / math.sqrt(2 * self.cfg.n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
        if self.cfg.time_conditioning:
            nn.init.zeros_(self.final_ada.weight)
            nn.init.zeros_(self.final_ada.bias)
        if self.cfg.self_conditioning:
            nn.init.zeros_(self.self_cond.weight)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @contextlib.contextmanager
    def segmented(self, segments: Optional[torch.Tensor]):
        """Within the block every forward adds the segment embedding of `segments` (B, L) (source 0 / target 1):
        the conditioning stays out of every back-end's and sampler's signature. A no-op without model.segments."""
        previous, self.segments = self.segments, (segments if self.seg is not None else None)
        try:
            yield self
        finally:
            self.segments = previous

    def embed_probs(self, probs: torch.Tensor) -> torch.Tensor:
        """A distribution over the vocabulary as its expected token embedding: (B, L, V) -> (B, L, D)."""
        return probs.to(self.tok.weight.dtype) @ self.tok.weight

    def embed(self, inputs: torch.Tensor, t=None, x0_prev=None, positions: Optional[torch.Tensor] = None):
        """inputs (B, L) ids or (B, L, D) vectors at `positions` (L,) (default 0..L-1) -> hidden (B, L, D),
        conditioning c (B, D), or (B, L, D) for times t (B, L) per token, or None, and rotary or None."""
        B, L = inputs.shape[:2]
        positions = torch.arange(L, device=inputs.device) if positions is None else positions
        end = int(positions.max()) + 1
        if end > self.max_len and self.pos is not None:
            raise ValueError(f"sequence of {end} tokens is longer than the model's {self.max_len}")
        x = inputs if inputs.is_floating_point() else self.tok(inputs)
        if self.pos is not None:
            x = x + self.pos(positions)
        if self.seg is not None and self.segments is not None:
            x = x + self.seg(self.segments[:, positions])
        if x0_prev is not None and self.cfg.self_conditioning:
            x = x + self.self_cond(x0_prev.to(x.dtype))
        c = None
        if self.cfg.time_conditioning:
            t = torch.zeros(B, device=inputs.device) if t is None else t
            c = self.time_mlp(timestep_embedding(t.reshape(-1), self.cfg.n_embd).to(x.dtype)).view(*t.shape, -1)
        return self.drop(x), c, self._rope(positions, end, inputs.device)

    def _rope(self, positions: torch.Tensor, end: int, device):
        if self.rotary is None:
            return None
        cos, sin = self.rotary.cos_sin(end, device)
        if self.cfg.aligned_positions and self.segments is not None:
            pos = aligned_positions(self.segments)[:, positions]
            return cos[pos][:, None], sin[pos][:, None]  # (B, 1, L, hd/2): per sequence
        return cos[positions], sin[positions]

    def _mask(self, start: int, length: int, n_keys: int, device):
        """The attention mask of a forward at positions [start, start + length) over keys [0, n_keys) without the
        two-stream context: block-causal for a block model (in sampling the blocks before the current one are
        clean; several blocks written into a cache at once see only their own and earlier blocks), none otherwise
        (bidirectional, or causal for AR)."""
        K = self.cfg.block_size
        if not K:
            return None
        keys = torch.arange(n_keys, device=device) // K
        queries = torch.arange(start, start + length, device=device) // K
        return keys[None, :] <= queries[:, None]

    def hidden(self, inputs, t=None, x0_prev=None, cache: Optional[KVCache] = None,
               context: Optional[torch.Tensor] = None, start: Optional[int] = None):
        """The final normalised hidden states (B, L, D), before the vocab head. With `context` (B, L), the clean
        sequence, a block model (model.block_size) runs the two streams of BD3-LM: [inputs, context] under
        `two_stream_mask`, each noisy block seeing its own noise and the clean blocks before it (t (B,) or (B, L)
        for the noisy stream, 0 for the clean one); the noisy stream's states are returned. With `cache`, the
        inputs sit at positions from `start` (default: the cache's length) and attend to the cached ones too."""
        L = inputs.shape[1]
        if context is not None and self.cfg.block_size:
            inputs, t, x0_prev, mask, positions = self._two_streams(inputs, t, x0_prev, context)
        else:
            start = (cache.length if cache is not None else 0) if start is None else start
            positions = torch.arange(start, start + L, device=inputs.device)
            n_keys = max(cache.length, start + L) if cache is not None else L
            mask = self._mask(start, L, n_keys, inputs.device)
        x, c, rope = self.embed(inputs, t, x0_prev, positions)
        first = int(positions[0])
        for i, block in enumerate(self.blocks):
            if self.checkpoint_blocks and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, rope, c, i, cache, mask, first, use_reentrant=False)
            else:
                x = block(x, rope, c, i, cache, mask, first)
        if cache is not None:
            cache.advance(first, L)
        x = self.ln_f(x[:, :L])
        if c is not None:
            shift, scale = self.final_ada(c if c.dim() == 2 else c[:, :L]).chunk(2, dim=-1)
            x = modulate(x, shift, scale)
        return x

    @torch.no_grad()
    def write_cache(self, inputs: torch.Tensor, t: torch.Tensor, cache: KVCache, start: int) -> None:
        """The keys and values of inputs (B, L) at positions from `start` stored in the cache, as `hidden` with
        `cache.store` would store them (a block model's finished block, written once): every layer but the last
        runs whole, the last only its key and value projections (its attention, MLP and the head read nothing)."""
        L = inputs.shape[1]
        positions = torch.arange(start, start + L, device=inputs.device)
        mask = self._mask(start, L, max(cache.length, start + L), inputs.device)
        x, c, rope = self.embed(inputs, t, None, positions)
        cache.store = True
        *body, last = self.blocks
        for i, block in enumerate(body):
            x = block(x, rope, c, i, cache, mask, start)
        last.store(x, rope, c, len(body), cache, start)
        cache.advance(start, L)

    def _two_streams(self, inputs, t, x0_prev, context):
        """[noisy, clean] inputs (B, 2L), per-token times (noisy t, clean 0), x0_prev on the noisy half only, the
        two-stream mask and positions 0..L-1 twice."""
        B, L = inputs.shape[:2]
        both = torch.cat([inputs, context], dim=1)
        if t is not None:
            noisy = t if t.dim() == 2 else t[:, None].expand(B, L)
            t = torch.cat([noisy, torch.zeros_like(noisy)], dim=1)
        if x0_prev is not None:
            x0_prev = torch.cat([x0_prev, torch.zeros_like(x0_prev)], dim=1)
        positions = torch.arange(L, device=inputs.device).repeat(2)
        return both, t, x0_prev, two_stream_mask(L, self.cfg.block_size, str(inputs.device)), positions

    def forward(self, inputs: torch.Tensor, t: Optional[torch.Tensor] = None, x0_prev: Optional[torch.Tensor] = None,
                select: Optional[torch.Tensor] = None, cache: Optional[KVCache] = None,
                context: Optional[torch.Tensor] = None, start: Optional[int] = None) -> torch.Tensor:
        """Vocab logits.

        Args:
            inputs: (B, L) token ids, or (B, L, D) input vectors.
            t: (B,) diffusion times in [0, 1], or (B, L) one per token (used only with time conditioning).
            x0_prev: (B, L, D) the previous x0 estimate as an input-space vector, e.g. `embed_probs(p)` of its
                distribution (used only with self-conditioning).
            select: (B, L) bool; when given, logits only at these positions, flattened to (N, V)
                (saves the vocab projection where the loss does not look).
            cache: KV cache (causal generation; a block model's finished blocks; approximate caches).
            context: (B, L) the clean sequence beside the noisy one, for a block model's training and bound.
            start: with `cache`, the position of the first input (default: the cache's length).
        Returns:
            (B, L, V) logits, or (N, V) with `select`.
        """
        h = self.hidden(inputs, t, x0_prev, cache, context, start)
        if select is not None:
            h = h[select]
        return self.head(h)

    def new_cache(self, batch: int, max_len: int, dtype=torch.float32) -> KVCache:
        hd = self.cfg.n_embd // self.cfg.n_head
        device = next(self.parameters()).device
        return KVCache(self.cfg.n_layer, batch, self.cfg.n_head, max_len, hd, device, dtype)
