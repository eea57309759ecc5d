"""`textdiff push`: everything up to the upload (checks, the card, the file list), the upload's calls against a stand-in
for huggingface_hub's HfApi, and the real HfApi offline (one line, exit 2)."""

from __future__ import annotations

import shutil

import pytest

from tests.test_cli_errors import assert_one_line_error
from textdiff.cli import main


def test_dry_run_lists_the_files_and_writes_the_card(masked_run, tmp_path, capsys):
    run = shutil.copytree(masked_run, tmp_path / "run")
    (run / "README.md").unlink()
    assert main(["push", str(run), "me/tiny-masked", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "metrics.jsonl"):
        assert name in out
    assert "checkpoints" not in out and (run / "README.md").is_file()


def test_upload_calls(masked_run, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw))

        def upload_folder(self, **kw):
            calls.append(("upload_folder", kw))
            return type("Info", (), {"commit_url": f"https://hub.example/{kw['repo_id']}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert main(["push", str(masked_run), "me/tiny-masked", "--private", "--checkpoints"]) == 0
    (_, repo, kw), (_, up) = calls
    assert repo == "me/tiny-masked" and kw["private"] is True
    assert up["folder_path"] == str(masked_run) and up["repo_id"] == "me/tiny-masked"
    patterns = up["allow_patterns"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(patterns)
    assert any(p.startswith("checkpoints/") for p in patterns)
    assert "uploaded: https://hub.example/me/tiny-masked/commit/1" in capsys.readouterr().out


def test_offline_upload_is_one_line(masked_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = shutil.copytree(masked_run, tmp_path / "run")
    rc = main(["push", str(run), "me/tiny-masked"])
    assert_one_line_error(rc, capsys.readouterr().err, ("push to me/tiny-masked", "could not be reached"))


@pytest.mark.parametrize("repo, needles", [("bad id!", ("repository id",)), ("noslash", ("NAMESPACE/NAME",))])
def test_bad_repo_id(masked_run, capsys, repo, needles):
    rc = main(["push", str(masked_run), repo, "--dry-run"])
    assert_one_line_error(rc, capsys.readouterr().err, needles)


def test_not_a_run(tmp_path, capsys):
    rc = main(["push", str(tmp_path), "me/x", "--dry-run"])
    assert_one_line_error(rc, capsys.readouterr().err, ("no config.json",))


def test_run_without_weights(masked_run, tmp_path, capsys):
    run = shutil.copytree(masked_run, tmp_path / "run")
    (run / "model.safetensors").unlink()
    rc = main(["push", str(run), "me/x", "--dry-run"])
    assert_one_line_error(rc, capsys.readouterr().err, ("model.safetensors missing",))
