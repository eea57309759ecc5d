"""Recipes: one frozen dataclass per component, loaded from YAML, saved as JSON into the run directory.

A recipe is a YAML mapping with the sections `model`, `backend`, `data`, `tokenizer`, `train` and `sample`
(all optional but `data`). Unknown keys and bad values are errors that name the key, the file and what is
allowed. Command-line overrides are dotted: `--set train.lr=3e-4`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from textdiff.errors import TextdiffError


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")


def _check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    if not (value > 0 or (allow_zero and value == 0)):  # also refuses NaN
        raise ValueError(f"{name}={value!r} must be {'>= 0' if allow_zero else '> 0'}")


def _check_unit(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r} must lie in [0, 1]")


@dataclass(frozen=True)
class ModelConfig:
    """The shared transformer (denoiser, or AR baseline when the back-end is `ar`)."""

    n_layer: int = 6
    """Number of transformer blocks."""
    n_embd: int = 384
    """Width of the residual stream."""
    n_head: int = 6
    """Attention heads; must divide n_embd."""
    mlp_ratio: int = 4
    """Hidden width of the MLP as a multiple of n_embd."""
    dropout: float = 0.0
    """Dropout on attention output, MLP output and embeddings."""
    positions: str = "rotary"
    """Position encoding: `rotary` or `learned`."""
    tie_embeddings: bool = True
    """Share the token embedding with the vocab-logit head."""
    time_conditioning: bool = False
    """Feed t through a sinusoidal embedding and adaLN-zero. Masked diffusion with a log-linear schedule
    does not need it (the number of masks tells t), and MDLM trains without it."""
    self_conditioning: bool = False
    """Give the denoiser an extra input: its previous x0 estimate (Analog Bits / CDCD / TESS)."""
    segments: bool = False
    """Add a learned segment embedding, source (up to the first [SEP]) vs target: for seq2seq recipes
    (`data.source_field`) with a bidirectional back-end. A model with segments was trained with a clean source."""
    aligned_positions: bool = False
    """Seq2seq with segments and rotary positions: the target's positions count from 0 after [SEP], as the
    source's do, so target token i and source token i sit at rotary distance 0. A prior for tasks whose
    alignment is near-monotone (revision, e.g. KJV -> ASV), in the spirit of non-autoregressive translation's
    source-copied decoder inputs (Gu et al. 2018): attending to "the source token at my index" becomes one
    head's content-free pattern instead of a count past a variable-length source."""

    def __post_init__(self):
        for name in ("n_layer", "n_embd", "n_head", "mlp_ratio"):
            _check_positive(f"model.{name}", getattr(self, name))
        if self.n_embd % self.n_head:
            raise ValueError(f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}")
        if (self.n_embd // self.n_head) % 2 and self.positions == "rotary":
            raise ValueError("model.n_embd / model.n_head must be even for rotary positions")
        _check_unit("model.dropout", self.dropout)
        _check_choice("model.positions", self.positions, ("rotary", "learned"))
        if self.aligned_positions and not (self.segments and self.positions == "rotary"):
            raise ValueError("model.aligned_positions needs model.segments: true and model.positions: rotary")


@dataclass(frozen=True)
class BackendConfig:
    """The noising back-end, its schedule and its parameterisation. Keys a back-end does not use are ignored by it."""

    name: str = "masked"
    """Registered back-end: see `textdiff.noising.BACKENDS` (`masked`, `uniform`, `edit`, `embedding`, `simplex`, `ar`)."""
    schedule: Optional[str] = None
    """Noise schedule in continuous time t in [0, 1] (None: the back-end's default). Masked and uniform: `loglinear`
    (default) or `cosine`. Gaussian back-ends: `cosine`, `sqrt` (Diffusion-LM), `linear` (DDPM betas) or `learned`
    (linear log-SNR with learned end points)."""
    time_sampling: str = "antithetic"
    """Training draws: `antithetic` (low-discrepancy, one stratum per example) or `uniform`."""
    mask_sampling: str = "count"
    """Masked back-end's ELBO estimator: `count` draws the number of masks k uniformly and weights n/k (t
    integrated out exactly; needs model.time_conditioning: false) or `time` draws t and weights 1/t-like (MDLM)."""
    eps: float = 1e-3
    """Smallest t drawn in training (avoids the 1/t singularity of masked and uniform diffusion; their likelihood
    bounds start at t = 1e-6)."""
    target: str = "x0"
    """What a Gaussian back-end's model predicts: `x0`, `eps` or `v` (v = alpha eps - sigma x0); simplex: `x0` or `eps`."""
    x0_from: str = "logits"
    """Embedding back-end: where the x0 estimate comes from. `logits`: the expected embedding under the vocab
    head's distribution (CDCD's score interpolation, Plaid's categorical reparameterisation; needs target x0);
    `vector`: a vector head whose output is read as `target`."""
    output_prior: bool = True
    """Embedding back-end with x0_from=logits: add the exact Bayes logits of x_t alone, -|x_t - alpha e_v|^2 /
    (2 sigma^2), to the model's (Plaid's output prior), so the low-noise end is right without learning it."""
    embed_dim: int = 64
    """Embedding back-end: width d of the diffused token embeddings."""
    embed_norm: bool = True
    """Embedding back-end: scale every token embedding to norm sqrt(d) (CDCD), so embeddings cannot collapse."""
    time_warp: bool = True
    """Embedding back-end: draw training times from the density fitted to the bound's integrand (CDCD's time
    warping; the loss is divided by it, so unbiased); False draws t uniformly. The bound always uses the fit."""
    loss: str = "elbo"
    """Gaussian back-ends' diffusion loss: `elbo` (the continuous-time variational bound, VDM) or `simple`
    (unweighted mean squared error of the target, Ho et al. 2020)."""
    ce_weight: float = 1.0
    """Weight of the rounding / anchor cross-entropy of the tokens under the logits of the x0 estimate."""
    gamma_min: float = -10.0
    """Gaussian back-ends: log noise-to-signal ratio at t = 0 (sigma_0^2 = sigmoid(gamma_min))."""
    gamma_max: float = 10.0
    """Gaussian back-ends: log noise-to-signal ratio at t = 1."""
    simplex_k: float = 5.0
    """Simplex back-end: clean tokens become logits +k (the token) and -k (every other)."""
    edit_prior: str = "random"
    """Edit back-end: the sequence x_1 that noise edits toward and sampling starts from. `random`: real tokens of a
    length drawn uniformly up to the room left; `empty`: nothing (generation only inserts); `source` (seq2seq): a copy
    of the source, so sampling revises the source into the target."""
    max_insert: int = 128
    """Edit back-end: most tokens one step inserts into one gap (the insertion-count head has max_insert + 1 classes)."""

    def __post_init__(self):
        from textdiff.noising import BACKENDS

        _check_choice("backend.name", self.name, tuple(sorted(BACKENDS)))
        allowed = BACKENDS[self.name].schedules
        if self.schedule is not None and allowed:
            _check_choice(f"backend.schedule (for the {self.name} back-end)", self.schedule, allowed)
        _check_choice("backend.time_sampling", self.time_sampling, ("antithetic", "uniform"))
        _check_choice("backend.mask_sampling", self.mask_sampling, ("count", "time"))
        if not 0.0 < self.eps < 0.5:
            raise ValueError(f"backend.eps={self.eps!r} must lie in (0, 0.5)")
        _check_choice("backend.target", self.target, ("x0", "eps", "v"))
        _check_choice("backend.x0_from", self.x0_from, ("logits", "vector"))
        if self.x0_from == "logits" and self.target != "x0" and self.name == "embedding":
            raise ValueError(f"backend.x0_from=logits predicts x0 itself; use backend.target: x0, or backend.x0_from: "
                             f"vector to predict {self.target}")
        if self.name == "simplex" and self.target == "v":
            raise ValueError("backend.target=v is not supported by the simplex back-end; use x0 (cross-entropy) or eps")
        _check_positive("backend.embed_dim", self.embed_dim)
        _check_choice("backend.loss", self.loss, ("elbo", "simple"))
        _check_positive("backend.ce_weight", self.ce_weight, allow_zero=True)
        if not self.gamma_max - self.gamma_min >= 1.0:
            raise ValueError(f"backend.gamma_max={self.gamma_max} must exceed backend.gamma_min={self.gamma_min} by >= 1")
        if self.schedule == "learned" and self.loss != "elbo":
            raise ValueError("backend.schedule=learned is trained by the bound; it needs backend.loss: elbo")
        _check_positive("backend.simplex_k", self.simplex_k)
        _check_choice("backend.edit_prior", self.edit_prior, ("random", "empty", "source"))
        _check_positive("backend.max_insert", self.max_insert)


@dataclass(frozen=True)
class DataConfig:
    """Where the text comes from and how it becomes fixed-length token sequences."""

    path: str = ""
    """Local file (.txt, .jsonl, .json, .csv, .parquet), relative to $TEXTDIFF_DATA_DIR when not absolute,
    or a hub id such as `wikitext` (online users)."""
    hub_config: Optional[str] = None
    """Hub dataset configuration name (e.g. `wikitext-2-raw-v1`)."""
    text_field: str = "text"
    """Column holding the text (for seq2seq: the target)."""
    source_field: Optional[str] = None
    """Seq2seq: the column holding the source. Each sequence is `source [SEP] target [EOS] [PAD]...`; the source
    is never noised and only the target (with [EOS], and [PAD] with pad_in_loss) counts in the loss. Needs pad mode."""
    split_field: Optional[str] = "split"
    """Column naming each row's split, for single-file corpora; None when the source has real splits."""
    prepare: Optional[str] = None
    """When the file is not under $TEXTDIFF_DATA_DIR, build it with this preparer (`bible`) into the cache."""
    max_length: int = 128
    """Length of every training sequence in tokens."""
    mode: str = "pack"
    """`pack`: join examples with [EOS] and cut into max_length chunks. `pad`: one example per sequence,
    [EOS] appended, [PAD] after it."""
    pad_in_loss: bool = False
    """Train on [PAD] positions too (lets a model learn where text ends in `pad` mode); off by default."""
    truncate: bool = True
    """In `pad` mode, cut examples longer than max_length; when False they are an error."""
    max_examples: Optional[int] = None
    """Use only the first N training examples (tiny recipes, tests)."""
    streaming: bool = False
    """Read a local file as a `datasets` stream instead of loading it into memory (corpora larger than memory):
    `pack` mode only, batches taken in file order (shuffle the file beforehand), resumed exactly where the
    checkpoint left off. The tokenizer then trains on the first `tokenizer_examples` texts."""
    tokenizer_examples: int = 100_000
    """With `streaming`, how many leading training texts the tokenizer is trained on."""

    def __post_init__(self):
        if not self.path:
            raise ValueError("data.path is required: a local file or a hub dataset id")
        _check_positive("data.max_length", self.max_length)
        if self.max_length < 2:
            raise ValueError(f"data.max_length={self.max_length} must be >= 2")
        _check_choice("data.mode", self.mode, ("pack", "pad"))
        if self.prepare is not None:
            _check_choice("data.prepare", self.prepare, ("bible",))
        if self.max_examples is not None:
            _check_positive("data.max_examples", self.max_examples)
        if self.streaming and self.mode != "pack":
            raise ValueError(f"data.streaming=true needs data.mode='pack' (got {self.mode!r}); allowed: pack")
        _check_positive("data.tokenizer_examples", self.tokenizer_examples)
        if self.source_field is not None:
            _check_choice("data.mode (with data.source_field)", self.mode, ("pad",))
            if self.source_field == self.text_field:
                raise ValueError(f"data.source_field={self.source_field!r} must differ from data.text_field")


@dataclass(frozen=True)
class TokenizerConfig:
    """A tokenizer trained on the training split and saved with the run."""

    kind: str = "bpe"
    """`bpe` (byte-level), `wordpiece`, `wordlevel` or `sentencepiece` (unigram)."""
    vocab_size: int = 8192
    """Target vocabulary size, special tokens included."""
    min_frequency: int = 2
    """Minimum count for a merge / word to enter the vocabulary."""
    path: Optional[str] = None
    """Reuse a saved tokenizer directory instead of training one."""

    def __post_init__(self):
        _check_choice("tokenizer.kind", self.kind, ("bpe", "wordpiece", "wordlevel", "sentencepiece"))
        if self.vocab_size < 16:
            raise ValueError(f"tokenizer.vocab_size={self.vocab_size} must be >= 16")
        _check_positive("tokenizer.min_frequency", self.min_frequency)


@dataclass(frozen=True)
class TrainConfig:
    """The training loop."""

    steps: int = 1000
    """Optimizer steps."""
    batch_size: int = 32
    """Sequences per optimizer step (split over grad_accum micro-batches)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; must divide batch_size."""
    lr: float = 3e-4
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr * min_lr_ratio."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    weight_decay: float = 0.0
    """AdamW weight decay on matrices (not norms, biases or embeddings)."""
    betas: tuple = (0.9, 0.999)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this value (0 turns clipping off)."""
    ema: float = 0.0
    """EMA decay of the weights used for sampling and evaluation (0 turns EMA off)."""
    precision: str = "bf16"
    """`bf16` (autocast) or `fp32`."""
    seed: int = 0
    """Seeds data order, noise and initialisation."""
    threads: int = 0
    """torch threads (0: leave torch's default)."""
    log_every: int = 10
    """Steps between metric lines in metrics.jsonl."""
    eval_every: int = 200
    """Steps between validation bounds (0: only at the end)."""
    eval_batches: int = 4
    """Validation batches per evaluation."""
    checkpoint_every: int = 200
    """Steps between checkpoints."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept on disk."""
    nonfinite: str = "stop"
    """On a NaN / inf loss: `stop` (keep the last good checkpoint) or `skip` the step."""
    strategy: str = "ddp"
    """Under many processes (`torchrun`, `accelerate launch`): `ddp` (every process holds the whole model) or
    `fsdp` (each block's weights, gradients and optimizer state sharded over the processes). One process
    ignores it."""
    compile: bool = False
    """Compile each transformer block with `torch.compile` (a GPU speed-up; the first steps are slow)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass instead of storing them (less memory, ~30%
    more compute)."""
    cond_dropout: float = 0.0
    """Seq2seq: probability that a training sequence's source is replaced by [PAD] (the null condition), so that
    one model is both conditional and unconditional (classifier-free guidance, Ho & Salimans 2022)."""
    log_to: tuple[str, ...] = ("jsonl",)
    """Where metrics go: `jsonl` (metrics.jsonl, always: loss.png and --resume read it) and `tensorboard` (event files
    in RUN/tensorboard: loss, validation bound, learning rate, tok/s, and sample texts at each validation; needs
    the tensorboard extra). See textdiff/tensorboard_log.py."""

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum", "lr"):
            _check_positive(f"train.{name}", getattr(self, name))
        for name in ("warmup_steps", "weight_decay", "grad_clip", "log_every", "eval_every", "threads"):
            _check_positive(f"train.{name}", getattr(self, name), allow_zero=True)
        _check_positive("train.checkpoint_every", self.checkpoint_every)
        _check_positive("train.keep_checkpoints", self.keep_checkpoints)
        _check_positive("train.eval_batches", self.eval_batches)
        _check_unit("train.min_lr_ratio", self.min_lr_ratio)
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"train.ema={self.ema!r} must lie in [0, 1)")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"train.batch_size={self.batch_size} must be divisible by train.grad_accum={self.grad_accum}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"train.betas={list(self.betas)!r} must be two numbers in [0, 1)")
        _check_choice("train.precision", self.precision, ("bf16", "fp32"))
        _check_choice("train.nonfinite", self.nonfinite, ("stop", "skip"))
        if not 0 <= self.seed < 2 ** 32:  # data order seeds torch with seed * 1_000_003 + epoch
            raise ValueError(f"train.seed={self.seed} must lie in [0, 2**32)")
        _check_choice("train.strategy", self.strategy, ("ddp", "fsdp"))
        _check_unit("train.cond_dropout", self.cond_dropout)
        if "jsonl" not in self.log_to or not set(self.log_to) <= {"jsonl", "tensorboard"}:
            raise ValueError(f"train.log_to={list(self.log_to)!r}: list jsonl (always written) and optionally "
                             "tensorboard, e.g. [jsonl, tensorboard]")


@dataclass(frozen=True)
class SampleConfig:
    """Defaults for `textdiff sample` / `infill` and the samples printed after training."""

    sampler: str = "ancestral"
    """Registered sampler: see `textdiff.sampling.SAMPLERS`."""
    steps: int = 128
    """Denoising steps (the masked confidence sampler needs steps <= length)."""
    length: Optional[int] = None
    """Generated length in tokens (default: data.max_length)."""
    temperature: float = 1.0
    """Softmax temperature on the x0 logits (0: greedy)."""
    top_k: int = 0
    """Keep the k most likely tokens (0: off)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1: off)."""
    block_size: int = 0
    """Semi-autoregressive blocks of this many tokens, left to right (0: one block)."""
    threshold: float = 0.0
    """Masked confidence sampler: also reveal, every step, each draw whose probability is at least this (0: off;
    Fast-dLLM's confidence-aware parallel decoding). The steps become a ceiling."""
    joint_edits: bool = False
    """Edit back-end: a run of adjacent edits (a phrase rewritten) applies in one step, not edit by edit."""
    eta: float = 0.0
    """DDIM stochasticity for Gaussian back-ends: 0 deterministic, 1 the DDPM posterior (sampler `ddim`)."""
    clamp: bool = False
    """Gaussian back-ends: snap every x0 estimate to its nearest token embedding (Diffusion-LM's clamping trick)."""
    num_samples: int = 4
    """Samples printed when training ends."""
    infill: Optional[str] = None
    """An infill template run when training ends, e.g. `The [MASK:3] of the LORD`."""
    guidance_scale: float = 0.0
    """Seq2seq: classifier-free guidance scale w: (1 + w) conditional - w unconditional, in the back-end's own
    output space (0: plain conditional sampling; needs a model trained with train.cond_dropout > 0)."""
    mbr: int = 1
    """Seq2seq: minimum Bayes risk decoding: draw this many candidates per source and return the one with the
    highest expected BLEU against the others (1: off)."""

    def __post_init__(self):
        from textdiff.sampling import SAMPLERS

        _check_choice("sample.sampler", self.sampler, tuple(sorted(SAMPLERS)))
        _check_positive("sample.steps", self.steps)
        if self.length is not None:
            _check_positive("sample.length", self.length)
        _check_positive("sample.temperature", self.temperature, allow_zero=True)
        _check_positive("sample.top_k", self.top_k, allow_zero=True)
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sample.top_p={self.top_p!r} must lie in (0, 1]")
        _check_positive("sample.block_size", self.block_size, allow_zero=True)
        _check_unit("sample.threshold", self.threshold)
        _check_unit("sample.eta", self.eta)
        _check_positive("sample.num_samples", self.num_samples, allow_zero=True)
        _check_positive("sample.guidance_scale", self.guidance_scale, allow_zero=True)
        _check_positive("sample.mbr", self.mbr)
        if self.infill is not None:  # checked now, not after a whole training run
            from textdiff.infill import parse_template

            try:
                parse_template(self.infill)
            except TextdiffError as e:
                raise ValueError(f"sample.infill: {e}") from None


@dataclass(frozen=True)
class Recipe:
    """A whole recipe: what to train and how."""

    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    name: str = "run"
    """Run name; the run directory defaults to runs/<name>."""
    out_dir: Optional[str] = None
    """Run directory (default: runs/<name>)."""

    def __post_init__(self):
        from textdiff.noising import BACKENDS

        if self.backend.name == "masked" and self.model.time_conditioning and self.backend.mask_sampling == "count":
            raise ValueError("backend.mask_sampling=count integrates t out and needs model.time_conditioning: false; "
                             "set backend.mask_sampling: time for a time-conditioned denoiser")
        seq2seq = self.data.source_field is not None
        if self.model.segments and not seq2seq:
            raise ValueError("model.segments=true needs a seq2seq recipe: set data.source_field")
        if self.model.segments and self.backend.name == "ar":
            raise ValueError("model.segments=true is for the bidirectional back-ends; the ar baseline reads [SEP]")
        if self.train.cond_dropout > 0 and not seq2seq:
            raise ValueError("train.cond_dropout > 0 needs a seq2seq recipe: set data.source_field")
        if self.sample.infill and "[...]" in self.sample.infill and not BACKENDS[self.backend.name].variable_length:
            raise ValueError(f"sample.infill: [...] (a span of unknown length) needs the edit back-end; the "
                             f"{self.backend.name} back-end fills holes of a fixed length: write [MASK:n]")
        if self.backend.name == "edit" and self.backend.edit_prior == "source" and not seq2seq:
            raise ValueError("backend.edit_prior=source revises the source into the target: it needs a seq2seq recipe "
                             "(data.source_field); use random or empty")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def run_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path("runs") / self.name


SECTIONS = {"data": DataConfig, "model": ModelConfig, "backend": BackendConfig, "tokenizer": TokenizerConfig,
            "train": TrainConfig, "sample": SampleConfig}


def _convert(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check a YAML value against a dataclass field's type; ints are accepted for floats, nothing else coerces."""
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _convert(value, args[0], key, source)
    if hint is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TextdiffError(f"{source}: {key} must be a list, got {value!r}")
        element = (typing.get_args(hint) or (float,))[0]  # tuple[str, ...]: str; a bare tuple holds floats
        return tuple(_convert(v, element, key, source) for v in value)
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str)}[hint]
    if not ok(value):
        raise TextdiffError(f"{source}: {key} must be {hint.__name__}, got {value!r} ({type(value).__name__})")
    if hint is float:
        try:
            return float(value)
        except OverflowError:
            raise TextdiffError(f"{source}: {key} is too large for a float (a {value.bit_length()}-bit integer)") from None
    return value


