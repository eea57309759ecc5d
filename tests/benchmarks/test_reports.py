"""The report logic of benchmarks/seq2seq.py and benchmarks/distill_report.py on fixed inputs,
benchmarks/distill_suite.sh on a tiny teacher, benchmarks/sdtt_gap.py's loss split and benchmarks/kjv_ratio.py's grid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import distill_report  # noqa: E402
import seq2seq  # noqa: E402

from textdiff.rundir import CONFIG_TYPE  # noqa: E402
from textdiff.config import load_recipe  # noqa: E402


def _eval(rows, copy=None):
    def metric(score):
        return {"score": score, "signature": f"sig{score}"}

    out = {"seq2seq": {"n_sources": 3, "n_references": 9, "rows": [
        {"settings": {"sampler": s, "steps": 64, "guidance_scale": w, "mbr": m, "temperature": t}, "seconds": 1.0,
         "bleu": metric(b), "rouge": metric(b + 10)} for s, w, m, t, b in rows]}}
    if copy is not None:
        out["seq2seq"]["copy"] = {"bleu": metric(copy), "rouge": metric(copy + 10)}
    return out


def test_seq2seq_table_ratios_to_the_best_ar_row_and_the_target(tmp_path):
    results = {
        "masked": {"greedy": _eval([("confidence", 0.0, 1, 0.0, 30.0), ("confidence", 1.0, 1, 0.0, 38.4)], copy=20.0),
                   "mbr": _eval([("confidence", 0.0, 8, 0.7, 36.0)])},
        "ar": {"greedy": _eval([("ar", 0.0, 1, 0.0, 35.0)]), "mbr": _eval([("ar", 0.0, 8, 0.7, 40.0)])},
    }
    lines = seq2seq.table("kjv-asv", results, {"masked": tmp_path / "m", "ar": tmp_path / "a"})
    text = "\n".join(lines)
    assert "| copy the input | | | | | | | 20.00 | 0.50 |" in text  # ÷ the best AR row (40)
    assert "| masked | greedy | confidence | 64 | 1 | 1 | 0 | 38.40 | 0.96 |" in text
    assert "| masked | mbr | confidence | 64 | 0 | 8 | 0.7 | 36.00 | 0.90 |" in text
    assert "| ar | mbr | ar |  |  | 8 | 0.7 | 40.00 | 1.00 |" in text
    assert "masked (greedy, confidence, ω 1) at BLEU 38.40 = 0.96 × the AR baseline's 40.00; it meets" in text
    results["masked"]["greedy"] = _eval([("confidence", 0.0, 1, 0.0, 30.0)])
    assert "it misses the 0.95× target" in "\n".join(seq2seq.table("e2e", results, {"masked": tmp_path, "ar": tmp_path}))


def test_seq2seq_table_beside_the_copy_baseline_counts_outputs_equal_to_their_source(tmp_path):
    """With the sources, a `= source` column: read from the evaluation, or counted from its predictions where an
    older evaluation lacks it; the verdict sets the best diffusion row against copying."""
    masked = _eval([("confidence", 0.0, 1, 0.0, 30.0)], copy=20.0)
    masked["seq2seq"]["rows"][0]["predictions"] = ["a b", "x", " c d "]  # 2 of 3 equal their source
    ar = _eval([("ar", 0.0, 1, 0.0, 35.0)])
    ar["seq2seq"]["rows"][0]["unchanged"] = 12.5
    text = "\n".join(seq2seq.table("kjv-asv", {"masked": {"greedy": masked}, "ar": {"greedy": ar}},
                                   {"masked": tmp_path, "ar": tmp_path}, ["a b", "y", "c d"]))
    assert "| ROUGE-L | = source | generation s |" in text and "| 20.00 | 0.57 | 30.00 | 100% |" in text
    assert "| 30.00 | 0.86 | 40.00 | 66.7% | 1.0 |" in text and "| 35.00 | 1.00 | 45.00 | 12.5% | 1.0 |" in text
    assert "Copying the source scores 20.00: the row is +10.00 BLEU from it, with 66.7% of its outputs" in text
    no_copy = _eval([("confidence", 0.0, 1, 0.0, 30.0)])  # E2E: no copy baseline, no column
    assert "= source" not in "\n".join(seq2seq.table("e2e", {"masked": {"greedy": no_copy}}, {"masked": tmp_path},
                                                      ["a b", "y", "c d"]))


def test_seq2seq_table_bootstraps_the_best_row_against_the_ar_row_and_copying(tmp_path):
    """With the references and the outputs, one line of paired bootstrap; without outputs (an AR evaluation that
    kept none), that comparison is left out rather than guessed."""
    sources, refs = ["the king went out", "and he said", "a b c d"], [["the king went out"], ["and he spake"], ["a b c"]]
    masked = _eval([("confidence", 0.0, 1, 0.0, 30.0)], copy=20.0)
    masked["seq2seq"]["rows"][0]["predictions"] = ["the king went out", "and he spake", "a b c"]
    ar = _eval([("ar", 0.0, 1, 0.0, 25.0)])
    ar["seq2seq"]["rows"][0]["predictions"] = ["the king", "he said", "a b c"]
    results = {"masked": {"greedy": masked}, "ar": {"greedy": ar}}
    runs = {"masked": tmp_path, "ar": tmp_path}
    text = "\n".join(seq2seq.table("kjv-asv", results, runs, sources, refs))
    line = next(x for x in text.splitlines() if x.startswith("Paired bootstrap (1,000 resamples of the 3 sources"))
    assert "masked - AR = +" in line and "; masked - copy = +" in line
    del ar["seq2seq"]["rows"][0]["predictions"]
    ar["seq2seq"]["rows"][0]["unchanged"] = 0.0
    line = next(x for x in seq2seq.table("kjv-asv", results, runs, sources, refs) if x.startswith("Paired"))
    assert "AR" not in line and "masked - copy" in line
    assert not any(x.startswith("Paired") for x in seq2seq.table("kjv-asv", results, runs, sources))  # no references


def spied_evaluations(monkeypatch, samplers: list[str], greedy_args: tuple[str, ...] = ()):
    """(args for seq2seq.evaluations, {result file name: the `textdiff` argv it would run}), nothing run."""
    import argparse

    calls = {}
    monkeypatch.setattr(seq2seq, "cached", lambda path, argv, from_cache=False: calls.setdefault(path.name, argv))
    return argparse.Namespace(device="cpu", batch_size=8, max_sources=0, guidance="0,1", samplers=samplers, mbr=1,
                              mbr_temperature=0.7, from_cache=False, greedy_args=list(greedy_args)), calls


def test_seq2seq_extra_sampler_rows_only_for_back_ends_that_have_the_sampler(tmp_path, monkeypatch):
    args, calls = spied_evaluations(monkeypatch, ["ancestral"])
    masked = trained(tmp_path / "masked", "recipes/e2e/masked.yaml")
    assert set(seq2seq.evaluations("e2e", "masked", masked, tmp_path, args)) == {"greedy", "greedy, ancestral"}
    argv = calls["e2e-masked-greedy-ancestral.json"]
    assert argv[argv.index("--sampler") + 1] == "ancestral" and argv[argv.index("--guidance-scale") + 1] == "0,1"
    assert "--sampler" not in calls["e2e-masked-greedy.json"]
    assert set(seq2seq.evaluations("e2e", "ar", tmp_path, tmp_path, args)) == {"greedy"}


def test_seq2seq_greedy_args_rows_are_cached_apart_and_named_in_the_table(tmp_path, monkeypatch):
    args, calls = spied_evaluations(monkeypatch, [], ("--threshold 0.9", "--block-size 16"))
    masked = trained(tmp_path / "masked", "recipes/e2e/masked.yaml")
    assert set(seq2seq.evaluations("e2e", "masked", masked, tmp_path, args)) == {
        "greedy", "greedy, --threshold 0.9", "greedy, --block-size 16"}
    argv = calls["e2e-masked-greedy-threshold0.9.json"]
    assert argv[argv.index("--threshold") + 1] == "0.9" and "--threshold" not in calls["e2e-masked-greedy.json"]
    assert "--block-size" in calls["e2e-masked-greedy-block-size16.json"]
    assert set(seq2seq.evaluations("e2e", "ar", tmp_path, tmp_path, args)) == {"greedy"}

    def refused(path, argv, from_cache=False):  # `textdiff eval` refuses --joint-edits on a masked run
        if "--joint-edits" in argv:
            raise SystemExit("seq2seq: `textdiff eval ...` failed")
        return {}

    monkeypatch.setattr(seq2seq, "cached", refused)
    args.greedy_args = ["--joint-edits"]
    assert set(seq2seq.evaluations("e2e", "masked", masked, tmp_path, args)) == {"greedy"}
    assert seq2seq.sampler_cell({"sampler": "confidence", "block_size": 16, "threshold": 0.9}) == \
        "confidence, blocks of 16, threshold 0.9"
    assert seq2seq.sampler_cell({"sampler": "confidence"}) == "confidence"  # an evaluation from before the options
    assert seq2seq.sampler_cell({"sampler": "edit", "block_size": 0, "joint_edits": True}) == "edit, joint edits"


def test_seq2seq_guidance_sweep_only_for_runs_trained_with_condition_dropout(tmp_path, monkeypatch):
    """The edit back-end's seq2seq recipe drops no source, so `textdiff eval` would refuse ω > 0 for it."""
    args, calls = spied_evaluations(monkeypatch, [])
    seq2seq.evaluations("kjv-asv", "edit", trained(tmp_path / "edit", "recipes/kjv-asv/edit.yaml"), tmp_path, args)
    seq2seq.evaluations("kjv-asv", "masked", trained(tmp_path / "masked", "recipes/kjv-asv/masked.yaml"), tmp_path, args)
    assert "--guidance-scale" not in calls["kjv-asv-edit-greedy.json"]
    assert "--guidance-scale" in calls["kjv-asv-masked-greedy.json"]


