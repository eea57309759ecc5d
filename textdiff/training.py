"""The training loop: AdamW, warm-up + cosine decay, clipping, EMA, bf16 autocast, gradient accumulation,
periodic validation bound, atomic safetensors checkpoints and exact resume.

Exact resume: the data order of step k is a pure function of (seed, k) and every micro-batch reseeds its noise
generator and torch's RNG (dropout) from (seed, k, its index), so the state to restore is only the weights, the
EMA, the optimizer moments and the step. RNG states are saved too, for the record.

Many processes (torchrun / accelerate launch, see textdiff/distributed.py): the step's train.batch_size
sequences are cut into train.grad_accum micro-batches, numbered 0..grad_accum-1 whatever the world size; each
process runs grad_accum / world_size consecutive ones, and DDP / FSDP average the gradients. A micro-batch's data
and noise depend only on (seed, step, its number), so one process and N processes compute the same step (up to
float summation order), and a checkpoint (always unsharded) resumes on any world size dividing grad_accum.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from textdiff import checkpoint as ckpt
from textdiff import distributed as dist
from textdiff import resources, rundir
from textdiff.config import Recipe, TrainConfig
from textdiff.data import Sequences, batch_indices, drop_condition, flat_texts, segment_ids
from textdiff.errors import TextdiffError
from textdiff.evaluation.perplexity import exp_nats, ppl_text
from textdiff.noising.base import Batch, LossOutput
from textdiff.tensorboard_log import Metrics


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine (or linear) decay to cfg.lr * cfg.min_lr_ratio at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min((step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps), 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if cfg.lr_schedule == "cosine" else 1.0 - progress
    return floor + (cfg.lr - floor) * shape


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7919 + 17) % (2 ** 62)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay only on matrices inside the blocks (not embeddings, norms or biases)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and name.startswith("blocks.") else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


class EMA:
    """Exponential moving average of the parameters (used for sampling and evaluation)."""

    def __init__(self, model: torch.nn.Module, decay: float, names: list[str] | None = None):
        self.decay, self.names = decay, names
        self.shadow = {k: v.detach().clone() for k, v in self._tensors(model).items()}

    def _tensors(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        if self.names is None:
            return ckpt.model_tensors(model)
        sd = model.state_dict()  # sharded (FSDP): the names of the unsharded model, shards as values
        return {k: sd[k] for k in self.names}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in self._tensors(model).items():
            self.shadow[k].lerp_(v.detach(), 1.0 - self.decay)


@dataclass
class StepStats:
    loss: float
    grad_norm: float
    tokens: int


class Objective:
    """What a Trainer minimises and validates: by default the back-end's own loss, validated by its likelihood
    bound (nats per token; the loss itself for a back-end without a bound). Distillation brings its own."""

    def __init__(self, backend):
        self.backend = backend
        self.likelihood = backend.has_bound
        """`validate` gives a likelihood (nats per token, logged as val_nll and a perplexity), else a loss."""

    def loss(self, model, batch: Batch, generator) -> LossOutput:
        return self.backend.loss(model, batch, generator)

    def validate(self, model, batch: Batch, generator) -> tuple[float, int]:
        """(summed nats or loss, counted tokens) on one validation batch, the model in eval mode."""
        if self.likelihood:
            out = self.backend.bound(model, batch, 1, generator)
            return float(out.nll.sum()), int(out.n_tokens.sum())
        out = self.loss(model, batch, generator)
        return float(out.loss) * out.n_tokens, out.n_tokens


class Trainer:
    """Runs one recipe's training in a run directory; `fit()` trains to cfg.steps, resuming if asked."""

    def __init__(self, recipe: Recipe, run_dir: Path, model, backend, train: Sequences, val: Sequences | None,
                 device: torch.device | str = "cpu", world: dist.World = dist.World(),
                 objective: Objective | None = None):
        self.recipe, self.cfg, self.run_dir, self.world = recipe, recipe.train, Path(run_dir), world
        if self.cfg.grad_accum % world.size:
            raise TextdiffError(f"train.grad_accum={self.cfg.grad_accum} must be a multiple of the {world.size} processes: "
                                f"each runs grad_accum / {world.size} micro-batches of batch_size / grad_accum sequences "
                                f"(e.g. --set train.grad_accum={world.size})")
        self.device = torch.device(device)
        self.module = model.to(self.device)  # the unwrapped model (FSDP shards it in place)
        self.module.checkpoint_blocks = self.cfg.activation_checkpointing
        self.tensor_names = list(ckpt.model_tensors(self.module))
        self.model = dist.wrap_model(self.module, self.cfg.strategy, world, self.device)  # what the loss calls
        if self.cfg.compile:
            for block in self.module.blocks:
                block.compile()
        self.backend, self.train_seq, self.val_seq = backend, train, val
        self.objective = objective or Objective(backend)
        self.opt = build_optimizer(self.module, self.cfg)
        names = {id(p): n for n, p in self.module.named_parameters()}
        self.param_names = [names[id(p)] for g in self.opt.param_groups for p in g["params"]]
        self.sharded = dist.is_sharded(self.model)
        self.ema = EMA(self.module, self.cfg.ema, self.tensor_names) if self.cfg.ema > 0 else None
        self.step = 0

    def segmented(self, batch: Batch):
        """Seq2seq: the batch's segment ids (source / target) for every forward of the model inside the block."""
        return self.module.segmented(segment_ids(batch.ids, self.backend.special.sep))

    def autocast(self):
        if self.cfg.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # --- one optimizer step ----------------------------------------------------------------------------------

    def global_batch(self, step: int) -> Batch:
        """The step's train.batch_size sequences: a pure function of (seed, step) in memory, the next ones of a stream."""
        if isinstance(self.train_seq, Sequences):
            return self.train_seq.batch(batch_indices(len(self.train_seq), self.cfg.batch_size, step, self.cfg.seed))
        return self.train_seq.batch_at(step)

    def train_step(self, step: int) -> StepStats:
        cfg, world = self.cfg, self.world
        batch = self.global_batch(step)
        size = cfg.batch_size // cfg.grad_accum
        per_rank = cfg.grad_accum // world.size
        mine = range(world.rank * per_rank, (world.rank + 1) * per_rank)  # this process's micro-batches
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        total, tokens = 0.0, 0
        for j in mine:
            seed = step_seed(cfg.seed, step) + 2 * j
            torch.manual_seed(seed)
            gen = torch.Generator(self.device).manual_seed(seed + 1)
            micro = Batch(batch.ids[j * size:(j + 1) * size], batch.loss_mask[j * size:(j + 1) * size]).to(self.device)
            micro = drop_condition(micro, cfg.cond_dropout, self.backend.special.sep, self.backend.special.pad, gen)
            with dist.sync_gradients(self.model, sync=j == mine[-1]):
                with self.autocast(), self.segmented(micro):
                    out = self.objective.loss(self.model, micro, gen)
                (out.loss / (cfg.grad_accum / world.size)).backward()  # DDP / FSDP average over processes
            total += out.loss.item() / cfg.grad_accum
            tokens += micro.ids.numel()
        if world.distributed:
            total, tokens = world.sum([total, tokens])
            tokens = int(tokens)
        clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = float(dist.full_tensor(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)))
        if not (math.isfinite(total) and math.isfinite(grad_norm)):
            self._nonfinite(step, total, grad_norm)
            return StepStats(total, grad_norm, tokens)
        for group in self.opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        self.opt.step()
        self._check_weights(step)
        if self.ema is not None:
            self.ema.update(self.module)
        return StepStats(total, grad_norm, tokens)

    def _check_weights(self, step: int) -> None:
        """A finite loss and gradient can still give non-finite weights (an infinite learning rate, an overflowing
        moment): stop before such weights reach the EMA, a checkpoint or model.safetensors."""
        bad = sum(not bool(torch.isfinite(getattr(p, "to_local", lambda: p)()).all()) for p in self.module.parameters())
        if self.world.sum([float(bad)])[0] == 0:
            return
        last = ckpt.list_checkpoints(self.run_dir)
        kept = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written yet"
        raise TextdiffError(f"step {step + 1}: the optimizer step left NaN or inf in the weights (train.lr="
                            f"{lr_at(step, self.cfg)} at this step); training stopped and {kept} (lower train.lr)")

    def _nonfinite(self, step: int, loss: float, grad_norm: float) -> None:
        what = f"step {step + 1}: loss={loss} grad_norm={grad_norm} is not finite"
        self.opt.zero_grad(set_to_none=True)
        if self.cfg.nonfinite == "skip":
            if self.world.is_main:
                    print(f"textdiff: {what}; skipped that step (train.nonfinite=skip)")
            return
        last = ckpt.list_checkpoints(self.run_dir)
        kept = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written yet"
        raise TextdiffError(f"{what}; training stopped and {kept} (lower train.lr, or set train.nonfinite: skip)")

    # --- validation --------------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """The objective's validation number per token on the first eval_batches batches: nats per token (ELBO bound
        for diffusion, exact for AR), or for a back-end without a bound its training loss per token.

        Batch b draws its noise from seed 1234 + b; under many processes batch b runs on process b % world_size and
        the nll / token sums are all-reduced, so the number does not depend on the world size."""
        if self.val_seq is None or len(self.val_seq) == 0:
            return None
        self.module.eval()
        n = min(len(self.val_seq), self.cfg.eval_batches * self.cfg.batch_size)
        batches = torch.arange(n).split(self.cfg.batch_size)
        nll, tokens = 0.0, 0
        with self.autocast():
            for first in range(0, len(batches), self.world.size):  # every process runs as many forwards (FSDP)
                b = first + self.world.rank
                gen = torch.Generator(self.device).manual_seed(1234 + b)
                batch = self.val_seq.batch(batches[min(b, len(batches) - 1)]).to(self.device)
                with self.segmented(batch):
                    value, count = self.objective.validate(self.module, batch, gen)
                if b < len(batches):
                    nll, tokens = nll + value, tokens + count
        nll, tokens = self.world.sum([nll, tokens])
        return nll / max(tokens, 1)

    def _log_validation(self, metrics: "MetricsLog", bar, val: float) -> None:
        if not self.objective.likelihood:  # a loss, not a likelihood: no perplexity to show
            metrics.write(step=self.step, val_loss=val)
            bar.write(f"step {self.step}: validation loss {val:.4f} (no likelihood bound for this back-end)")
            return
        metrics.write(step=self.step, val_nll=val, val_ppl=math.exp(min(val, 50)))
        bar.write(f"step {self.step}: validation {val:.4f} nats/token (ppl {ppl_text(exp_nats(val))})")

    # --- checkpoints -----------------------------------------------------------------------------------------

    def weights_for_inference(self) -> dict[str, torch.Tensor]:
        return self.ema.shadow if self.ema is not None else ckpt.model_tensors(self.module)

    def _full_model(self) -> dict[str, torch.Tensor]:
        """Unsharded weights (a collective under FSDP: every process calls it; rank 0 gets the tensors)."""
        if not self.sharded:
            return ckpt.model_tensors(self.module)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: sd[k] for k in self.tensor_names} if self.world.is_main else {}

    def _full_optimizer(self) -> dict:
        """The optimizer state with parameters numbered as in one process (a collective under FSDP)."""
        if not self.sharded:
            return self.opt.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        sd = get_optimizer_state_dict(self.model, self.opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.world.is_main:
            return {}
        number = {name: i for i, name in enumerate(self.param_names)}
        return {"state": {number[k]: v for k, v in sd["state"].items()},
                "param_groups": [{**g, "params": [number[k] for k in g["params"]]} for g in sd["param_groups"]]}

    def save(self) -> None:
        """Write a checkpoint of unsharded tensors; only rank 0 writes, the others wait for it."""
        weights, opt_state = self._full_model(), self._full_optimizer()
        ema = {k: dist.full_tensor(v) for k, v in self.ema.shadow.items()} if self.ema is not None else None
        if self.world.is_main:
            ckpt.check_finite(ema if ema is not None else weights, self.run_dir / "model.safetensors")
            opt_tensors, opt_meta = ckpt.optimizer_state_tensors(opt_state)
            opt_tensors["rng.torch"] = torch.get_rng_state()
            tag = {ckpt.BACKEND_KEY: self.recipe.backend.name}
            files = {"model": (weights, tag), "trainer": (opt_tensors, opt_meta)}
            if ema is not None:
                files["ema"] = (ema, tag)
            state = {"step": self.step, "data_position": self.step * self.cfg.batch_size, "seed": self.cfg.seed,
                     "lr": lr_at(max(self.step - 1, 0), self.cfg)}
            ckpt.write_checkpoint(self.run_dir, self.step, files, state, self.cfg.keep_checkpoints)
            ckpt.save_tensors(self.run_dir / "model.safetensors", ema if ema is not None else weights, tag)
        self.world.barrier()

    def restore(self) -> bool:
        """Load the newest checkpoint (every process reads it); False when there is none."""
        found = ckpt.list_checkpoints(self.run_dir)
        if not found:
            return False
        last = found[-1]
        try:
            self._load_checkpoint(last)
        except TextdiffError as e:
            raise TextdiffError(f"{e}; to resume from the checkpoint before it (or from the start), delete {last}") from None
        return True

    def _load_checkpoint(self, last: Path) -> None:
        state = ckpt.read_state(last)
        ckpt.check_backend(last / "model.safetensors", self.recipe.backend.name)
        weights = ckpt.load_tensors(last / "model.safetensors")
        if self.sharded:
            self._load_sharded(weights, ckpt.read_optimizer_state(last / "trainer.safetensors"), last)
        else:
            ckpt.load_model_tensors(self.module, weights, last / "model.safetensors")
            ckpt.load_optimizer(self.opt, last / "trainer.safetensors")
        rng = ckpt.load_tensors(last / "trainer.safetensors").get("rng.torch")
        if rng is not None and rng.dtype == torch.uint8 and rng.shape == torch.get_rng_state().shape:
            torch.set_rng_state(rng)  # for the record only: every step reseeds itself
        if self.ema is not None:
            saved = ckpt.load_tensors(last / "ema.safetensors")
            ckpt.check_fits(self.ema.shadow, saved, last / "ema.safetensors")
            self.ema.shadow = {k: dist.shard_like(saved[k], v) for k, v in self.ema.shadow.items()}
        self.step = state["step"]

    def _load_sharded(self, weights: dict, opt_state: dict, where: Path) -> None:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        if sorted(weights) != sorted(self.tensor_names):
            raise TextdiffError(f"{where}: weights do not fit this model")
        options = StateDictOptions(full_state_dict=True, strict=False)  # tied weights are stored once
        set_model_state_dict(self.model, weights, options=options)
        named = {"state": {self.param_names[i]: v for i, v in opt_state["state"].items()},
                 "param_groups": [{**g, "params": [self.param_names[i] for i in g["params"]]}
                                  for g in opt_state["param_groups"]]}
        set_optimizer_state_dict(self.model, self.opt, optim_state_dict=named, options=options)

    # --- the loop ----------------------------------------------------------------------------------------------

    def fit(self, resume: bool = False, progress: bool = True, ready=None) -> None:
        """Train to cfg.steps; `ready()` runs on rank 0 once the checkpoint (if any) has loaded, before anything is
        written (a failing --resume changes nothing)."""
        from tqdm.auto import tqdm

        main = self.world.is_main
        if resume and self.restore() and main:
            print(f"textdiff: resumed from step {self.step}")
        if ready is not None and main:
            ready()
        if hasattr(self.train_seq, "seek"):
            self.train_seq.seek(self.step)
        metrics = Metrics(MetricsLog(self.run_dir / "metrics.jsonl", self.step), self.cfg.log_to, self.run_dir,
                          self.step) if main else None
        bar = tqdm(total=self.cfg.steps, initial=self.step, disable=not (progress and main), unit="step", dynamic_ncols=True,
                   mininterval=0.1 if sys.stderr.isatty() else 30.0)  # a log file gets a line every 30 s
        try:
            self._loop(bar, metrics)
        finally:  # an error is printed after the bar's own line, never glued to it
            bar.close()
            if metrics is not None:
                metrics.close()
        if main:
            plot_losses(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png")
            from textdiff.modelcard import write_model_card

            write_model_card(self.run_dir)

    def _loop(self, bar, metrics: "Metrics | None") -> None:
        """Train to cfg.steps; `metrics` is None on every process but rank 0."""
        busy, tokens = 0.0, 0  # seconds spent in training steps (not evaluation or checkpoints)
        pace = resources.Pace()
        while self.step < self.cfg.steps:
            t0 = time.perf_counter()
            stats = self.train_step(self.step)
            busy += time.perf_counter() - t0
            slow = pace.add(time.perf_counter() - t0)
            if slow is not None and metrics is not None:
                bar.write(f"textdiff: {slow}")
            self.step += 1
            tokens += stats.tokens
            tok_s = tokens / max(busy, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{stats.loss:.3f}", tok_s=f"{tok_s:,.0f}", refresh=False)
            if metrics is not None and (self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps):
                metrics.write(step=self.step, loss=stats.loss, grad_norm=stats.grad_norm,
                              lr=lr_at(self.step - 1, self.cfg), tok_per_s=round(tok_s, 1))
            if self._due(self.cfg.eval_every):
                val = self.evaluate()
                if val is not None and metrics is not None:
                    self._log_validation(metrics, bar, val)
                    metrics.validated(self.step, self.recipe, self.module, self.backend, self.sharded)
            if self._due(self.cfg.checkpoint_every):
                self.save()

    def _due(self, every: int) -> bool:
        return self.step == self.cfg.steps or (every > 0 and self.step % every == 0)


class MetricsLog:
    """metrics.jsonl, one object per line; on resume, lines past the resumed step are dropped."""

    def __init__(self, path: Path, start_step: int):
        self.path = path
        lines = path.read_text().splitlines() if path.exists() else []
        kept = [ln for ln in lines if _line_step(ln) is not None and _line_step(ln) <= start_step]
        ckpt.atomic_write_bytes(path, "".join(ln + "\n" for ln in kept).encode())

    def write(self, **row) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def _line_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def plot_losses(metrics: Path, out: Path) -> None:
    """Training loss and validation bound against step, as a PNG (written atomically)."""
    import matplotlib.pyplot as plt

    fig = loss_figure([json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()])
    ckpt.atomic_write_figure(out, fig, dpi=100)  # a unique temp name, so two writers never collide
    plt.close(fig)


def loss_figure(rows: list[dict]):
    """The figure of metrics.jsonl rows: the training loss as a line and the validation numbers as marked points,
    on a log axis (a large early loss would flatten the rest on a linear one; symlog where a value is <= 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    key = "val_nll" if any("val_nll" in r for r in rows) else "val_loss"
    val = [(r["step"], r[key]) for r in rows if key in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", alpha=0.8)
    if val:
        ax.plot(*zip(*val), "o--", markersize=5, label="validation (nats/token)" if key == "val_nll" else
                "validation loss")
    values = [v for _, v in train + val]
    ax.set_yscale("log" if values and min(values) > 0 else "symlog")
    ax.set_xlabel("step")
    ax.set_ylabel("nats / token (log scale)")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


# --- from a recipe to a trained run directory ---------------------------------------------------------------------


def train_recipe(recipe: Recipe, resume: bool = False, progress: bool = True, device: str | None = None) -> Path:
    """Tokenizer, data, model, training: everything `textdiff train` does. Returns the run directory.

    Under torchrun / accelerate launch every process runs this: rank 0 prepares the data and writes the tokenizer
    and config first, the others then load them; only rank 0 writes files, holding the run directory's lock."""
    world = dist.init_world(device)
    run_dir = recipe.run_dir()
    rundir.check(recipe, run_dir, resume)
    where = dist.device_for(world, device)
    resources.check_training_fits(recipe, recipe.tokenizer.vocab_size, str(where))
    with rundir.claim(recipe, run_dir, resume) if world.is_main else contextlib.nullcontext():
        world.barrier()  # every process has checked the run directory before rank 0 writes into it
        _set_threads(recipe.train.threads, world)
        _train(recipe, run_dir, resume, progress, where, world)
    return run_dir


def _set_threads(threads: int, world: dist.World) -> None:
    """train.threads, or with 0 on one process: torch's default on an idle machine, the free cores beside others."""
    if not threads and not world.distributed:
        chosen = resources.threads_beside_others()
        if chosen is not None:
            threads, why = chosen
            print(f"textdiff: {why}")
    if threads:
        torch.set_num_threads(threads)


def _train(recipe: Recipe, run_dir: Path, resume: bool, progress: bool, where: torch.device, world: dist.World):
    from textdiff.models import build_model
    from textdiff.noising import get_backend
    from textdiff.tokenization import special_tokens

    with world.main_first():
        tokenizer, train, val = _prepare_data(recipe, run_dir, resume, world)
    torch.manual_seed(recipe.train.seed)
    model = build_model(recipe, len(tokenizer), recipe.data.max_length)
    backend = get_backend(recipe.backend, special_tokens(tokenizer), len(tokenizer))
    if world.is_main:
        procs = f" on {world.size} processes ({recipe.train.strategy})" if world.distributed else ""
        print(f"textdiff: {recipe.backend.name} model, {model.num_params() / 1e6:.1f}M parameters; "
              f"{_describe(train)} of {recipe.data.max_length} tokens; run directory {run_dir}{procs}")
    ready = (lambda: rundir.update_recipe(run_dir, recipe)) if resume else None
    Trainer(recipe, run_dir, model, backend, train, val, where, world).fit(resume=resume, progress=progress,
                                                                           ready=ready)


def _data_warnings(recipe: Recipe, val, texts) -> None:
    """One line each: a run without validation data; an infill template whose words the training `texts` never use."""
    from textdiff.data import source_name
    from textdiff.errors import warn
    from textdiff.infill import foreign_words

    data = recipe.data
    if val is None:
        warn(f"no validation data: {source_name(data)} names no validation split and data.holdout holds none out, so "
             f"training reports no validation bound; set data.holdout, data.splits or a split column (docs/data.md)")
    if recipe.sample.infill:
        missing = foreign_words(recipe.sample.infill, texts)
        if missing:
            warn(f"sample.infill {recipe.sample.infill!r}: the word(s) {', '.join(missing[:4])} occur nowhere in the "
                 f"training text of {source_name(data)}; a template from another corpus? set sample.infill (or null)")


def _describe(train) -> str:
    return f"{len(train):,} training sequences" if isinstance(train, Sequences) else "streamed training sequences"


def _prepare_data(recipe: Recipe, run_dir: Path, resume: bool, world: dist.World):
    """Tokenizer and train / validation sequences; rank 0 also writes the tokenizer and config.json."""
    from textdiff.data import build_sequences, load_texts, subsample

    if recipe.data.streaming:
        from itertools import islice

        from textdiff.streaming import prepare_streaming, stream_texts

        tokenizer, train, val = prepare_streaming(recipe, run_dir, resume, world)
        if world.is_main and not resume:
            _data_warnings(recipe, val, islice(stream_texts(recipe.data, "train"), recipe.data.tokenizer_examples))
        return tokenizer, train, val
    texts = load_texts(recipe.data)
    tokenizer = rundir.tokenizer_for(recipe, run_dir, flat_texts(texts["train"]), resume or not world.is_main)
    train = build_sequences(recipe.data, tokenizer, texts["train"])
    if recipe.data.train_sequences:
        train = subsample(train, recipe.data.train_sequences)
    val = build_sequences(recipe.data, tokenizer, texts["validation"]) if texts["validation"] else None
    if len(train) < recipe.train.batch_size:
        raise TextdiffError(f"data: {len(train)} training sequences of {recipe.data.max_length} tokens, fewer than "
                            f"train.batch_size={recipe.train.batch_size}; use more data or a smaller batch")
    if world.is_main:
        rundir.write_run_files(recipe, run_dir, tokenizer, resume)
        if not resume:
            _data_warnings(recipe, val, flat_texts(texts["train"]))
    return tokenizer, train, val

