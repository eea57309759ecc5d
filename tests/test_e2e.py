"""End to end through the CLI: train a tiny recipe, sample, infill, evaluate; the AR baseline beside it."""

from __future__ import annotations

import json

import pytest

from textdiff.cli import main
from textdiff.pipeline import TextDiffusionPipeline


def test_train_prints_samples_and_an_infill(write_recipe, capsys):
    recipe = write_recipe(sample={"steps": 8, "num_samples": 2, "infill": "the [MASK] king [MASK:2] the river."})
    assert main(["train", str(recipe), "--set", "train.steps=8"]) == 0
    out = capsys.readouterr().out
    assert "=== 2 samples" in out and "[1] " in out
    infill_line = next(ln for ln in out.splitlines() if ln.startswith("-> "))
    words = infill_line[3:].split()  # an 8-step model may fill a hole with [EOS], which decodes to nothing
    assert words[0] == "the" and "king" in words[1:3] and words[-2:] == ["the", "river."]


def test_sample_infill_and_eval_on_a_trained_run(masked_run, capsys, tmp_path):
    assert main(["sample", str(masked_run), "-n", "3", "--steps", "12", "--json"]) == 0
    rows = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2] and all(r["text"] for r in rows)

    assert main(["infill", str(masked_run), "the old [MASK:2] the [MASK].", "-n", "2", "--sampler", "confidence"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == ["[0]", "[1]"]  # -n 2: each filling on its own numbered line
    for line in lines:
        words = line.split()[1:]
        assert words[:2] == ["the", "old"] and words[4] == "the" and len(words) == 6
    assert main(["infill", str(masked_run), "the old [MASK:2] the [MASK].", "-n", "2", "--json"]) == 0
    rows = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [r["index"] for r in rows] == [0, 1] and all(r["text"].startswith("the old") for r in rows)

    out_json = tmp_path / "ppl.json"
    assert main(["eval", str(masked_run), "--metrics", "ppl", "--draws", "4", "--out", str(out_json)]) == 0
    line = capsys.readouterr().out
    assert "ELBO bound, 4 time draws" in line and "±" in line
    result = json.loads(out_json.read_text())["ppl"]
    assert result["n_sequences"] > 0 and not result["exact"] and result["stderr"] > 0


def test_the_masked_model_learns_the_toy_language(masked_run, ar_run):
    """After training, the bound beats a uniform guess by far, and the AR baseline is reported beside it."""
    import math

    from textdiff.evaluation import perplexity

    masked = perplexity(TextDiffusionPipeline.from_pretrained(masked_run), "test", time_draws=4, progress=False)
    ar = perplexity(TextDiffusionPipeline.from_pretrained(ar_run), "test", progress=False)
    vocab = len(TextDiffusionPipeline.from_pretrained(masked_run).tokenizer)
    assert ar.exact and not masked.exact
    assert masked.nats_per_token < 0.85 * math.log(vocab)  # a uniform guess scores log(vocab)
    assert ar.nats_per_token < 0.6 * math.log(vocab)


def test_an_ar_runs_end_of_training_banner_names_no_step_count(write_recipe, capsys):
    recipe = write_recipe("ar", sample={"steps": 128, "num_samples": 1})
    assert main(["train", str(recipe), "--set", "train.steps=2", "--set", "train.eval_every=2"]) == 0
    out = capsys.readouterr().out
    assert "=== 1 samples (ar, one model call per token) ===" in out and "128 steps" not in out


def test_ar_run_samples_and_continues_a_prefix(ar_run, capsys):
    assert main(["sample", str(ar_run), "-n", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["infill", str(ar_run), "the green river [MASK:4]"]) == 0
    assert capsys.readouterr().out.split()[:3] == ["the", "green", "river"]


def test_pipeline_generate_is_seeded_and_respects_length(masked_run):
    pipe = TextDiffusionPipeline.from_pretrained(masked_run)
    a = pipe.generate(2, steps=6, length=10, seed=5)
    b = pipe.generate(2, steps=6, length=10, seed=5)
    assert a.texts == b.texts and a.ids.shape == (2, 10)
    assert not (a.ids == pipe.backend.special.mask).any()


@pytest.mark.parametrize("sampler,kw", [("ancestral", {"top_k": 5}), ("confidence", {"top_p": 0.9}),
                                        ("ancestral", {"block_size": 4}), ("confidence", {"temperature": 0.0})])
def test_pipeline_sampler_options(masked_run, sampler, kw):
    pipe = TextDiffusionPipeline.from_pretrained(masked_run)
    out = pipe.generate(2, steps=8, length=12, sampler=sampler, **kw)
    assert out.ids.shape == (2, 12) and not (out.ids == pipe.backend.special.mask).any()
