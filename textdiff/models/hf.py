"""A transformers model as textdiff's denoiser: the `Denoiser` protocol (textdiff/models/__init__.py) over an encoder,
a causal LM made bidirectional (A2D), a causal LM kept causal (the AR baseline on pretrained weights), transformers'
DiffusionGemma, or a hub-code diffusion LM (LLaDA, Dream).

A2D (DiffuLLaMA, Gong et al. 2025; dllm's A2D; Dream, Ye et al. 2025): the causal mask is replaced by a full one
(a 4D all-zero additive mask, which transformers passes to the attention as it is) and, with `model.shift`, the
logits at position i are read from hidden state i - 1, so the pretrained next-token head keeps its meaning.
Self-conditioning, time conditioning and seq2seq segments are small input-side modules, zero-initialised so that
the pretrained network starts exactly as it was.
"""

from __future__ import annotations

import inspect
from typing import Optional

import torch
import torch.nn as nn

from textdiff.config import ModelConfig
from textdiff.errors import TextdiffError
from textdiff.models.backbones import (ENCODER_HEADS, REMOTE_TYPES, config_from_record, kind_of, load_config,
                                      load_network)
from textdiff.models.transformer import Transformer, timestep_embedding


class HFCache:
    """The AR sampler's KV cache over a transformers model: its own DynamicCache and the length written so far."""

    def __init__(self):
        from transformers import DynamicCache

        self.kv, self.length = DynamicCache(), 0


class InputConditioning(nn.Module):
    """Self-conditioning (Analog Bits), time (sinusoidal + MLP) and segment inputs added to the token embeddings,
    each zero-initialised (the pretrained model is unchanged until they learn)."""

    def __init__(self, cfg: ModelConfig, dim: int):
        super().__init__()
        self.dim = dim
        self.self_cond = nn.Linear(dim, dim, bias=False) if cfg.self_conditioning else None
        self.time = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim)) if cfg.time_conditioning else None
        self.seg = nn.Embedding(2, dim) if cfg.segments else None
        for layer in (self.self_cond, self.time[-1] if self.time is not None else None, self.seg):
            if layer is not None:
                nn.init.zeros_(layer.weight)
                if getattr(layer, "bias", None) is not None:
                    nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t, x0_prev, segments) -> torch.Tensor:
        """x (B, L, D) token embeddings -> (B, L, D) with the conditioning added."""
        if self.self_cond is not None and x0_prev is not None:
            x = x + self.self_cond(x0_prev.to(x.dtype))
        if self.time is not None:
            t = t if t is not None else torch.zeros(x.shape[0], device=x.device)
            x = x + self.time(timestep_embedding(t, self.dim).to(x.dtype))[:, None]
        if self.seg is not None and segments is not None:
            x = x + self.seg(segments)
        return x


def largest_module_list(module: nn.Module) -> nn.ModuleList:
    """The network's stack of layers: its largest nn.ModuleList (what compile and FSDP wrap one by one)."""
    lists = [m for m in module.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise TextdiffError(f"{type(module).__name__}: no stack of layers (nn.ModuleList) found")
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))


