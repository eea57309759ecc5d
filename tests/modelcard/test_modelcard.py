"""Every run directory gets a README.md model card: recipe, data card and licence, final metrics, the command."""

from __future__ import annotations

import json
import shutil

import yaml

from textdiff.modelcard import card_field, write_model_card


def test_training_writes_a_card(masked_run):
    card = (masked_run / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "textdiff" and front["pipeline_tag"] == "fill-mask" and "masked" in front["tags"]
    rows = [json.loads(ln) for ln in (masked_run / "metrics.jsonl").read_text().splitlines()]
    last_val = [r for r in rows if "val_nll" in r][-1]
    assert f"| {last_val['step']} | validation nats/token (ELBO bound) | {last_val['val_nll']:.4f} |" in card
    assert "## Training" in card and "textdiff train" in card
    recipe = yaml.safe_load(card.split("```yaml")[1].split("```")[0])
    saved = json.loads((masked_run / "config.json").read_text())["recipe"]
    assert recipe == {k: v for k, v in saved.items() if k != "out_dir"}
    assert "Licence of the data: not recorded (a local file)" in card  # the tests' corpus is a local file


def test_ar_card_and_the_command_is_kept(ar_run, tmp_path):
    run = shutil.copytree(ar_run, tmp_path / "ar")
    write_model_card(run, command="textdiff train recipes/tiny/ar.yaml --set train.steps=60")
    write_model_card(run)  # a later rewrite (textdiff push) keeps the recorded command
    card = (run / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "exact NLL" in card
    assert "Made by: `textdiff train recipes/tiny/ar.yaml --set train.steps=60`" in card


def test_project_corpus_gets_its_data_card_licence(masked_run, tmp_path):
    run = shutil.copytree(masked_run, tmp_path / "run")
    cfg = json.loads((run / "config.json").read_text())
    cfg["recipe"]["data"].update(path="bible/kjv_asv.jsonl", prepare="bible")
    (run / "config.json").write_text(json.dumps(cfg))
    card = write_model_card(run).read_text()
    assert "Data card: textdiff's `data/bible/README.md`" in card and "public domain" in card


def test_card_field_joins_continuation_lines():
    text = "- **Content:** a\n- **Licence:** public\n  domain text.\n- **Splits:** x\n"
    assert card_field(text, "Licence") == "public domain text."
    assert card_field(text, "Missing") is None
