"""Fewer sampling steps by distillation: a student learns to do in one step what its teacher does in two.

embedding (Gaussian): progressive distillation, Salimans & Ho (ICLR 2022), Algorithm 2. On the student's grid of
    N steps, t = i/N, t' = t - 0.5/N, t'' = t - 1/N and z_t ~ q(z_t | x). Two deterministic DDIM steps of the
    teacher take z_t -> z_t' -> z_t''; the target is the x for which one DDIM step t -> t'' lands on z_t'':
        x~ = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t)      (their eq. 7),
    and the loss is the paper's truncated-SNR weighting, max(SNR_t, 1) * |x~ - x0_hat_student(z_t)|^2 / d.
    A guided teacher (classifier-free, Meng et al. 2023) is distilled by passing `guidance(pred, z_t, t) -> pred`:
    the teacher's two steps then use the guided x0 estimate, the sampler's own guidance hook.
masked: self-distillation through time (SDTT, Deschenaux & Gulcehre 2024). x_t ~ q(x_t | x) at t = i/N; the
    teacher takes one ancestral step t -> t - 0.5/N and predicts x0 again; its x0 distribution there is the target
    of the student's one-step prediction at t (at the tokens that first step revealed, SDTT's one-hot on the drawn
    token is replaced by its expectation, the teacher's first distribution: a Rao-Blackwellised target):
        KL(p_teacher(x0 | x_mid) || p_student(x0 | x_t)) averaged over the positions masked in x_t.
    A block model: t per block, each prediction beside the clean sequence (each block given the clean ones before).
Each stage halves the steps (the student of stage k is the teacher of stage k + 1) and is a normal training run
(textdiff.training.Trainer with the distillation loss as its objective: checkpoints, EMA and --resume like any
run) in its own run directory, whose config.json holds the student's recipe (sample.steps halved) and a
"distillation" record of its lineage.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from textdiff import rundir
from textdiff.errors import TextdiffError
from textdiff.noising.base import Batch, LossOutput, block_of, ddim_update, per_token
from textdiff.registry import Registry
from textdiff.training import Objective, Trainer

DISTILLERS = Registry("distiller")
"""Back-end name -> loss(teacher, student, backend, batch, steps, generator, guidance) -> LossOutput."""


@dataclass(frozen=True)
class DistillConfig:
    """One `textdiff distill` invocation."""

    stages: int = 1
    """Halvings of the step count; stage k's student samples in steps_start / 2**k steps."""
    steps_start: int = 64
    """The first teacher's sampling steps (default on the command line: its recipe's sample.steps)."""
    iters: int = 400
    """Optimizer steps per stage."""
    lr: float = 1e-4
    """AdamW learning rate, decayed linearly to 0 over each stage."""
    batch_size: int = 32
    """Sequences per optimizer step."""
    seed: int = 0
    """Seeds the data order and the noise of every step."""
    student_dropout: bool = False
    """Train the student with its recipe's dropout. Off by default: the target is the teacher's deterministic
    (eval-mode) output and the student samples in eval mode, so matching it under dropout only adds noise and a
    train/eval mismatch."""
    ema: float = 0.0
    """EMA decay of the student's weights (0: off; a stage is short, so an EMA mostly keeps the teacher)."""

    def __post_init__(self):
        for name in ("stages", "steps_start", "iters", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"distill.{name}={getattr(self, name)} must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"distill.lr={self.lr} must be > 0")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"distill.ema={self.ema} must lie in [0, 1)")
        if self.steps_start % 2 ** self.stages:
            raise ValueError(f"distill.steps_start={self.steps_start} is not divisible by 2**stages={2 ** self.stages}: "
                             f"every stage halves the steps")


def student_times(n: int, steps: int, generator, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """t = i/N for i ~ U{1..N} on the student's grid of N steps, the teacher's midpoint t - 1/(2N) and the
    student's next time t - 1/N: each (n,)."""
    i = torch.randint(1, steps + 1, (n,), generator=generator, device=device).float()
    return i / steps, (i - 0.5) / steps, (i - 1.0) / steps


def _col(x: torch.Tensor) -> torch.Tensor:
    return x[:, None, None]


# --- Gaussian diffusion on embeddings: progressive distillation --------------------------------------------------


def ddim_target(z_t, z_s, a_t, s_t, a_s, s_s):
    """Salimans & Ho eq. 7: the x~ for which one DDIM step from z_t (time t) lands exactly on z_s (time s):
    z_s = a_s x~ + s_s (z_t - a_t x~) / s_t  solved for x~.  z_t, z_s (B, L, d); a_*/s_* (B,)."""
    r = _col(s_s / s_t)
    return (z_s - r * z_t) / (_col(a_s) - r * _col(a_t))


def teacher_prediction(backend, model, x_t, t, guidance: Optional[Callable] = None, context=None):
    """The prediction a step uses, guided when `guidance(pred, x_t, t) -> pred` is given (the samplers' hook: a
    classifier-free guided teacher is distilled by passing its combination here). A model trained with
    self-conditioning sees its own first pass, as in `bound`; a block model sees the clean sequence `context`
    beside x_t (its training pass: each block's noise given the clean blocks before it, as in block sampling)."""
    extra = {"context": context} if context is not None else {}
    pred = backend.predict(model, x_t, t, backend.first_pass(model, x_t, t, context), **extra)
    return guidance(pred, x_t, t) if guidance is not None else pred


@torch.no_grad()
def teacher_two_steps(backend, teacher, z, t, t_mid, s, guidance=None) -> torch.Tensor:
    """z_s (B, L, d) after two deterministic DDIM steps of the teacher, t -> t_mid -> s (each (B,))."""
    sched = teacher.noise.schedule
    at_t, at_mid, at_s = (sched.alpha_sigma(u) for u in (t, t_mid, s))
    z_mid = ddim_update(teacher_prediction(backend, teacher, z, t, guidance).x0, z, at_t, at_mid)
    return ddim_update(teacher_prediction(backend, teacher, z_mid, t_mid, guidance).x0, z_mid, at_mid, at_s)


@DISTILLERS.register("embedding")
def progressive_loss(teacher, student, backend, batch: Batch, steps: int, generator, guidance=None) -> LossOutput:
    """Salimans & Ho Algorithm 2, one batch: max(SNR_t, 1) |x~ - x0_hat|^2 / d averaged over counted tokens."""
    t, t_mid, s = student_times(batch.ids.shape[0], steps, generator, batch.ids.device)
    sched = teacher.noise.schedule
    (a_t, s_t), (a_s, s_s) = sched.alpha_sigma(t), sched.alpha_sigma(s)
    e = teacher.noise.table()[batch.ids]  # (B, L, d) the teacher's (= the frozen student's) embeddings
    z, _ = backend.noised(e, a_t, s_t, generator, batch.loss_mask)
    z_s = teacher_two_steps(backend, teacher, z, t, t_mid, s, guidance)
    target = ddim_target(z, z_s, a_t, s_t, a_s, s_s)
    x0_hat = teacher_prediction(backend, student, z, t).x0
    weight = torch.clamp((a_t / s_t) ** 2, min=1.0)  # (B,) truncated SNR
    sq = ((target - x0_hat) ** 2).mean(-1)  # (B, L)
    n = int(batch.loss_mask.sum())
    return LossOutput(loss=(weight[:, None] * sq * batch.loss_mask).sum() / max(n, 1), n_tokens=n)


# --- masked diffusion: self-distillation through time -------------------------------------------------------------


def x0_logits(backend, model, x_t, t, context=None):
    """x0 logits (B, L, V); a self-conditioned model sees its own first pass, as in `bound`, a block model the clean
    `context`."""
    return teacher_prediction(backend, model, x_t, t, context=context).logits


def block_student_times(ids: torch.Tensor, block: int, steps: int, generator):
    """`student_times` for a block model: each block of K positions on its own step i/N of the student's grid (a
    block sampler runs every block through the N steps), repeated over the block's positions: each (B, L)."""
    B, L = ids.shape
    times = student_times(B * (L // block), steps, generator, ids.device)
    return tuple(per_token(u.view(B, -1), block) for u in times)


@torch.no_grad()
def teacher_two_step_probs(backend, teacher, x_t, t, t_mid, generator, context=None) -> torch.Tensor:
    """SDTT's target (B, L, V): the teacher's x0 distribution after one ancestral step t -> t_mid at the positions
    still masked, and at the positions that step revealed the teacher's first distribution instead of SDTT's one-hot
    on the drawn token (its expectation given x_t: the same minimiser of the expected KL, with less variance)."""
    probs = torch.softmax(x0_logits(backend, teacher, x_t, t, context), dim=-1)
    x_mid = backend.reveal(probs, x_t, t, t_mid, generator)
    second = torch.softmax(x0_logits(backend, teacher, x_mid, t_mid, context), dim=-1)
    revealed = (x_t == backend.mask_id) & (x_mid != backend.mask_id)  # (B, L)
    return torch.where(revealed[..., None], probs, second)


def kl_div(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis from probabilities p and log-probabilities log_q, with 0 log 0 = 0."""
    return (torch.xlogy(p, p) - p * log_q.masked_fill(p == 0, 0.0)).sum(-1)


@DISTILLERS.register("masked")
def sdtt_loss(teacher, student, backend, batch: Batch, steps: int, generator, guidance=None) -> LossOutput:
    """SDTT, one batch: KL(teacher two-step || student one-step) over the positions masked in x_t. For a block model
    (BD3-LM) each block takes its own time on the grid and every prediction sees the clean sequence beside x_t, so
    both learn a block's steps given the clean blocks before it, which is what block sampling's cache holds."""
    if guidance is not None:
        raise TextdiffError("guided distillation is implemented for the embedding back-end only")
    K = block_of(teacher)
    if K:
        t, t_mid, _ = block_student_times(batch.ids, K, steps, generator)
    else:
        t, t_mid, _ = student_times(batch.ids.shape[0], steps, generator, batch.ids.device)
    context = batch.ids if K else None
    x_t = backend.corrupt(batch.ids, t, generator, noise_mask=batch.loss_mask)
    target = teacher_two_step_probs(backend, teacher, x_t, t, t_mid, generator, context)
    masked = x_t == backend.mask_id  # (B, L)
    log_q = torch.log_softmax(x0_logits(backend, student, x_t, t, context), dim=-1)[masked]  # (N, V)
    kl = kl_div(target[masked], log_q)  # (N,)
    n = int(masked.sum())
    return LossOutput(loss=kl.sum() / max(n, 1), n_tokens=n)


progressive_loss.method = "progressive"
progressive_loss.student_sampler = ("ddim", {"eta": 0.0})  # the deterministic sampler it was distilled for
sdtt_loss.method = "sdtt"
sdtt_loss.student_sampler = None  # the teacher's own sampler


# --- the stages: normal training runs with the distillation loss as objective ------------------------------------


def distiller(name: str):
    if name not in DISTILLERS:
        raise TextdiffError(f"the {name} back-end has no distillation; available: {', '.join(DISTILLERS)}")
    return DISTILLERS[name]


class DistillObjective(Objective):
    """The Trainer's objective for one stage: the back-end's distillation loss against the frozen teacher taking
    2 * steps steps; validated by the same loss on held-out batches (not a likelihood)."""

    def __init__(self, backend, teacher, steps: int, guidance: Optional[Callable] = None):
        super().__init__(backend)
        self.likelihood = False
        self.teacher, self.steps, self.guidance = teacher.eval().requires_grad_(False), steps, guidance
        self.loss_fn = distiller(backend.name)

    def loss(self, model, batch: Batch, generator) -> LossOutput:
        return self.loss_fn(self.teacher, model, self.backend, batch, self.steps, generator, self.guidance)


@torch.no_grad()
def discrepancy(teacher, student, backend, batches: list[Batch], steps: int, seed: int = 1234) -> float:
    """The distillation loss per counted token on fixed batches with fixed noise (seed + b for batch b), the student
    in eval mode: the number a stage's validation reports."""
    objective, was_training = DistillObjective(backend, teacher, steps), student.training
    student.eval()
    total, count = 0.0, 0
    for b, batch in enumerate(batches):
        value, n = objective.validate(student, batch, torch.Generator(batch.ids.device).manual_seed(seed + b))
        total, count = total + value, count + n
    student.train(was_training)
    return total / max(count, 1)


def student_recipe(recipe, cfg: DistillConfig, steps: int, out_dir: Path, stage: int):
    """The recipe of stage `stage`'s student: the teacher's model and data; training as cfg says (AdamW at cfg.lr
    decayed linearly to 0, no warm-up, no weight decay, no dropout unless cfg.student_dropout); sampling in `steps`
    steps with the sampler it was distilled for."""
    train = dataclasses.replace(recipe.train, steps=cfg.iters, lr=cfg.lr, batch_size=cfg.batch_size, grad_accum=1,
                                warmup_steps=0, lr_schedule="linear", min_lr_ratio=0.0, weight_decay=0.0,
                                betas=(0.9, 0.999), grad_clip=1.0, ema=cfg.ema, seed=cfg.seed, eval_every=0,
                                eval_batches=4, checkpoint_every=max(1, cfg.iters // 4))
    model = recipe.model if cfg.student_dropout else dataclasses.replace(recipe.model, dropout=0.0)
    sampler = distiller(recipe.backend.name).student_sampler
    sample = dataclasses.replace(recipe.sample, steps=steps)
    if sampler is not None:
        sample = dataclasses.replace(sample, sampler=sampler[0], options={**sample.options, **sampler[1]})
    return dataclasses.replace(recipe, model=model, train=train, sample=sample, out_dir=str(out_dir),
                               name=f"{recipe.name}-distill{stage}")


def student_model(recipe, teacher, vocab_size: int):
    """The student: the teacher's weights in a model built from the student's recipe; for the embedding back-end
    the diffused embeddings and the schedule stay frozen, so teacher and student share one space (the student
    learns the denoiser)."""
    from textdiff.models import build_model

    student = build_model(recipe, vocab_size, teacher.max_len)
    student.load_state_dict(teacher.state_dict())
    for name in ("embedding", "schedule"):
        part = getattr(student.noise, name, None)
        if isinstance(part, torch.nn.Module):
            part.requires_grad_(False)
    return student


def stage_data(recipe, tokenizer):
    """Training and validation Sequences of the teacher's recipe (validation None when it has none)."""
    from textdiff.data import build_sequences, load_texts

    if recipe.data.streaming:
        raise TextdiffError("distill reads its data into memory: the teacher's recipe streams (data.streaming: true)")
    texts = load_texts(recipe.data)
    train = build_sequences(recipe.data, tokenizer, texts["train"])
    val = build_sequences(recipe.data, tokenizer, texts["validation"]) if texts.get("validation") else None
    if len(train) < recipe.train.batch_size:
        raise TextdiffError(f"data: {len(train)} training sequences, fewer than --batch-size {recipe.train.batch_size}")
    return train, val


def held_out(val, batch_size: int, device, n_batches: int = 4) -> list[Batch]:
    if val is None or len(val) == 0:
        return []
    idx = torch.arange(min(len(val), n_batches * batch_size)).split(batch_size)
    return [val.batch(i).to(device) for i in idx]


def train_stage(pipe, teacher, student, recipe, device, guidance=None, resume: bool = False, progress: bool = True,
                lineage: Optional[dict] = None) -> dict:
    """Train `student` (a model built from the student `recipe`) against `teacher` in the run directory
    recipe.out_dir through the Trainer; returns the lineage record with the held-out loss before and after."""
    run = recipe.run_dir()
    rundir.check(recipe, run, resume)
    steps = recipe.sample.steps
    train, val = stage_data(recipe, pipe.tokenizer)
    objective = DistillObjective(pipe.backend, teacher, steps, guidance)
    trainer = Trainer(recipe, run, student, pipe.backend, train, val, device, objective=objective)
    record = dict(lineage or {})
    if not resume:
        record["held_out_loss_before"] = trainer.evaluate()  # the student is still the teacher: 2 vs 1 step
        rundir.write_new(run, recipe, pipe.tokenizer, teacher.max_len, distillation=record)
    trainer.fit(resume=resume, progress=progress)
    record = {**rundir.read_config(run).get("distillation", record), "held_out_loss_after": trainer.evaluate()}
    rundir.update_config(run, distillation=record)
    return record


def distill_run(run: str | Path, cfg: DistillConfig, out: Path, device: str = "cpu", guidance=None,
                progress: bool = True, resume: bool = False) -> list[Path]:
    """`textdiff distill`: cfg.stages stages from the run directory `run`, stage k written to out/stage{k}. With
    `resume`, finished stages are kept and the one in progress continues from its newest checkpoint."""
    from textdiff.pipeline import TextDiffusionPipeline

    pipe = TextDiffusionPipeline.from_pretrained(run, device=device)
    distiller(pipe.backend.name)
    stage_dirs = [Path(out) / f"stage{k}" for k in range(1, cfg.stages + 1)]
    taken = [str(d) for d in stage_dirs if d.exists()]
    if taken and not resume:
        raise TextdiffError(f"{taken[0]} already exists; choose another --out, delete it, or pass --resume")
    teacher, teacher_path, steps = pipe.model, str(run), cfg.steps_start
    for k, stage_dir in enumerate(stage_dirs, start=1):
        steps //= 2
        if not _finished(stage_dir):
            recipe = student_recipe(pipe.recipe, cfg, steps, stage_dir, k)
            lineage = {"stage": k, "steps": steps, "teacher_steps": 2 * steps, "teacher": teacher_path,
                       "method": DISTILLERS[pipe.backend.name].method, "iters": cfg.iters, "lr": cfg.lr,
                       "batch_size": cfg.batch_size, "seed": cfg.seed, "student_dropout": cfg.student_dropout}
            student = student_model(recipe, teacher, len(pipe.tokenizer))
            rec = train_stage(pipe, teacher, student, recipe, device, guidance, resume and stage_dir.exists(),
                              progress, lineage)
            if progress:
                print(f"stage {k}: {2 * steps} -> {steps} steps; held-out distillation loss "
                      f"{_fmt(rec['held_out_loss_before'])} (teacher as student) -> {_fmt(rec['held_out_loss_after'])}; "
                      f"wrote {stage_dir}")
        teacher, teacher_path = TextDiffusionPipeline.from_pretrained(stage_dir, device=device).model, str(stage_dir)
    return stage_dirs


def _finished(stage_dir: Path) -> bool:
    """A stage directory whose run wrote its final held-out loss."""
    return rundir.is_run(stage_dir) and "held_out_loss_after" in rundir.read_config(stage_dir).get("distillation", {})


def _fmt(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def lineage(run: str | Path) -> Optional[dict]:
    """The "distillation" record of a run directory's config.json (None for a run that was trained, not distilled)."""
    return json.loads((Path(run) / "config.json").read_text()).get("distillation")
