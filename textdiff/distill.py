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
Each stage halves the steps (the student of stage k is the teacher of stage k + 1) and is written as a normal run
directory whose config.json holds the student's sample.steps and a "distillation" record of its lineage.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from textdiff import checkpoint as ckpt
from textdiff.errors import TextdiffError
from textdiff.noising.base import Batch, LossOutput
from textdiff.registry import Registry

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

    def __post_init__(self):
        for name in ("stages", "steps_start", "iters", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"distill.{name}={getattr(self, name)} must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"distill.lr={self.lr} must be > 0")
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


def ddim(x0, z, a_t, s_t, a_s, s_s):
    """Deterministic DDIM (Song et al. 2021, eq. 12, eta = 0) with per-sequence times: z (B, L, d), a_*/s_* (B,)."""
    eps = (z - _col(a_t) * x0) / _col(s_t)
    return _col(a_s) * x0 + _col(s_s) * eps


def ddim_target(z_t, z_s, a_t, s_t, a_s, s_s):
    """Salimans & Ho eq. 7: the x~ for which one DDIM step from z_t (time t) lands exactly on z_s (time s):
    z_s = a_s x~ + s_s (z_t - a_t x~) / s_t  solved for x~.  z_t, z_s (B, L, d); a_*/s_* (B,)."""
    r = _col(s_s / s_t)
    return (z_s - r * z_t) / (_col(a_s) - r * _col(a_t))


def gaussian_x0(backend, model, z, t, guidance: Optional[Callable] = None):
    """The x0 estimate (B, L, d) used by a DDIM step, guided when `guidance(pred, z, t) -> pred` is given (the
    samplers' hook: a classifier-free guided teacher is distilled by passing its combination here). A model trained
    with self-conditioning sees its own first pass, as in `bound`."""
    x0_prev = backend.predict(model, z, t).x0.detach() if model.cfg.self_conditioning else None
    pred = backend.predict(model, z, t, x0_prev)
    return (guidance(pred, z, t) if guidance is not None else pred).x0


@torch.no_grad()
def teacher_two_steps(backend, teacher, z, t, t_mid, s, guidance=None) -> torch.Tensor:
    """z_s (B, L, d) after two deterministic DDIM steps of the teacher, t -> t_mid -> s (each (B,))."""
    sched = teacher.noise.schedule
    (a_t, s_t), (a_m, s_m), (a_s, s_s) = (sched.alpha_sigma(u) for u in (t, t_mid, s))
    z_mid = ddim(gaussian_x0(backend, teacher, z, t, guidance), z, a_t, s_t, a_m, s_m)
    return ddim(gaussian_x0(backend, teacher, z_mid, t_mid, guidance), z_mid, a_m, s_m, a_s, s_s)


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
    x0_hat = gaussian_x0(backend, student, z, t, guidance=None)
    weight = torch.clamp((a_t / s_t) ** 2, min=1.0)  # (B,) truncated SNR
    sq = ((target - x0_hat) ** 2).mean(-1)  # (B, L)
    n = int(batch.loss_mask.sum())
    return LossOutput(loss=(weight[:, None] * sq * batch.loss_mask).sum() / max(n, 1), n_tokens=n)


# --- masked diffusion: self-distillation through time -------------------------------------------------------------


def ancestral_reveal(backend, probs, x_t, t, s, generator) -> torch.Tensor:
    """MDLM's ancestral step t -> s with per-sequence times (B,): each masked token revealed with probability
    (alpha_s - alpha_t) / (1 - alpha_t), drawn from probs (B, L, V)."""
    a_t, a_s = backend.schedule.alpha(t.double()), backend.schedule.alpha(s.double())
    p = torch.where(s <= 0, torch.ones_like(a_t), (a_s - a_t) / (1.0 - a_t).clamp_min(1e-12)).float()  # (B,)
    masked = x_t == backend.mask_id
    reveal = masked & (torch.rand(x_t.shape, generator=generator, device=x_t.device) < p[:, None])
    draw = torch.multinomial(probs.view(-1, probs.shape[-1]), 1, generator=generator).view(x_t.shape)
    return torch.where(reveal, draw, x_t)


def masked_x0_logits(backend, model, x_t, t):
    """x0 logits (B, L, V); a self-conditioned model sees its own first pass, as in `bound`."""
    x0_prev = backend._self_condition(model, x_t, t) if model.cfg.self_conditioning else None
    return backend.x0_logits(model, x_t, t, x0_prev)


@torch.no_grad()
def teacher_two_step_probs(backend, teacher, x_t, t, t_mid, generator) -> torch.Tensor:
    """SDTT's target (B, L, V): the teacher's x0 distribution after one ancestral step t -> t_mid at the positions
    still masked, and at the positions that step revealed the teacher's first distribution instead of SDTT's one-hot
    on the drawn token (its expectation given x_t: the same minimiser of the expected KL, with less variance)."""
    probs = torch.softmax(masked_x0_logits(backend, teacher, x_t, t), dim=-1)
    x_mid = ancestral_reveal(backend, probs, x_t, t, t_mid, generator)
    second = torch.softmax(masked_x0_logits(backend, teacher, x_mid, t_mid), dim=-1)
    revealed = (x_t == backend.mask_id) & (x_mid != backend.mask_id)  # (B, L)
    return torch.where(revealed[..., None], probs, second)


def kl_div(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis from probabilities p and log-probabilities log_q, with 0 log 0 = 0."""
    return (torch.xlogy(p, p) - p * log_q.masked_fill(p == 0, 0.0)).sum(-1)


@DISTILLERS.register("masked")
def sdtt_loss(teacher, student, backend, batch: Batch, steps: int, generator, guidance=None) -> LossOutput:
    """SDTT, one batch: KL(teacher two-step || student one-step) over the positions masked in x_t."""
    if guidance is not None:
        raise TextdiffError("guided distillation is implemented for the embedding back-end only")
    t, t_mid, _ = student_times(batch.ids.shape[0], steps, generator, batch.ids.device)
    x_t = backend.corrupt(batch.ids, t, generator, noise_mask=batch.loss_mask)
    target = teacher_two_step_probs(backend, teacher, x_t, t, t_mid, generator)
    masked = x_t == backend.mask_id  # (B, L)
    log_q = torch.log_softmax(masked_x0_logits(backend, student, x_t, t), dim=-1)[masked]  # (N, V)
    kl = kl_div(target[masked], log_q)  # (N,)
    n = int(masked.sum())
    return LossOutput(loss=kl.sum() / max(n, 1), n_tokens=n)


progressive_loss.method = "progressive"
progressive_loss.student_sample = {"sampler": "ddim", "eta": 0.0}  # the deterministic sampler it was distilled for
sdtt_loss.method = "sdtt"
sdtt_loss.student_sample = {}  # the teacher's own sampler


# --- the stages ---------------------------------------------------------------------------------------------------


def distiller(name: str):
    if name not in DISTILLERS:
        raise TextdiffError(f"the {name} back-end has no distillation; available: {', '.join(DISTILLERS)}")
    return DISTILLERS[name]


def make_student(teacher, dropout: bool = False):
    """A trainable copy of the teacher, in train mode (dropout on) only when `dropout`; for the embedding back-end
    the diffused embeddings and the schedule stay frozen, so teacher and student share one space (the student
    learns the denoiser)."""
    student = copy.deepcopy(teacher).train(dropout).requires_grad_(True)
    noise = getattr(student, "noise", None)
    for name in ("embedding", "schedule"):
        part = getattr(noise, name, None)
        if isinstance(part, torch.nn.Module):
            part.requires_grad_(False)
    return student


@torch.no_grad()
def discrepancy(teacher, student, backend, batches: list[Batch], steps: int, seed: int = 1234) -> float:
    """The distillation loss on fixed batches with fixed noise (seed + b for batch b), the student in eval mode."""
    loss, was_training = distiller(backend.name), student.training
    student.eval()
    total = 0.0
    for b, batch in enumerate(batches):
        gen = torch.Generator(batch.ids.device).manual_seed(seed + b)
        total += float(loss(teacher, student, backend, batch, steps, gen).loss)
    student.train(was_training)
    return total / max(len(batches), 1)


def distill_stage(teacher, backend, train, steps: int, cfg: DistillConfig, device, guidance=None, autocast=None,
                  log: Optional[Callable[[int, float], None]] = None, student=None):
    """One stage: a student (by default initialised from the teacher) trained for cfg.iters steps to take `steps`
    steps (the teacher takes 2 * steps). `train` is a Sequences. Returns the student."""
    from textdiff.data import batch_indices
    from textdiff.training import step_seed

    loss_fn = distiller(backend.name)
    teacher.eval().requires_grad_(False)
    student = make_student(teacher if student is None else student, cfg.student_dropout)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    for it in range(cfg.iters):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * (1.0 - it / cfg.iters)
        batch = train.batch(batch_indices(len(train), cfg.batch_size, it, cfg.seed)).to(device)
        gen = torch.Generator(device).manual_seed(step_seed(cfg.seed, it))
        with autocast() if autocast is not None else torch.autocast(torch.device(device).type, enabled=False):
            out = loss_fn(teacher, student, backend, batch, steps, gen, guidance)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if log is not None:
            log(it, out.loss.detach())  # converted to a float only when printed: no GPU sync per step
    return student.eval()


def write_student(pipe, student, out_dir: Path, lineage: dict) -> Path:
    """A normal run directory (config.json, model.safetensors, tokenizer) written into a temporary directory and
    renamed into place; its recipe samples with the student's steps by default."""
    recipe = pipe.recipe
    sample = dataclasses.replace(recipe.sample, steps=lineage["steps"],
                                 **DISTILLERS[recipe.backend.name].student_sample)
    recipe = dataclasses.replace(recipe, sample=sample, out_dir=str(out_dir),
                                 name=f"{recipe.name}-distill{lineage['stage']}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".tmp_{out_dir.name}_"))
    try:
        pipe.tokenizer.save_pretrained(str(tmp))
        ckpt.save_tensors(tmp / "model.safetensors", ckpt.model_tensors(student), {ckpt.BACKEND_KEY: recipe.backend.name})
        ckpt.atomic_write_json(tmp / "config.json", {
            "type": ckpt.CONFIG_TYPE, "model_type": ckpt.CONFIG_TYPE, "backend": recipe.backend.name, "recipe": recipe.to_dict(),
            "vocab_size": len(pipe.tokenizer), "max_len": pipe.model.max_len, "distillation": lineage})
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _data(recipe, tokenizer):
    """Training and validation Sequences of the teacher's recipe (validation None when it has none)."""
    from textdiff.data import build_sequences, load_texts

    if recipe.data.streaming:
        raise TextdiffError("distill reads its data into memory: the teacher's recipe streams (data.streaming: true)")
    texts = load_texts(recipe.data)
    train = build_sequences(recipe.data, tokenizer, texts["train"])
    val = build_sequences(recipe.data, tokenizer, texts["validation"]) if texts.get("validation") else None
    return train, val


def _held_out(val, batch_size: int, device, n_batches: int = 4) -> list[Batch]:
    if val is None or len(val) == 0:
        return []
    idx = torch.arange(min(len(val), n_batches * batch_size)).split(batch_size)
    return [val.batch(i).to(device) for i in idx]


def distill_run(run: str | Path, cfg: DistillConfig, out: Path, device: str = "cpu", guidance=None,
                progress: bool = True) -> list[Path]:
    """`textdiff distill`: cfg.stages stages from the run directory `run`, stage k written to out/stage{k}."""
    from textdiff.pipeline import TextDiffusionPipeline

    pipe = TextDiffusionPipeline.from_pretrained(run, device=device)
    distiller(pipe.backend.name)
    stage_dirs = [Path(out) / f"stage{k}" for k in range(1, cfg.stages + 1)]
    taken = [str(d) for d in stage_dirs if d.exists()]
    if taken:
        raise TextdiffError(f"{taken[0]} already exists; choose another --out or delete it")
    train, val = _data(pipe.recipe, pipe.tokenizer)
    if len(train) < cfg.batch_size:
        raise TextdiffError(f"data: {len(train)} training sequences, fewer than --batch-size {cfg.batch_size}")
    held = _held_out(val, cfg.batch_size, device)
    autocast = _autocast(pipe.recipe, device)
    teacher, teacher_path, steps = pipe.model, str(run), cfg.steps_start
    for k, stage_dir in enumerate(stage_dirs, start=1):
        steps //= 2
        before = discrepancy(teacher, teacher, pipe.backend, held, steps) if held else None
        student = distill_stage(teacher, pipe.backend, train, steps, cfg, device, guidance, autocast,
                                log=_logger(k, cfg.iters) if progress else None)
        after = discrepancy(teacher, student, pipe.backend, held, steps) if held else None
        lineage = {"stage": k, "steps": steps, "teacher_steps": 2 * steps, "teacher": teacher_path,
                   "method": DISTILLERS[pipe.backend.name].method,
                   "iters": cfg.iters, "lr": cfg.lr, "batch_size": cfg.batch_size, "seed": cfg.seed,
                   "student_dropout": cfg.student_dropout,
                   "held_out_loss_before": before, "held_out_loss_after": after}
        write_student(pipe, student, stage_dir, lineage)
        if progress:
            print(f"stage {k}: {2 * steps} -> {steps} steps; held-out distillation loss "
                  f"{_fmt(before)} (teacher as student) -> {_fmt(after)}; wrote {stage_dir}")
        teacher, teacher_path = student, str(stage_dir)
    return stage_dirs


def _autocast(recipe, device):
    """bf16 autocast when the teacher trained in bf16 (as the training loop does, on a CPU too), else float32."""
    if recipe.train.precision == "bf16":
        kind = torch.device(device).type
        return lambda: torch.autocast(kind, dtype=torch.bfloat16)
    return None


def _fmt(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _logger(stage: int, iters: int):
    """A progress bar over the stage's iterations (with ETA), and ten loss lines printed above it."""
    from tqdm.auto import tqdm

    every, bar = max(1, iters // 10), tqdm(total=iters, desc=f"distill stage {stage}", unit="iter", leave=False)

    def log(it: int, loss: torch.Tensor) -> None:
        bar.update(1)
        if (it + 1) % every == 0 or it + 1 == iters:
            bar.write(f"stage {stage}: iter {it + 1}/{iters} loss {float(loss):.4g}")
        if it + 1 == iters:
            bar.close()
    return log


def lineage(run: str | Path) -> Optional[dict]:
    """The "distillation" record of a run directory's config.json (None for a run that was trained, not distilled)."""
    return json.loads((Path(run) / "config.json").read_text()).get("distillation")
