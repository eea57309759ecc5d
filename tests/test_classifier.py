"""Classifier guidance: labels, the noisy classifier's training, the guidance hook on every back-end (scale 0 is
plain sampling; a large scale toward a class the classifier scores by one token makes that token dominate), the
CLI, and its errors."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from tests.test_cli_errors import assert_one_line_error
from tests.tiny import SPECIAL, L, V, make, sample
from textdiff.classifier import Classifier, LabelSpec, NoisyClassifier, mentions, train_classifier
from textdiff.cli import main
from textdiff.config import ModelConfig
from textdiff.errors import TextdiffError
from textdiff.noising import BACKENDS

GUIDED = [(b, s) for b in sorted(BACKENDS) if not (BACKENDS[b].causal or BACKENDS[b].variable_length)
          for s in BACKENDS[b].samplers]  # guidance re-weights per-position predictions: not for changing lengths
COLOURS = ["red", "blue"]


def test_label_spec_reads_a_column_or_one_slot_of_it():
    mr = "name[The Eagle], eatType[coffee shop], food[Chinese], area[riverside]"
    assert LabelSpec.parse("mr:food").of(mr) == "Chinese"
    assert LabelSpec.parse("mr:area").of(mr) == "riverside"
    assert LabelSpec.parse("mr:priceRange").of(mr) == "none"
    assert LabelSpec.parse("mr:Type").of(mr) == "none"  # a whole slot name, not the tail of eatType
    assert LabelSpec.parse("colour").of(" red ") == "red"
    for bad in ("", "mr:", ":food"):
        with pytest.raises(TextdiffError, match="FIELD"):
            LabelSpec.parse(bad)


def test_mentions_matches_whole_words_in_any_case():
    assert mentions("A CHINESE place.", "Chinese") and mentions("fast food here", "Fast food")
    assert not mentions("Chinesey", "Chinese") and not mentions("English", "Chinese")


class OneTokenClassifier(nn.Module):
    """log p(c = 1 | x) - log p(c = 0 | x) is the mean presence of token `tok` (its probability, or for vectors the
    alignment with its embedding): a classifier whose guidance direction is known and that does not saturate."""

    def __init__(self, tok: int, direction: torch.Tensor | None = None):
        super().__init__()
        self.tok, self.direction = tok, direction

    def forward(self, x, t, keep=None):
        s = x[..., self.tok] if self.direction is None else x @ self.direction
        score = s.mean(1)
        return torch.stack([torch.zeros_like(score), score], dim=-1)


def _guided_pair(backend_name: str, sampler: str, scale: float, tok: int = 7, seed: int = 0):
    model, backend = make(backend_name)
    direction = model.noise.table()[tok].detach() if backend.classifier_input_dim(model) else None
    clf = Classifier(OneTokenClassifier(tok, direction), ["other", "tok"], LabelSpec("x"), {})
    pipe = SimpleNamespace(backend=backend, model=model)
    x = backend.prior((6, L))
    run = lambda guidance: sample(sampler, model, backend, x.clone(), seed=seed, steps=8, guidance=guidance)  # noqa: E731
    return run(None), run(clf.guidance(pipe, "tok", scale))


@pytest.mark.parametrize("backend_name,sampler", GUIDED)
def test_scale_zero_is_plain_sampling(backend_name, sampler):
    plain, guided = _guided_pair(backend_name, sampler, 0.0)
    assert torch.equal(plain, guided)


@pytest.mark.parametrize("backend_name,sampler", GUIDED)
def test_guidance_toward_a_class_makes_its_token_dominate(backend_name, sampler):
    tok = 7
    plain, guided = _guided_pair(backend_name, sampler, 200.0, tok)
    assert (plain == tok).float().mean() < 0.3
    assert (guided == tok).float().mean() > 0.6, guided


def test_the_network_pools_counted_positions():
    torch.manual_seed(0)
    net = NoisyClassifier(ModelConfig(n_layer=1, n_embd=16, n_head=2), V, L, 3).eval()
    x, t = torch.softmax(torch.randn(2, L, V), dim=-1), torch.full((2,), 0.3)
    keep = torch.ones(2, L, dtype=torch.bool)
    assert net(x, t, keep).shape == (2, 3) and torch.allclose(net(x, t), net(x, t, keep))
    keep[:, 6:] = False
    h = net.body.hidden(net.body.embed_probs(x), t).float()
    assert torch.allclose(net(x, t, keep), net.head(h[:, :6].mean(1)), atol=1e-6)


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory) -> Path:
    """A tiny unconditional masked run over sentences naming a colour, with the colour in a `colour` column."""
    from textdiff.config import recipe_from_dict
    from textdiff.training import train_recipe

    root = tmp_path_factory.mktemp("labelled")
    rng, rows = random.Random(0), []
    for split, n in (("train", 600), ("validation", 80), ("test", 40)):
        for _ in range(n):
            c = rng.choice(COLOURS)
            words = [rng.choice(["the", "a"]), rng.choice(["old", "small", c]), "king", rng.choice(["sees", "keeps"]),
                     "the", rng.choice(["stone", "river"])]
            if c not in words:
                words.insert(rng.randrange(len(words) + 1), c)
            rows.append({"text": " ".join(words) + " .", "colour": c, "split": split})
    data = root / "colours.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = {"name": "labelled", "out_dir": str(root / "run"),
           "data": {"path": str(data), "text_field": "text", "split_field": "split", "max_length": 12, "mode": "pad"},
           "tokenizer": {"kind": "wordlevel", "vocab_size": 64, "min_frequency": 1},
           "model": {"n_layer": 1, "n_embd": 32, "n_head": 2}, "backend": {"name": "masked"},
           "train": {"steps": 4, "batch_size": 8, "precision": "fp32", "eval_every": 4, "eval_batches": 1,
                     "checkpoint_every": 4, "seed": 0},
           "sample": {"steps": 8, "num_samples": 1}}
    return train_recipe(recipe_from_dict(raw), progress=False)


def test_training_learns_the_label_from_noisy_states_and_round_trips(labelled_run, tmp_path):
    from textdiff.pipeline import TextDiffusionPipeline

    pipe = TextDiffusionPipeline.from_pretrained(labelled_run)
    clf = train_classifier(pipe, LabelSpec("colour"), steps=120, model=ModelConfig(n_layer=1, n_embd=32, n_head=2),
                           progress=False)
    acc = clf.info["validation_accuracy"]
    assert clf.classes == COLOURS[::-1]  # sorted
    assert acc["0.1"] > 0.9 and acc["0.1"] >= acc["0.9"], acc  # clean-ish inputs name the colour
    clf.save(tmp_path / "clf")
    again = Classifier.load(tmp_path / "clf")
    x, t = torch.softmax(torch.randn(2, 12, len(pipe.tokenizer)), dim=-1), torch.full((2,), 0.5)
    assert torch.equal(clf.net(x, t), again.net(x, t)) and again.classes == clf.classes


def test_cli_trains_steers_and_measures_control(labelled_run, tmp_path, capsys):
    out = tmp_path / "clf"
    assert main(["classifier", str(labelled_run), "--label", "colour", "--steps", "120", "--n-embd", "32",
                 "--n-layer", "1", "--out", str(out)]) == 0
    assert "validation accuracy" in capsys.readouterr().out
    assert json.loads((out / "classifier.json").read_text())["classes"] == ["blue", "red"]
    assert main(["sample", str(labelled_run), "--classifier", str(out), "--target", "red", "-n", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    report = tmp_path / "control.json"
    assert main(["eval", str(labelled_run), "--metrics", "control", "--classifier", str(out), "--classifier-scale",
                 "0,30", "--num-samples", "8", "--out", str(report)]) == 0
    rows = json.loads(report.read_text())["control"]["rows"]
    assert [r["scale"] for r in rows] == [0.0, 30.0] and set(rows[0]["per_class"]) == {"blue", "red"}
    assert rows[1]["success"] > rows[0]["success"], rows
    assert "| guidance scale | success |" in report.with_suffix(".md").read_text()


@pytest.mark.parametrize("argv,needles", [
    (["--classifier", "{clf}"], ("--classifier and --target",)),
    (["--classifier", "{clf}", "--target", "green"], ("'green'", "blue, red")),
    (["--classifier", "{run}", "--target", "red"], ("not a classifier directory",)),
    (["--classifier", "{clf}", "--target", "red", "--classifier-scale", "-1"], ("--classifier-scale",)),
])
def test_sample_errors_are_one_line(labelled_run, tmp_path, capsys, argv, needles):
    clf = tmp_path / "clf"
    assert main(["classifier", str(labelled_run), "--label", "colour", "--steps", "2", "--n-embd", "32",
                 "--n-layer", "1", "--out", str(clf)]) == 0
    capsys.readouterr()
    argv = [a.format(clf=clf, run=labelled_run) for a in argv]
    rc = main(["sample", str(labelled_run), *argv])
    assert_one_line_error(rc, capsys.readouterr().err, needles)


@pytest.mark.parametrize("argv,needles", [
    (["--label", "flavour"], ("column 'flavour'", "colour")),
    (["--label", "text:"], ("FIELD:SLOT",)),
    (["--label", "colour", "--n-embd", "0"], ("--n-embd",)),
])
def test_classifier_errors_are_one_line(labelled_run, tmp_path, capsys, argv, needles):
    rc = main(["classifier", str(labelled_run), "--steps", "2", "--out", str(tmp_path / "c"), *argv])
    assert_one_line_error(rc, capsys.readouterr().err, needles)
    assert not (tmp_path / "c").exists()


def test_packed_runs_and_a_missing_classifier_are_refused(masked_run, tmp_path, capsys):
    rc = main(["classifier", str(masked_run), "--label", "text", "--out", str(tmp_path / "c")])
    assert_one_line_error(rc, capsys.readouterr().err, ("data.mode: pad",))
    rc = main(["eval", str(masked_run), "--metrics", "control"])
    assert_one_line_error(rc, capsys.readouterr().err, ("--classifier",))


def test_the_ar_baseline_takes_no_guidance(ar_run):
    from textdiff.pipeline import TextDiffusionPipeline

    pipe = TextDiffusionPipeline.from_pretrained(ar_run)
    with pytest.raises(TextdiffError, match="no guidance"):
        pipe.generate(1, guidance=lambda out, x, t: out)