def trained(run: Path, recipe: str) -> Path:
    """A run directory holding only the config.json that training writes (the recipe it was trained with)."""
    run.mkdir()
    cfg = load_recipe(ROOT / recipe)
    (run / "config.json").write_text(json.dumps({"type": CONFIG_TYPE, "vocab_size": cfg.tokenizer.vocab_size,
                                                 "max_len": cfg.data.max_length, "recipe": cfg.to_dict()}))
    return run


def _frontier(tmp_path, genppl: dict[str, dict[int, tuple[float, float]]]) -> dict:
    runs = []
    for name in genppl:
        run = tmp_path / ("masked-800" if name == "teacher" else name)
        run.mkdir()
        if name == "stage1":
            (run / "config.json").write_text(json.dumps({"recipe": {"sample": {"steps": 64}}, "distillation": {
                "stage": 1, "steps": 64, "teacher_steps": 128, "iters": 500,
                "held_out_loss_before": 0.02, "held_out_loss_after": 0.015}}))
        elif name != "teacher":
            (run / "config.json").write_text("{}")
        runs.append(str(run))
    points = [{"run": str(tmp_path / ("masked-800" if name == "teacher" else name)), "backend": "masked",
               "sampler": "ancestral", "steps": s, "genppl": g, "entropy": e}
              for name, pts in genppl.items() for s, (g, e) in pts.items()]
    return {"runs": runs, "points": points, "num_samples": 4, "seed": 0, "judge": "j", "date": "d", "machine": "m",
            "python": "3", "packages": {}}


