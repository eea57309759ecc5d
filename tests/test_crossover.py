"""`textdiff bench crossover`: end to end on the tiny recipes (table, plot, resume without retraining), one run
stopped at each budget is the same computation as a run trained straight to it, and bad input is one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from textdiff import training
from textdiff.checkpoint import load_tensors
from textdiff.cli import main

ROOT = Path(__file__).resolve().parents[1]
AR, MASKED = str(ROOT / "recipes/tiny/ar.yaml"), str(ROOT / "recipes/tiny/masked.yaml")
FAST = ["--unique-tokens", "4000", "--set", "train.warmup_steps=2", "--set", "train.threads=1", "--draws", "2",
        "--eval-sequences", "8"]


def crossover(tmp_path, *args, recipes=(AR, MASKED)) -> int:
    return main(["bench", "crossover", *recipes, *FAST, "--runs", str(tmp_path / "runs"),
                 "--out-dir", str(tmp_path / "out"), *args])


@pytest.fixture
def trainings(monkeypatch):
    """Every train_recipe call's (run name, train.steps)."""
    calls, real = [], training.train_recipe

    def counted(recipe, **kw):
        calls.append((Path(recipe.out_dir).name, recipe.train.steps))
        return real(recipe, **kw)

    monkeypatch.setattr(training, "train_recipe", counted)
    return calls


def test_crossover_writes_the_table_and_plot_and_resumes_without_retraining(tmp_path, trainings, capsys):
    assert crossover(tmp_path, "--epochs", "1,2") == 0
    res = json.loads((tmp_path / "out/crossover.json").read_text())
    assert res["train_sequences"] == 125 and res["steps_per_epoch"] == 15 and res["steps"] == [15, 30]
    assert [(p["run"], p["epochs"]) for p in res["points"]] == [("tiny-ar", 1), ("tiny-ar", 2), ("tiny-masked", 1),
                                                                ("tiny-masked", 2)]
    assert trainings == [("tiny-ar", 15), ("tiny-ar", 30), ("tiny-masked", 15), ("tiny-masked", 30)]
    for p in res["points"]:
        assert p["test"]["nats_per_token"] > 0 and p["validation"]["sequences"] == 8
    assert res["points"][0]["test"]["exact"] and res["points"][2]["test"]["stderr"] > 0  # AR exact, masked MC
    md = (tmp_path / "out/crossover.md").read_text()
    assert "| tiny-masked | 2 | 30 |" in md and "Best (early-stopped on validation)" in md
    assert "Crossover: tiny-masked" in md and "constant after warm-up" in md
    assert (tmp_path / "out/crossover.png").read_bytes()[:4] == b"\x89PNG"
    first = res["points"]

    trainings.clear()  # a larger budget: only the new one is trained, each run resumed from its checkpoint
    assert crossover(tmp_path, "--epochs", "1,2,3") == 0
    res = json.loads((tmp_path / "out/crossover.json").read_text())
    assert trainings == [("tiny-ar", 45), ("tiny-masked", 45)]
    assert [p for p in res["points"] if p["epochs"] < 3] == first
    assert "resumed from step 30" in capsys.readouterr().out

    trainings.clear()  # everything there: nothing is trained
    assert crossover(tmp_path, "--epochs", "1,2,3") == 0 and trainings == []


