"""A newcomer's own corpus (issue 32, item 5): the README's "train on your own text" commands run as written on a
generated .txt file; a run without validation data and a template kept from another corpus each get one warning."""

from __future__ import annotations

import re
import shlex

import pytest

from tests.conftest import ROOT, make_sentences
from textdiff.cli import main
from textdiff.config import load_recipe
from textdiff.training import train_recipe

TINY = ["train.steps=2", "train.batch_size=4", "train.eval_every=0", "train.eval_batches=1", "train.warmup_steps=1",
        "train.precision=fp32", "train.threads=1", "model.n_layer=1", "model.n_embd=32", "model.n_head=2",
        "tokenizer.vocab_size=300", "sample.num_samples=1", "sample.steps=2", "data.max_length=16"]
"""Appended to the README's training command so that it runs in seconds (the command itself is unchanged)."""


def readme_own_text() -> list[str]:
    block = re.search(r"## Train on your own text.*?```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.startswith("#")]


def test_the_readme_recipe_for_your_own_text_runs_on_a_generated_txt_file(tmp_path, monkeypatch, capsys):
    lines = readme_own_text()
    assert len(lines) <= 3
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TEXTDIFF_DATA_DIR", raising=False)
    (tmp_path / "my.txt").write_text("\n".join(make_sentences(300, seed=5)) + "\n")
    for line in lines:
        argv = [a.replace("recipes/", str(ROOT / "recipes") + "/") for a in shlex.split(line)]
        assert argv[0] == "textdiff", line
        extra = [x for kv in TINY for x in ("--set", kv)] if argv[1] == "train" else []
        assert main(argv[1:] + extra) == 0, line
    out = capsys.readouterr()
    assert "warning" not in out.err, out.err  # held-out splits by default, the template cleared
    run = next(tmp_path.glob("runs/*"))
    recipe = load_recipe(ROOT / "recipes/quickstart.yaml")
    saved = (run / "config.json").read_text()
    assert '"holdout": 0.05' in saved and '"example": "line"' in saved  # the choice is recorded in the run
    assert recipe.data.path != "my.txt"
    assert main(["eval", str(run), "--metrics", "ppl", "--split", "test", "--draws", "1"]) == 0


@pytest.fixture
def own_recipe(write_recipe, tmp_path):
    path = tmp_path / "my.txt"
    path.write_text("\n".join(make_sentences(200, seed=3)) + "\n")
    return lambda **data: write_recipe(data={"path": str(path), "split_field": None, **data},
                                       train={"steps": 1, "eval_every": 0}, sample={"infill": None})


def test_a_run_without_validation_data_is_warned(own_recipe, capsys):
    train_recipe(load_recipe(own_recipe(holdout=0)), progress=False)
    err = capsys.readouterr().err
    assert err.count("textdiff: warning: no validation data") == 1 and "data.holdout" in err


def test_an_infill_template_from_another_corpus_is_warned(own_recipe, capsys, tmp_path):
    recipe = load_recipe(own_recipe(), ["sample.infill=The [MASK:3] of the LORD [MASK] upon the waters"])
    train_recipe(recipe, progress=False)
    err = capsys.readouterr().err
    assert "textdiff: warning: sample.infill" in err and "lord, of, upon, waters" in err and "no validation" not in err
    capsys.readouterr()
    train_recipe(load_recipe(own_recipe(), ["sample.infill=the [MASK:2] king", f"out_dir={tmp_path / 'b'}"]),
                 progress=False)
    assert "warning" not in capsys.readouterr().err