def test_distill_report_finds_the_fewest_steps_within_the_target(tmp_path):
    res = _frontier(tmp_path, {
        "teacher": {128: (100.0, 5.30), 64: (104.0, 5.30), 32: (130.0, 5.30), 16: (200.0, 5.30)},
        "stage1": {64: (101.0, 5.30), 32: (105.0, 5.30)},
        "stage2": {32: (108.0, 5.29), 16: (109.0, 5.0)},   # 16 steps: genppl fine but entropy 5.7 % lower
    })
    text = "\n".join(distill_report.section(res, 128, "masked"))
    assert "| 32 | 130.0 / 5.30 | **105.0 / 5.30** | **108.0 / 5.29** |" in text
    assert "| 16 | 200.0 / 5.30 |  | 109.0 / 5.00 |" in text
    assert "stage 1 at 32 steps, 4× fewer than the teacher's 128 (the teacher alone stays within it down to 64" in text
    path = tmp_path / "frontier.json"
    path.write_text(json.dumps(res))
    out = tmp_path / "report.md"
    sys.argv = ["distill_report.py", str(path), "--out", str(out)]
    distill_report.main()
    report = out.read_text()
    assert "teacher at 128 steps" in report  # steps_start read off stage 1's recipe (2 x 64)
    assert ("- stage 1 (128 -> 64 steps): held-out distillation loss 0.02 (teacher as student) -> 0.015; at 64 steps "
            "judge perplexity 101.0 vs the teacher's 104.0 (-2.9%); at 32 steps judge perplexity 105.0 vs the "
            "teacher's 130.0 (-19.2%)") in report
    assert '"iters": 500' in report and "held_out_loss_before" not in report