def test_a_run_stopped_at_each_budget_equals_a_run_trained_straight_to_it(tmp_path, capsys):
    from textdiff.bench.crossover import run_recipe

    extra = ["--set", "model.dropout=0.1"]  # dropout draws from the global RNG, which must resume too
    assert crossover(tmp_path, "--epochs", "1,2", *extra, recipes=(MASKED,)) == 0
    res = json.loads((tmp_path / "out/crossover.json").read_text())
    straight = run_recipe(res, res["runs"][0], 30, tmp_path / "straight")
    training.train_recipe(straight, progress=False)
    a = load_tensors(tmp_path / "runs/tiny-masked/model.safetensors")
    b = load_tensors(tmp_path / "straight/tiny-masked/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_grid_trains_every_setting_and_early_stopping_chooses_by_validation(tmp_path, capsys):
    assert crossover(tmp_path, "--epochs", "1", "--grid", "model.dropout=0,0.3", recipes=(AR,)) == 0
    res = json.loads((tmp_path / "out/crossover.json").read_text())
    assert [r["name"] for r in res["runs"]] == ["tiny-ar_dropout0", "tiny-ar_dropout0.3"]
    from textdiff.bench.crossover import summary

    best = summary(res)["best"]["tiny-ar"]
    assert best["validation"]["nats_per_token"] == min(p["validation"]["nats_per_token"] for p in res["points"])


def _recipe(tmp_path, src: str, old: str, new: str) -> str:
    path = tmp_path / Path(src).name.replace(".yaml", "-changed.yaml")
    text = Path(src).read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return str(path)


@pytest.mark.parametrize("case, args, message", [
    ("epochs decreasing", ["--epochs", "4,2"], "positive and increasing"),
    ("epochs zero", ["--epochs", "0,1"], "positive and increasing"),
    ("epochs not numbers", ["--epochs", "one,two"], "comma-separated positive numbers"),
    ("epochs closer than a step", ["--epochs", "1,1.01"], "closer than one step"),
    ("too many unique tokens", ["--unique-tokens", "10000000"], "more than the training split"),
    ("too few unique tokens", ["--unique-tokens", "64"], "fewer than train.batch_size"),
    ("epochs past the step limit", ["--epochs", "1,1e12"], "more than the limit"),
    ("a split smaller than a batch", ["--set", "train.batch_size=5000"], "fewer than train.batch_size=5000"),
    ("grid on the data", ["--grid", "data.max_length=16,32"], "differs from"),
    ("grid on the model size, key spaced", ["--grid", "model.n_layer =2,3"], "in model.n_layer"),
    ("grid on a key the benchmark sets", ["--grid", "train.steps=5,10"], "sets train.steps itself"),
    ("grid on the run name", ["--grid", "name=x/../../escape,y"], "sets name itself"),
    ("set on a key the benchmark sets", ["--set", "data.train_sequences=50"], "sets data.train_sequences itself"),
    ("grid key twice", ["--grid", "model.dropout=0", "--grid", "model.dropout=0.1"], "given twice"),
    ("grid value twice", ["--grid", "model.dropout=0.1,0.1"], "a value is given twice"),
    ("grid values that are one value", ["--grid", "model.dropout=0,0.0"], "same recipe"),
    ("grid values with spaces around them (valid)", ["--grid", "model.dropout=0, 0.1 "], None),
    ("grid without values", ["--grid", "model.dropout"], "expected KEY=V1,V2"),
    ("grid with a bad value", ["--grid", "model.dropout=0,lots"], "model.dropout"),
    ("negative eval sequences", ["--eval-sequences", "-1"], "--eval-sequences"),
])
def test_bad_arguments_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, trainings, case, args, message):
    if message is None:  # spaces around grid values are stripped: a valid grid
        assert crossover(tmp_path, "--epochs", "1", *args, recipes=(AR,)) == 0
        assert [r["name"] for r in json.loads((tmp_path / "out/crossover.json").read_text())["runs"]] == \
            ["tiny-ar_dropout0", "tiny-ar_dropout0.1"]
        return
    assert crossover(tmp_path, *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert trainings == [] and not (tmp_path / "out").exists() and not list((tmp_path / "runs").glob("tiny-*"))
    assert not (tmp_path / "runs/tokenizer").exists()


@pytest.mark.parametrize("old, new, what", [
    ("n_layer: 2", "n_layer: 3", "model.n_layer"),
    ("vocab_size: 512", "vocab_size: 256", "tokenizer"),
    ("max_examples: 2000", "max_examples: 1000", "data"),
    ("batch_size: 8", "batch_size: 4", "train.batch_size"),
])
def test_recipes_that_are_not_like_for_like_are_refused(tmp_path, capsys, old, new, what):
    other = _recipe(tmp_path, MASKED, old, new)
    assert crossover(tmp_path, recipes=(AR, other)) == 2
    err = capsys.readouterr().err.strip()
    assert what in err and "differs from" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["../outside", "tokenizer", "a b"])
