"""Distillation (issue 10): the progressive-distillation target is exact, one stage lowers the two-step-vs-one-step
discrepancy it optimises (embedding and masked), students are normal run directories, bad input is one line."""

from __future__ import annotations

import json

import pytest
import torch

import dataclasses

from textdiff.distill import (DistillConfig, ddim_target, discrepancy, distill_run, lineage, progressive_loss,
                              student_model, student_recipe, student_times, teacher_two_steps)
from textdiff.noising.base import Batch
from tests.noising.test_embedding import ddim_step
from tests.tiny import B, batch, make


def _noised(model, backend, seed: int, t):
    gen = torch.Generator().manual_seed(seed)
    ids = batch(seed).ids
    a, s = model.noise.schedule.alpha_sigma(t)
    return ids, backend.noised(model.noise.table()[ids], a, s, gen)[0]


@pytest.mark.parametrize("i,steps", [(1, 4), (3, 4), (4, 4), (5, 8)])
def test_a_student_that_outputs_the_target_reproduces_the_teachers_two_ddim_steps_in_one(i, steps):
    """Salimans & Ho eq. 7: one DDIM step t -> t - 1/N from x~ lands exactly on the teacher's two steps."""
    torch.manual_seed(0)
    model, backend = make("embedding")
    t = torch.full((B,), i / steps)
    mid, s = t - 0.5 / steps, t - 1.0 / steps
    _, z = _noised(model, backend, 1, t)
    z_s = teacher_two_steps(backend, model, z, t, mid, s)
    sched = model.noise.schedule
    (a_t, s_t), (a_s, s_s) = sched.alpha_sigma(t), sched.alpha_sigma(s)
    x_tilde = ddim_target(z, z_s, a_t, s_t, a_s, s_s)
    one_step = ddim_step(model, backend, x_tilde, z, i / steps, (i - 1) / steps)  # the sampler's own step
    assert torch.allclose(one_step, z_s, atol=1e-4 * z_s.abs().max().item())
    teacher_one = ddim_step(model, backend, backend.predict(model, z, t).x0, z, i / steps, (i - 1) / steps)
    assert i == 1 or not torch.allclose(z_s, teacher_one, atol=1e-3)  # the teacher's own one step differs


def test_the_target_of_a_guided_exact_teacher_is_x0_itself():
    """The guidance hook sees every teacher evaluation; a teacher guided to the true x0 follows q's own DDIM path,
    so the target is that x0 exactly (whatever the times)."""
    model, backend = make("embedding")
    t = torch.tensor([1.0, 0.75, 0.5, 0.25])
    mid, s = t - 0.125, t - 0.25
    ids, z = _noised(model, backend, 2, t)
    e = model.noise.table()[ids]
    calls = []

    def guidance(pred, z_, t_):
        calls.append(t_.clone())
        return dataclasses.replace(pred, x0=e)

    z_s = teacher_two_steps(backend, model, z, t, mid, s, guidance)
    sched = model.noise.schedule
    x_tilde = ddim_target(z, z_s, *sched.alpha_sigma(t), *sched.alpha_sigma(s))
    assert torch.allclose(x_tilde, e, atol=1e-3) and len(calls) == 2
    assert torch.equal(calls[1], mid)


def test_student_times_lie_on_the_students_grid():
    t, mid, s = student_times(1000, 4, torch.Generator().manual_seed(0), "cpu")
    assert set((t * 4).round().tolist()) == {1.0, 2.0, 3.0, 4.0}
    assert torch.allclose(t - mid, torch.full_like(t, 0.125)) and torch.allclose(t - s, torch.full_like(t, 0.25))


def test_the_progressive_loss_is_zero_for_a_student_that_outputs_the_target(monkeypatch):
    model, backend = make("embedding")
    student = make("embedding")[0]
    b = batch(0)
    real = backend.predict
    captured = {}

    def predict(m, z, t, x0_prev=None):
        pred = real(m, z, t, x0_prev)
        if m is student:  # replay the teacher's two steps and answer with their x~
            sched = model.noise.schedule
            z_s = teacher_two_steps(backend, model, z, t, t - 0.5 / 4, t - 1 / 4)
            return dataclasses.replace(pred, x0=ddim_target(z, z_s, *sched.alpha_sigma(t), *sched.alpha_sigma(t - 1 / 4)))
        return pred
    monkeypatch.setattr(backend, "predict", predict)
    out = progressive_loss(model, student, backend, b, 4, torch.Generator().manual_seed(0))
    captured["zero"] = float(out.loss.detach())
    monkeypatch.setattr(backend, "predict", real)
    out = progressive_loss(model, student, backend, b, 4, torch.Generator().manual_seed(0))
    assert captured["zero"] < 1e-6 < float(out.loss.detach())