class HFDenoiser(nn.Module):
    """A transformers encoder or causal LM presenting textdiff's denoiser protocol.

    Args:
        cfg: the recipe's model section (self_conditioning, time_conditioning, segments, shift).
        net: the transformers model (AutoModelForMaskedLM or AutoModelForCausalLM), embeddings already resized.
        kind: `encoder` or `causal` (textdiff.models.kind_of).
        max_len: the training sequence length.
        causal: keep a causal LM causal (the AR baseline) instead of making it bidirectional.
    """

    segmented = Transformer.segmented
    num_params = Transformer.num_params

    def __init__(self, cfg: ModelConfig, net: nn.Module, kind: str, max_len: int, causal: bool = False):
        super().__init__()
        self.cfg, self.net, self.kind, self.max_len, self.causal = cfg, net, kind, max_len, causal
        self.full_mask = kind == "causal" and not causal
        self.shift = bool(cfg.shift if cfg.shift is not None else self.full_mask)
        self.tok = net.get_input_embeddings()
        self.pos = self._position_embedding()
        self.vocab_size = self.tok.weight.shape[0]
        self.cond = InputConditioning(cfg, self.tok.weight.shape[1])
        self.blocks = largest_module_list(self.base)
        params = inspect.signature(self.base.forward).parameters
        self.cache_key = "cache" if "cache" in params else "past_key_values"  # transformers renames it in 5.x
        self.segments: Optional[torch.Tensor] = None
        self.noise: Optional[nn.Module] = None
        self.new_tokens: Optional[nn.Module] = None  # LoRA: trainable embeddings of the tokens the run added
        if cfg.anneal_steps:  # training forwards so far, checkpointed with the weights (exact resume)
            self.register_buffer("anneal_seen", torch.zeros((), dtype=torch.long))

    @property
    def seg(self) -> Optional[nn.Module]:
        """The segment embedding (model.segments), read by `segmented`."""
        return self.cond.seg

    @property
    def base(self) -> nn.Module:
        """The network without its vocabulary head (BertModel, LlamaModel, GPT2Model, ...)."""
        return self.net.base_model

    def _position_embedding(self):
        """The absolute position table (BERT, GPT-2) or None (rotary): the pipeline's length limit reads it."""
        for name in ("position_embeddings", "wpe", "embed_positions"):
            for module in self.base.modules():
                if isinstance(getattr(module, name, None), nn.Embedding):
                    return getattr(module, name)
        return None

    @property
    def checkpoint_blocks(self) -> bool:
        name = "is_activation_checkpointing" if hasattr(self.net, "is_activation_checkpointing") else \
            "is_gradient_checkpointing"
        return bool(getattr(self.net, name, False))

    @checkpoint_blocks.setter
    def checkpoint_blocks(self, on: bool) -> None:
        """Activation checkpointing through the backbone's own switch (train.activation_checkpointing; transformers
        5.x calls it activation_checkpointing_enable, earlier versions gradient_checkpointing_enable)."""
        new = hasattr(self.net, "activation_checkpointing_enable")
        if on and new:
            self.net.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif on:
            self.net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif self.checkpoint_blocks:
            (self.net.activation_checkpointing_disable if new else self.net.gradient_checkpointing_disable)()

    def embed_probs(self, probs: torch.Tensor) -> torch.Tensor:
        """A distribution over the vocabulary as its expected token embedding: (B, L, V) -> (B, L, D)."""
        return probs.to(self.tok.weight.dtype) @ self.tok.weight

    def hidden(self, inputs: torch.Tensor, t=None, x0_prev=None, cache: Optional[HFCache] = None) -> torch.Tensor:
        """inputs (B, L) ids or (B, L, D) vectors -> (B, L, D) the states the head reads (shifted under A2D)."""
        B, L = inputs.shape[:2]
        x = inputs if inputs.is_floating_point() else self.tok(inputs)
        if self.new_tokens is not None and not inputs.is_floating_point():
            x = x + self.new_tokens(inputs).to(x.dtype)
        offset = cache.length if cache is not None else 0
        segments = self.segments[:, offset:offset + L] if self.segments is not None else None
        x = self.cond(x, t, x0_prev, segments)
        kwargs = {}
        if self.full_mask:  # A2D: every position sees every position (once annealed)
            kwargs["attention_mask"] = self.a2d_mask(B, L, x.dtype, x.device)
        if cache is not None:
            kwargs.update({self.cache_key: cache.kv}, use_cache=True,
                          position_ids=torch.arange(offset, offset + L, device=x.device)[None].expand(B, L))
            cache.length += L
        h = self.base(inputs_embeds=x, **kwargs).last_hidden_state
        return torch.cat([h[:, :1], h[:, :-1]], dim=1) if self.shift else h

    def a2d_mask(self, B: int, L: int, dtype, device) -> torch.Tensor:
        """(B, 1, L, L) additive attention mask of A2D: all zeros (full attention), or while model.anneal_steps
        anneals it (DiffuLLaMA), each future key hidden with probability 1 - seen / anneal_steps in training."""
        mask = torch.zeros(B, 1, L, L, dtype=dtype, device=device)
        steps = self.cfg.anneal_steps
        if not (steps and self.training and torch.is_grad_enabled()):
            return mask
        p_visible = min(float(self.anneal_seen) / steps, 1.0)
        self.anneal_seen += 1
        future = torch.ones(L, L, dtype=torch.bool, device=device).triu(1)
        hidden = future & (torch.rand(B, 1, L, L, device=device) >= p_visible)
        return mask.masked_fill(hidden, torch.finfo(dtype).min)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., D) -> vocabulary logits (..., V) through the backbone's own head."""
        if self.kind == "causal":
            return self.net.get_output_embeddings()(h)
        for name in ENCODER_HEADS[self.net.config.model_type]:
            h = getattr(self.net, name)(h)
        return h

    def forward(self, inputs: torch.Tensor, t: Optional[torch.Tensor] = None, x0_prev: Optional[torch.Tensor] = None,
                select: Optional[torch.Tensor] = None, cache: Optional[HFCache] = None) -> torch.Tensor:
        """Vocab logits (B, L, V), or (N, V) at the positions `select` (B, L) (see Transformer.forward)."""
        h = self.hidden(inputs, t, x0_prev, cache)
        return self.head(h[select] if select is not None else h)

    def new_cache(self, batch: int, max_len: int, dtype=torch.float32) -> HFCache:
        """A KV cache for left-to-right sampling (the AR baseline on a causal-LM backbone)."""
        if not self.causal:
            raise TextdiffError("a backbone model keeps a KV cache only as the AR baseline (backend.name: ar); "
                                "sample it with --cache none")
        return HFCache()