def test_a_recipe_name_that_is_not_a_plain_folder_name_is_refused(tmp_path, capsys, name):
    other = _recipe(tmp_path, AR, "name: tiny-ar", f"name: {name!r}")
    assert crossover(tmp_path, recipes=(other,)) == 2
    assert "not a plain folder name" in capsys.readouterr().err
    assert not (tmp_path / "outside").exists() and not (tmp_path / "runs").exists()


def test_runs_of_a_changed_recipe_or_tokenizer_are_not_reused(tmp_path, capsys):
    ar = _recipe(tmp_path, AR, "lr: 1.0e-3", "lr: 1.0e-3")
    assert crossover(tmp_path, "--epochs", "1", recipes=(ar,)) == 0
    Path(ar).write_text(Path(ar).read_text().replace("lr: 1.0e-3", "lr: 2.0e-3"))
    # a fresh --out-dir beside the old runs: the budget there is not silently reported for the changed recipe
    assert main(["bench", "crossover", ar, *FAST, "--epochs", "1", "--runs", str(tmp_path / "runs"),
                 "--out-dir", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert "cannot continue this crossover" in err and "train.lr" in err
    Path(ar).write_text(Path(ar).read_text().replace("vocab_size: 512", "vocab_size: 300"))
    assert crossover(tmp_path, "--epochs", "1", recipes=(ar,)) == 2
    assert "holds a tokenizer trained from other data or tokenizer settings" in capsys.readouterr().err


def test_resume_refuses_other_settings_and_a_damaged_state_file(tmp_path, capsys):
    assert crossover(tmp_path, "--epochs", "1", recipes=(AR,)) == 0
    state = tmp_path / "out/crossover.json"
    before = state.read_text()
    assert crossover(tmp_path, "--epochs", "1", "--draws", "3", recipes=(AR,)) == 2
    assert "other settings (draws)" in capsys.readouterr().err
    assert crossover(tmp_path, "--epochs", "2", recipes=(AR,)) == 2  # budget 1 would be lost from the report
    assert "1 left out" in capsys.readouterr().err
    assert state.read_text() == before
    good = json.loads(before)
    for damage in ("{not json", json.dumps({**good, "points": [1, 2]}), json.dumps({**good, "epochs": None}),
                   json.dumps({**good, "points": [{**good["points"][0], "test": {"nats_per_token": "x"}}]}),
                   json.dumps({**good, "points": [*good["points"], {"run": "bogus", "epochs": 1}]})):
        state.write_text(damage)
        assert crossover(tmp_path, "--epochs", "1", recipes=(AR,)) == 2
        err = capsys.readouterr().err
        assert "not a crossover.json" in err and "\n" not in err.strip() and state.read_text() == damage


def test_a_run_past_a_budget_the_state_file_lacks_is_refused(tmp_path, capsys):
    assert crossover(tmp_path, "--epochs", "2", recipes=(AR,)) == 0
    (tmp_path / "out/crossover.json").unlink()
    assert crossover(tmp_path, "--epochs", "1,2", recipes=(AR,)) == 2
    assert "trained past epoch 1" in capsys.readouterr().err


def test_data_train_sequences_trains_on_the_first_n_and_refuses_more_than_there_are(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", MASKED, "--set", f"out_dir={run}", "--set", "data.train_sequences=1000000", "--no-samples"]) == 2
    err = capsys.readouterr().err.strip()
    assert "data.train_sequences=1,000,000 is more than the" in err and "\n" not in err
    assert not (run / "config.json").exists()
    assert main(["train", MASKED, "--set", f"out_dir={run}", "--set", "data.streaming=true",
                 "--set", "data.train_sequences=10"]) == 2
    assert "cannot be combined with data.streaming" in capsys.readouterr().err
    assert main(["train", MASKED, "--set", f"out_dir={run}", "--set", "data.train_sequences=16", "--set",
                 "train.steps=2", "--no-samples"]) == 0
    assert "16 training sequences of 32 tokens" in capsys.readouterr().out