@pytest.mark.parametrize("dropout", [False, True])
def test_the_student_trains_without_dropout_unless_asked(dropout, tmp_path):
    """Matched to the teacher's eval-mode output, the student trains without dropout by default; it starts from the
    teacher's weights, all trainable (for the masked back-end)."""
    from tests.tiny import L
    from textdiff.config import DataConfig, ModelConfig, Recipe
    from textdiff.models import build_model
    from textdiff.noising import options_for

    recipe = Recipe(data=DataConfig(path="unused.jsonl", max_length=L), backend=options_for("masked"),
                    model=ModelConfig(n_layer=2, n_embd=32, n_head=2, dropout=0.3))
    teacher = build_model(recipe, 24, L).eval()
    cfg = DistillConfig(stages=1, steps_start=8, student_dropout=dropout)
    student = student_model(student_recipe(recipe, cfg, 4, tmp_path / "s", 1), teacher, 24)
    rates = {m.p for m in student.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == ({0.3} if dropout else {0.0}) and not teacher.training
    assert all(p.requires_grad for p in student.parameters())
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), teacher.state_dict().values()))


@pytest.mark.parametrize("kwargs, msg", [({"stages": 0}, "stages"), ({"steps_start": 12, "stages": 3}, "divisible"),
                                         ({"lr": 0.0}, "lr")])