def _build(cls: type, raw: Any, prefix: str, source: str):
    if not isinstance(raw, dict):
        raise TextdiffError(f"{source}: section '{prefix}' must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            raise TextdiffError(f"{source}: unknown key '{prefix}.{key}'; allowed keys: {', '.join(names)}")
        kwargs[key] = _convert(value, hints[key], f"{prefix}.{key}", source)
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise TextdiffError(f"{source}: {e}") from None


def recipe_from_dict(raw: Any, source: str = "<recipe>") -> Recipe:
    """Build a Recipe from a plain mapping (as read from YAML or a run's config.json)."""
    if not isinstance(raw, dict):
        raise TextdiffError(f"{source}: a recipe must be a YAML mapping with sections {', '.join(SECTIONS)}")
    raw = {k: v for k, v in raw.items() if k != "type"}
    allowed = list(SECTIONS) + ["name", "out_dir"]
    for key in raw:
        if key not in allowed:
            raise TextdiffError(f"{source}: unknown key '{key}'; allowed keys: {', '.join(allowed)}")
    if "data" not in raw:
        raise TextdiffError(f"{source}: the 'data' section is required (data.path names the corpus)")
    sections = {name: _build(cls, raw.get(name) or {}, name, source) for name, cls in SECTIONS.items()}
    top = {k: _convert(raw[k], Optional[str], k, source) for k in ("name", "out_dir") if k in raw}
    try:
        return Recipe(**sections, **top)
    except ValueError as e:
        raise TextdiffError(f"{source}: {e}") from None


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `3e-4` and `1.0e3` as floats, as YAML 1.2 does (PyYAML's YAML 1.1 needs `3.0e-4`)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=3e-4` -> (['train', 'lr'], 0.0003); the value is parsed as YAML."""
    if "=" not in text:
        raise TextdiffError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.lr=3e-4")
    key, value = text.split("=", 1)
    try:
        parsed = _yaml(value) if value.strip() else None
    except (yaml.YAMLError, ValueError):  # ValueError: an integer of more than 4300 digits
        raise TextdiffError(f"--set {text!r}: the value is not valid YAML") from None
    return key.strip().split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = copy.deepcopy(raw)  # YAML may hold dates and sets, which JSON cannot copy
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            if node.get(part) is None:  # absent, or an empty section (`train:` in YAML)
                node[part] = {}
            if not isinstance(node[part], dict):
                raise TextdiffError(f"--set {text!r}: '{part}' is not a section")
            node = node[part]
        node[path[-1]] = value
    return raw


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise TextdiffError(f"{path}: recipe file not found")
    try:
        return _yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise TextdiffError(f"{path}: not a UTF-8 text file") from None
    except ValueError as e:  # a YAML constructor's own error, e.g. an integer of more than 4300 digits
        raise TextdiffError(f"{path}: invalid YAML ({str(e).splitlines()[0][:120]})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise TextdiffError(f"{path}: invalid YAML{where}") from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply `--set` overrides and validate everything."""
    raw = read_yaml(path)
    if overrides and (raw is None or isinstance(raw, dict)):  # a non-mapping recipe is reported as such below
        raw = apply_overrides(raw or {}, overrides)
    return recipe_from_dict(raw, str(path))