def test_val_curves_table_marks_runs_stopped_early(tmp_path):
    import val_curves

    for name, planned, rows in (("a", 4, [{"step": 2, "val_nll": 5.0}, {"step": 4, "val_nll": 4.5, "tok_per_s": 10.0}]),
                                ("b", 8, [{"step": 2, "val_nll": 4.9, "tok_per_s": 20.0}, {"step": 3, "loss": 1.0}])):
        run = tmp_path / name
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"recipe": {"train": {"steps": planned}}}))
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = val_curves.table([tmp_path / "a", tmp_path / "b"])
    assert lines[0] == "| run | trained / planned steps | step 2 | step 4 | train tok/s |"
    assert lines[2] == "| a | 4 / 4 | 5.000 | 4.500 | 10 |"
    assert lines[3] == "| b | 3 / 8 (stopped) | 4.900 |  | 20 |"


def test_distill_suite_distils_draws_the_frontier_and_writes_the_report(masked_run, ar_run, tmp_path):
    """benchmarks/distill_suite.sh end to end on a tiny teacher: a stage, a judged frontier, the report."""
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "masked-800").symlink_to(masked_run)
    out = tmp_path / "distill.md"
    env = {**os.environ, "BACKENDS": "masked", "STEPS_START": "4", "STAGES": "1", "ITERS": "2", "LR": "2e-4",
           "NUM_SAMPLES": "2", "JUDGE": str(ar_run), "PYTHON": sys.executable, "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "distill_suite.sh"), str(runs), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads((runs / "distill" / "masked-frontier" / "frontier.json").read_text())
    assert sorted((p["run"].split("/")[-1], p["steps"]) for p in res["points"]) == \
        [("masked-800", 2), ("masked-800", 4), ("stage1", 2)]
    report = out.read_text()
    assert "teacher at 4 steps" in report and "- stage 1 (4 -> 2 steps): held-out distillation loss" in report
    assert '"lr": 0.0002' in report  # the LR knob reached `textdiff distill`


def test_sdtt_gap_splits_the_loss_exactly_into_irreducible_and_learnable():
    """mean_k KL(p_k || q) = mean_k KL(p_k || p_bar) + KL(p_bar || q) for the empirical mixture p_bar, whatever q."""
    import torch

    import sdtt_gap
    from textdiff.config import DataConfig, ModelConfig, Recipe
    from textdiff.models import build_model
    from textdiff.noising import get_backend, options_for
    from textdiff.noising.base import Batch, SpecialTokens

    recipe = Recipe(data=DataConfig(path="unused.jsonl", max_length=12), model=ModelConfig(n_layer=1, n_embd=32, n_head=2),
                    backend=options_for("masked"))
    torch.manual_seed(0)
    pipe = type("Pipe", (), {})()
    pipe.model = build_model(recipe, 20, 12).eval()
    pipe.backend = get_backend(recipe.backend, SpecialTokens(pad=0, mask=1, bos=2, eos=3, unk=4, sep=5), 20)
    ids = torch.randint(6, 20, (8, 12), generator=torch.Generator().manual_seed(0))
    out = sdtt_gap.gap(pipe, Batch(ids, torch.ones_like(ids, dtype=torch.bool)), steps=4, draws=6, seed=0)
    assert out["n"] > 0 and out["irreducible"] > 0 and out["learnable"] >= 0
    assert abs(out["loss"] - out["irreducible"] - out["learnable"]) < 1e-6 * out["loss"]


def test_source_use_pairs_are_a_word_cipher_and_every_variant_makes_a_valid_recipe(tmp_path):
    import source_use

    from textdiff.config import recipe_from_dict

    pairs = tmp_path / "pairs.jsonl"
    source_use.write_pairs(pairs)
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert [sum(r["split"] == s for r in rows) for s in ("train", "validation", "test")] == [4000, 100, 100]
    assert all(r["tgt"] == r["src"].replace("w", "v") and 4 <= len(r["src"].split()) <= 10 for r in rows)
    for variant in ("masked", "embedding", "embedding-no-prior", "simplex", "ar"):
        recipe = recipe_from_dict(source_use.recipe(variant, pairs, tmp_path / variant, 10, "cpu"))
        assert recipe.model.aligned_positions == (variant != "ar")
    assert recipe_from_dict(source_use.recipe("embedding", pairs, tmp_path, 10, "cpu")).backend.output_prior
    assert not recipe_from_dict(source_use.recipe("embedding-no-prior", pairs, tmp_path, 10, "cpu")).backend.output_prior


def test_context_gain_oracle_meets_the_unigram_cross_entropy_and_refuses_other_back_ends(corpus, masked_run, tmp_path,
                                                                                         capsys):
    """The context-free oracle's diffusion term is its unigram cross-entropy (I-MMSE: the integral of the MMSE over
    SNR is the entropy revealed), so the grid estimate must land on it; the table has a row per time."""
    import re

    import pytest

    import context_gain
    from tests.conftest import _train

    run = _train(corpus, tmp_path / "embedding", "embedding", 12, {"model": {"time_conditioning": True}})
    out = tmp_path / "gain.md"
    assert context_gain.main([str(run), "--times", "64", "--batches", "3", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Embedding diffusion: the context gain over time") and "Command: `" in text
    assert sum(line.startswith("| 0.") for line in text.splitlines()) == 64
    oracle, unigram = (float(x) for x in re.search(r"context-free oracle ([\d.]+) .* cross-entropy, ([\d.]+)",
                                                   text).groups())
    assert abs(oracle - unigram) < 0.05 * unigram  # grid and Monte Carlo error; a factor off fails
    with pytest.raises(SystemExit) as err:
        context_gain.main([str(masked_run)])
    assert err.value.code == 2 and "for the embedding back-end" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        context_gain.main([str(tmp_path / "missing")])
    assert err.value.code == 2 and "missing" in capsys.readouterr().err


def test_kjv_ratio_grid_keeps_the_common_overrides_in_every_run_and_in_the_pick(tmp_path, monkeypatch):
    import types

    import kjv_ratio

    trained, scores = [], {0.001: 5.0, 0.0003: 5.5}

    def train_one(family, steps, runs, device, extra):  # the "run" is its override list
        trained.append(extra)
        return extra

    def evaluate(run, split, device, draws):
        lr = float(next(s for s in run if s.startswith("train.lr=")).split("=")[1])
        return types.SimpleNamespace(nats_per_token=scores[lr])

    monkeypatch.setattr(kjv_ratio, "train_one", train_one)
    monkeypatch.setattr(kjv_ratio, "evaluate", evaluate)
    common = ["model.self_conditioning=true"]
    best, lines = kjv_ratio.grid_search(tmp_path, "cpu", 800, ["embedding"], [(3e-4, 0.0), (1e-3, 0.0)], common)
    assert all(extra[0] == common[0] for extra in trained) and len(trained) == 2
    assert best["embedding"] == [*common, "train.lr=0.001", "model.dropout=0.0"]
    assert "| embedding | 0.001 | 0.0 | 5.0000 |" in lines


def test_kjv_ratio_resumes_an_interrupted_run_and_reuses_a_finished_one(tmp_path, monkeypatch, write_recipe, capsys):
    import shutil

    import kjv_ratio
    import torch
    from textdiff.checkpoint import list_checkpoints, load_tensors

    monkeypatch.setattr(kjv_ratio, "RECIPES", {"masked": write_recipe("masked")})
    run = kjv_ratio.train_one("masked", 8, tmp_path / "runs", "cpu", [])
    assert kjv_ratio.trained_steps(run) == 8
    finished = load_tensors(run / "model.safetensors")
    shutil.rmtree(list_checkpoints(run)[-1])  # killed after the step-6 checkpoint
    assert kjv_ratio.trained_steps(run) == 6
    capsys.readouterr()
    assert kjv_ratio.train_one("masked", 8, tmp_path / "runs", "cpu", []) == run
    assert f"resuming {run} from step 6" in capsys.readouterr().out
    assert kjv_ratio.trained_steps(run) == 8
    resumed = load_tensors(run / "model.safetensors")
    assert all(torch.allclose(resumed[k], finished[k], atol=1e-6) for k in finished)
    kjv_ratio.train_one("masked", 8, tmp_path / "runs", "cpu", [])
    assert f"reusing {run}" in capsys.readouterr().out


def test_kjv_ratio_rows_name_the_common_token_count_and_refuse_unequal_ones():
    import math

    import pytest

    import kjv_ratio
    from textdiff.evaluation.perplexity import PerplexityResult

    def result(ppl, n_tokens):
        return PerplexityResult("test", math.log(ppl), 0.0, ppl, 1.0, n_tokens, 10, 100, 1, True)

    rows = kjv_ratio.ratio_rows(800, {"masked": result(150.0, 1280), "ar": result(50.0, 1280)})
    assert rows == ["| 800 steps | **ratio masked ÷ AR** | both over the same 1,280 test tokens | | **3.00** | | | |"]
    with pytest.raises(SystemExit, match="not like for like"):
        kjv_ratio.ratio_rows(800, {"masked": result(150.0, 1280), "ar": result(50.0, 1270)})