def test_the_config_names_the_bad_field(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        DistillConfig(**kwargs)


# --- end to end on tiny trained runs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedding_run(tmp_path_factory, corpus):
    from tests.conftest import _train

    return _train(corpus, tmp_path_factory.mktemp("runs") / "embedding", "embedding", 40,
                  {"model": {"time_conditioning": True}, "backend": {"embed_dim": 16},
                   "sample": {"sampler": "ddim", "steps": 8}})


@pytest.fixture(scope="module")
def embedding_students(embedding_run, tmp_path_factory):
    cfg = DistillConfig(stages=2, steps_start=8, iters=60, lr=1e-3, batch_size=8)  # 30 passed at one seed in three
    return distill_run(embedding_run, cfg, tmp_path_factory.mktemp("distill") / "out", progress=False)


def test_one_stage_lowers_the_held_out_two_step_vs_one_step_discrepancy(embedding_students, embedding_run):
    first, second = (lineage(d) for d in embedding_students)
    assert first["held_out_loss_after"] < 0.8 * first["held_out_loss_before"]
    assert second["held_out_loss_after"] < second["held_out_loss_before"]
    assert (first["steps"], first["teacher_steps"], first["stage"], first["method"]) == (4, 8, 1, "progressive")
    assert first["teacher"] == str(embedding_run) and second["teacher"] == str(embedding_students[0])
    assert second["steps"] == 2


def test_a_student_directory_round_trips_and_samples(embedding_students, capsys):
    from textdiff.cli import main
    from textdiff.pipeline import TextDiffusionPipeline
    from textdiff.checkpoint import load_tensors

    stage1 = embedding_students[0]
    pipe = TextDiffusionPipeline.from_pretrained(stage1)
    assert pipe.options().steps == 4 and pipe.options().sampler == "ddim" and pipe.options().options["eta"] == 0.0
    saved = load_tensors(stage1 / "model.safetensors")
    assert all(torch.equal(v, saved[k]) for k, v in pipe.model.state_dict().items() if k in saved)
    assert len(pipe.generate(2, seed=0).texts) == 2
    assert main(["sample", str(stage1), "-n", "2", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["infill", str(stage1), "the old [MASK:2] the [MASK]."]) == 0
    assert capsys.readouterr().out.split()[:2] == ["the", "old"]
    assert main(["eval", str(stage1), "--metrics", "ppl", "--draws", "2", "--max-sequences", "8"]) == 0
    assert not list(stage1.parent.glob(".tmp_*"))  # atomic: no temporary directory left behind


def test_the_student_keeps_the_teachers_embeddings(embedding_students, embedding_run):
    from textdiff.checkpoint import load_tensors

    teacher, student = (load_tensors(d / "model.safetensors") for d in (embedding_run, embedding_students[0]))
    assert torch.equal(teacher["noise.embedding.weight"], student["noise.embedding.weight"])
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher if k.startswith("blocks."))


def test_masked_sdtt_the_kl_to_the_teachers_two_steps_falls(masked_run, tmp_path):
    """The SDTT objective trains: a student started away from the teacher (fresh weights) moves its one-step x0
    distribution towards the teacher's two-step one on held-out batches."""
    from textdiff.data import build_sequences, load_texts
    from textdiff.distill import train_stage
    from textdiff.models import build_model
    from textdiff.pipeline import TextDiffusionPipeline

    pipe = TextDiffusionPipeline.from_pretrained(masked_run)
    texts = load_texts(pipe.recipe.data)
    val = build_sequences(pipe.recipe.data, pipe.tokenizer, texts["validation"])
    held = [val.batch(torch.arange(i, i + 8)) for i in (0, 8)]
    torch.manual_seed(5)
    fresh = build_model(pipe.recipe, len(pipe.tokenizer), pipe.model.max_len)
    before = discrepancy(pipe.model, fresh, pipe.backend, held, 4)
    cfg = DistillConfig(stages=1, steps_start=8, iters=40, lr=3e-3, batch_size=8)
    train_stage(pipe, pipe.model, fresh, student_recipe(pipe.recipe, cfg, 4, tmp_path / "stage1", 1), "cpu",
                progress=False)
    after = discrepancy(pipe.model, fresh, pipe.backend, held, 4)
    assert after < 0.7 * before, (before, after)


def test_a_masked_stage_writes_a_student_that_samples_in_half_the_steps(masked_run, tmp_path):
    cfg = DistillConfig(stages=1, steps_start=16, iters=4, lr=1e-4, batch_size=8)
    (stage,) = distill_run(masked_run, cfg, tmp_path / "out", progress=False)
    rec = lineage(stage)
    assert rec["method"] == "sdtt" and rec["steps"] == 8 and rec["teacher"] == str(masked_run)
    assert rec["held_out_loss_after"] < 1.5 * rec["held_out_loss_before"] + 1e-3  # a gentle stage does no harm
    from textdiff.pipeline import TextDiffusionPipeline

    pipe = TextDiffusionPipeline.from_pretrained(stage)
    assert pipe.options().steps == 8 and len(pipe.generate(2).texts) == 2


def test_the_held_out_discrepancy_is_reproducible_and_positive_for_the_undistilled_teacher(masked_run):
    """Fixed seeds make the held-out measure reproducible; the teacher's one step differs from its two."""
    from textdiff.pipeline import TextDiffusionPipeline

    pipe = TextDiffusionPipeline.from_pretrained(masked_run)
    b = [Batch(torch.randint(6, len(pipe.tokenizer), (4, 24), generator=torch.Generator().manual_seed(0)),
               torch.ones(4, 24, dtype=torch.bool))]
    one = discrepancy(pipe.model, pipe.model, pipe.backend, b, 4)
    assert one == discrepancy(pipe.model, pipe.model, pipe.backend, b, 4) and one > 0


# --- the command line -------------------------------------------------------------------------------------------------


def _one_line_error(capsys, argv, needle):
    from textdiff.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_distill_refuses_bad_input_in_one_line(tmp_path, capsys, embedding_run):
    _one_line_error(capsys, ["distill", str(tmp_path / "nope")], "not found")
    ar = tmp_path / "ar-run"
    ar.mkdir()
    cfg = json.loads((embedding_run / "config.json").read_text())
    cfg["recipe"]["backend"]["name"] = cfg["backend"] = "ar"
    (ar / "config.json").write_text(json.dumps(cfg))
    _one_line_error(capsys, ["distill", str(ar)], "no distillation")
    _one_line_error(capsys, ["distill", str(embedding_run), "--stages", "0"], "must be > 0")
    _one_line_error(capsys, ["distill", str(embedding_run), "--stages", "3", "--steps-start", "12"], "divisible")
    (tmp_path / "out" / "stage1").mkdir(parents=True)
    _one_line_error(capsys, ["distill", str(embedding_run), "--out", str(tmp_path / "out"), "--iters", "1"],
                    "already exists")


def test_distill_command_writes_stages(embedding_run, tmp_path, capsys):
    from textdiff.cli import main

    out = tmp_path / "students"
    assert main(["distill", str(embedding_run), "--stages", "2", "--steps-start", "8", "--iters", "2",
                 "--batch-size", "4", "--out", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "stage 2: 4 -> 2 steps" in text
    cfg = json.loads((out / "stage2" / "config.json").read_text())
    assert cfg["recipe"]["sample"]["steps"] == 2 and cfg["distillation"]["teacher"] == str(out / "stage1")


# --- block models (BD3-LM): SDTT block by block ----------------------------------------------------------------------


def test_block_sdtt_sees_the_clean_sequence_and_times_each_block_on_the_grid():
    """Every teacher and student prediction of a block model gets the clean sequence as its context (its training
    pass: a block's noise given the clean blocks before it, what block sampling's cache holds), and each block's
    time lies on the student's grid, constant over the block and not shared by all blocks."""
    from textdiff.distill import sdtt_loss

    K, steps = 2, 4
    teacher, backend = make("masked", model={"block_size": K})
    student, _ = make("masked", seed=1, model={"block_size": K})
    calls = []
    for name, model in (("teacher", teacher), ("student", student)):
        forward = model.forward

        def spy(inputs, t=None, *args, _forward=forward, _name=name, **kw):
            calls.append((_name, t, kw.get("context")))
            return _forward(inputs, t, *args, **kw)
        model.forward = spy
    b = batch(0)
    out = sdtt_loss(teacher, student, backend, b, steps, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and out.n_tokens > 0
    assert {n for n, _, _ in calls} == {"teacher", "student"}
    for _, t, context in calls:
        assert context is not None and torch.equal(context, b.ids)
        assert t.shape == b.ids.shape and torch.equal(t, t[:, ::K].repeat_interleave(K, dim=1))
    t = calls[-1][1]  # the student's: i / N
    assert torch.allclose(t * steps, (t * steps).round()) and bool((t > 0).all())
    assert len(t[:, ::K].unique()) > 1


def test_block_sdtt_the_kl_to_the_teachers_two_steps_falls(corpus, tmp_path):
    """A tiny K = 2 block model distilled from 4 steps per block to 2: the held-out KL of a fresh student to the
    teacher's two steps falls, and the stage's student samples block by block in 2 steps."""
    from tests.conftest import _train
    from textdiff.distill import train_stage
    from textdiff.models import build_model
    from textdiff.pipeline import TextDiffusionPipeline

    run = _train(corpus, tmp_path / "block", "masked", 60,
                 {"model": {"block_size": 2}, "sample": {"steps": 4, "sampler": "confidence"}})
    pipe = TextDiffusionPipeline.from_pretrained(run)
    gen = torch.Generator().manual_seed(0)
    held = [Batch(torch.randint(6, len(pipe.tokenizer), (8, 24), generator=gen),
                  torch.ones(8, 24, dtype=torch.bool)) for _ in range(2)]
    torch.manual_seed(5)
    fresh = build_model(pipe.recipe, len(pipe.tokenizer), pipe.model.max_len)
    before = discrepancy(pipe.model, fresh, pipe.backend, held, 2)
    cfg = DistillConfig(stages=1, steps_start=4, iters=40, lr=3e-3, batch_size=8)
    stage = tmp_path / "stage1"
    train_stage(pipe, pipe.model, fresh, student_recipe(pipe.recipe, cfg, 2, stage, 1), "cpu", progress=False)
    after = discrepancy(pipe.model, fresh, pipe.backend, held, 2)
    assert after < 0.7 * before, (before, after)
    student = TextDiffusionPipeline.from_pretrained(stage)
    assert student.model.cfg.block_size == 2 and student.options().steps == 2
    assert len(student.generate(2).texts) == 2