class DiffusionGemmaDenoiser(HFDenoiser):
    """transformers' DiffusionGemmaForBlockDiffusion as a denoiser over the whole sequence: its bidirectional
    decoder denoises the sequence as one canvas after a one-token encoder prefix ([BOS]), and its logits are
    soft-capped as in the model's own forward. The model's own self-conditioning module is used: `embed_probs` then
    gives (B, L, V) log-probabilities, which the decoder embeds itself. `model.net.generate` (its own entropy-bound
    sampler) stays reachable."""

    def __init__(self, cfg: ModelConfig, net: nn.Module, max_len: int):
        super().__init__(cfg, net, "diffusion_gemma", max_len)
        self.full_mask, self.shift = False, bool(cfg.shift)
        self.bos = int(net.config.get_text_config().bos_token_id or 0)
        self.cond = InputConditioning(ModelConfig(), 1)  # no extra modules: the decoder conditions itself

    @property
    def base(self) -> nn.Module:
        return self.net.model.decoder

    def embed_probs(self, probs: torch.Tensor) -> torch.Tensor:
        """The decoder's own self-conditioning input: (B, L, V) log-probabilities of the previous estimate."""
        return probs.float().clamp_min(1e-30).log()

    def hidden(self, inputs: torch.Tensor, t=None, x0_prev=None, cache=None) -> torch.Tensor:
        if inputs.is_floating_point() or cache is not None:
            raise TextdiffError("the DiffusionGemma adapter takes token ids only (the masked and uniform back-ends), "
                                "and has no left-to-right cache")
        prefix = torch.full((inputs.shape[0], 1), self.bos, dtype=torch.long, device=inputs.device)
        enc = self.net.model.encoder(input_ids=prefix, use_cache=True)
        sc = x0_prev if (x0_prev is not None and self.cfg.self_conditioning) else None
        h = self.base(decoder_input_ids=inputs, cache=enc.cache, self_conditioning_logits=sc).last_hidden_state
        return torch.cat([h[:, :1], h[:, :-1]], dim=1) if self.shift else h

    def head(self, h: torch.Tensor) -> torch.Tensor:
        cap = self.net.final_logit_softcapping
        logits = self.net.lm_head(h).float()
        return torch.tanh(logits / cap) * cap if cap else logits


class RemoteDenoiser(HFDenoiser):
    """A hub-code masked diffusion LM (LLaDA, Dream: loaded only with --trust-remote-code) over token ids: its own
    forward gives the logits (already bidirectional); Dream's are shifted as its own sampler shifts them."""

    def __init__(self, cfg: ModelConfig, net: nn.Module, max_len: int):
        nn.Module.__init__(self)
        self.cfg, self.net, self.kind, self.max_len, self.causal = cfg, net, "remote", max_len, False
        model_type = str(net.config.model_type).lower()
        self.full_mask = False
        self.shift = bool(cfg.shift if cfg.shift is not None else REMOTE_TYPES.get(model_type, False))
        self.tok, self.pos = net.get_input_embeddings(), None
        self.vocab_size = self.tok.weight.shape[0]
        self.blocks = largest_module_list(net)
        self.segments, self.noise, self.new_tokens = None, None, None
        self.cond = InputConditioning(ModelConfig(), 1)  # none: the model takes ids only

    def hidden(self, inputs, t=None, x0_prev=None, cache=None):
        raise TextdiffError("a hub-code diffusion LM gives logits only: use it with the masked or uniform back-end")

    def forward(self, inputs, t=None, x0_prev=None, select=None, cache=None):
        if inputs.is_floating_point() or cache is not None:
            raise TextdiffError("a hub-code diffusion LM takes token ids only (the masked and uniform back-ends)")
        logits = self.net(input_ids=inputs).logits
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1) if self.shift else logits
        return logits[select] if select is not None else logits


def build_hf(recipe, vocab_size: int, max_len: int, causal: bool, record: Optional[dict] = None):
    """The denoiser of a backbone recipe: the pretrained network (or, from a run directory's `record`, its
    architecture, whose weights the caller loads), embeddings grown to the run's vocabulary, LoRA when asked."""
    spec = recipe.model.backbone
    config = None
    if record is not None:  # hub code is not in the run directory: it is read from the backbone again
        config = load_config(spec) if record.get("kind") == "remote" else config_from_record(record["config"])
    net = load_network(spec, pretrained=record is None and recipe.model.pretrained, config=config)
    kind = kind_of(net.config, spec)
    first = net.get_input_embeddings().weight.shape[0]
    if first != vocab_size:  # the run added [MASK] / [PAD]: new rows start at the mean embedding (pretrained only)
        net.resize_token_embeddings(vocab_size, mean_resizing=record is None and recipe.model.pretrained)
    if recipe.model.lora is not None:
        from textdiff.models.lora import apply_lora

        net = apply_lora(net, kind, recipe.model.lora, spec)
    if kind == "diffusion_gemma":
        model = DiffusionGemmaDenoiser(recipe.model, net, max_len)
    elif kind == "remote":
        model = RemoteDenoiser(recipe.model, net, max_len)
    else:
        model = HFDenoiser(recipe.model, net, kind, max_len, causal=causal)
    if recipe.model.lora is not None and vocab_size > first:
        from textdiff.models.lora import NewTokens

        model.new_tokens = NewTokens(first, vocab_size - first, model.tok.weight.shape[1])
    return model
