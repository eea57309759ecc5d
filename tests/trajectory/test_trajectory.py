"""The trajectory recorder on every back-end, its terminal view (plain and, in tmux, live), the HTML page in headless
Chromium, the GIF / PNG strip, and the flags' bad input."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.browser import TMUX, dump_dom, needs_chromium, needs_tmux, screenshot
from tests.conftest import ROOT, make_sentences, tiny_recipe_dict
from tests.test_cli_errors import assert_one_line_error
from textdiff.cli import main
from textdiff.noising import BACKENDS
from textdiff.trajectory import MASK_TEXT, STATES, TerminalView, Trajectory, html_page, write_trajectory


def tiny_pipe(backend: str):
    """An untrained pipeline of the tiny recipe (the recorder needs steps, not good text)."""
    from textdiff.config import recipe_from_dict
    from textdiff.models import build_model
    from textdiff.noising import get_backend
    from textdiff.pipeline import TextDiffusionPipeline
    from textdiff.tokenization import special_tokens, train_tokenizer

    raw = tiny_recipe_dict(Path("unused.jsonl"), Path("unused"), backend)
    raw["sample"].pop("sampler", None)
    recipe = recipe_from_dict(raw)
    tok = train_tokenizer(recipe.tokenizer, make_sentences(200, 0))
    torch.manual_seed(0)
    model = build_model(recipe, len(tok), recipe.data.max_length)
    return TextDiffusionPipeline(recipe, model, get_backend(recipe.backend, special_tokens(tok), len(tok)), tok)


def shown_text(shown: str) -> str:
    """A shown row as the pipeline decodes it: without [EOS] (drawn |) and the other special tokens."""
    return " ".join(w for w in shown.split() if w != "|" and not re.fullmatch(r"\[[A-Z]+\]", w))


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_recorder_on_every_backend(backend):
    pipe = tiny_pipe(backend)
    rec = Trajectory(pipe)
    out = pipe.generate(2, steps=None if pipe.backend.causal else 5, length=12, callback=rec)
    steps = 12 if pipe.backend.causal else 5  # the AR baseline steps once per token
    assert [f.step for f in rec.frames] == list(range(steps + 1))
    assert all(c.state in STATES for f in rec.frames for row in f.rows for c in row)
    assert all(c.state == "masked" for row in rec.frames[0].rows for c in row)  # the start: nothing decided
    assert not any(c.state == "masked" for row in rec.frames[-1].rows for c in row)  # the end: everything
    assert any(c.state == "new" for f in rec.frames[1:] for row in f.rows for c in row)
    assert [shown_text(t) for t in rec.texts(rec.frames[-1])] == out.texts  # the last frame is the output


def test_edit_lengths_change_and_align():
    pipe = tiny_pipe("edit")
    rec = Trajectory(pipe)
    pipe.generate(2, steps=6, length=12, callback=rec)
    lengths = {len(row) for f in rec.frames for row in f.rows}
    assert len(lengths) > 1  # the rows grow and shrink
    for before, after in zip(rec.frames[1:], rec.frames[2:]):  # an unchanged token is never called new
        for b_row, a_row in zip(before.rows, after.rows):
            if [c.text for c in b_row] == [c.text for c in a_row]:
                assert not any(c.state == "new" for c in a_row)


def test_infill_template_is_given():
    pipe = tiny_pipe("masked")
    rec = Trajectory(pipe, template="the old [MASK:3] sees the [MASK]")
    out = pipe.infill("the old [MASK:3] sees the [MASK]", num_samples=2, steps=4, callback=rec)
    first = rec.frames[0].rows[0]
    assert [c.state for c in first] == ["given", "given", "masked", "masked", "masked", "given", "given", "masked"]
    assert [c.state for c in rec.frames[-1].rows[1]][:2] == ["given", "given"]
    assert [shown_text(t) for t in rec.texts(rec.frames[-1])] == out.texts


def test_plain_lines_when_not_a_terminal():
    pipe = tiny_pipe("masked")
    stream = io.StringIO()
    rec = Trajectory(pipe, listeners=[TerminalView(True, 3, stream=stream)])
    out = pipe.generate(2, steps=3, length=8, callback=rec)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4 * 2 and "\x1b" not in stream.getvalue()
    assert lines[0].startswith("step 0/3 [0] ") and MASK_TEXT in lines[0]
    assert lines[-1].startswith("step 3/3 [1] ") and shown_text(lines[-1][len("step 3/3 [1] "):]) == out.texts[1]


def _cli_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@needs_tmux
def test_show_redraws_in_a_real_terminal(masked_run, tmp_path):
    """tmux runs `textdiff sample --show`; capture-pane sees steps between the start and the final text."""
    session = f"td{os.getpid()}"
    cmd = (f"{sys.executable} -m textdiff sample {masked_run} -n 1 --steps 5 --show --show-delay 0.4 --length 12; "
           f"echo DONE-$?")
    subprocess.run([TMUX, "new-session", "-d", "-s", session, "-x", "120", "-y", "30", "env",
                    *[f"{k}={v}" for k, v in _cli_env().items() if k in ("PYTHONPATH", "HF_HUB_OFFLINE", "HOME")],
                    "bash", "--norc", "-c", cmd + "; sleep 30"], check=True)
    screens = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            screen = subprocess.run([TMUX, "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout
            screens.append(screen)
            if "DONE-" in screen:
                break
            time.sleep(0.1)
    finally:
        subprocess.run([TMUX, "kill-session", "-t", session], capture_output=True)
    final = screens[-1]
    assert "DONE-0" in final, final
    middle = [s for s in screens if re.search(r"^step [1-4]/5$", s, re.M)]
    assert middle, "no intermediate step was on screen"
    row = next(ln for ln in middle[0].splitlines() if ln.startswith("[0]"))
    assert MASK_TEXT in row and re.search(r"[a-z]", row), row  # partly denoised: masks and words
    printed = re.search(r"^\[0\] (?!.*░)(.+)$", final.split("step 5/5")[-1], re.M).group(1)  # the printed sample
    assert "step 5/5" in final and MASK_TEXT not in printed
    assert len(screens) > 3


@needs_chromium
def test_html_page_in_chromium_at_a_middle_step(masked_run, tmp_path):
    page = tmp_path / "t.html"
    assert main(["infill", str(masked_run), "the old [MASK:6] and the [MASK:4]", "-n", "2", "--steps", "8",
                 "--trajectory", str(page)]) == 0
    html = page.read_text()
    assert "http://" not in html and "https://" not in html and "<script src" not in html  # no network
    dom = dump_dom(f"file://{page}#step=4", tmp_path / "profile")
    assert "step 4 / 8" in dom
    rows = re.findall(r'<div class="td-row">(.*?)</div>', dom)
    assert len(rows) == 2
    states = re.findall(r'td-cell td-(\w+)', rows[0] + rows[1])
    assert "masked" in states and {"new", "kept"} & set(states) and "given" in states  # partly denoised
    shot = screenshot(f"file://{page}#step=4", tmp_path / "shot.png", tmp_path / "profile2")
    from PIL import Image

    colours = {c for _, c in Image.open(shot).convert("RGB").getcolors(1 << 20)}
    assert (228, 228, 228) in colours  # a masked cell is drawn
    assert (183, 240, 192) in colours  # a token new at this step is highlighted


def test_gif_and_png_strip(tmp_path):
    from PIL import Image

    pipe = tiny_pipe("masked")
    rec = Trajectory(pipe)
    pipe.generate(2, steps=4, length=10, callback=rec)
    gif = write_trajectory(rec, tmp_path / "t.gif")
    strip = write_trajectory(rec, tmp_path / "t.png")
    assert Image.open(gif).n_frames == 5
    img = Image.open(strip)
    assert img.format == "PNG" and img.height > 4 * 40
    assert "step 4" in html_page(rec) or '"step": 4' in html_page(rec)


@pytest.mark.parametrize("extra, needles", [
    (["--trajectory", "{tmp}/missing/t.html"], ("--trajectory", "does not exist")),
    (["--trajectory", "{tmp}"], ("--trajectory", "is a directory")),
    (["--trajectory", "{tmp}/t.txt"], ("--trajectory", ".html, .gif, .png")),
    (["--show", "--steps", "1"], ("--show", "no intermediate state")),
], ids=["no-folder", "a-folder", "suffix", "one-step"])
def test_bad_flags(masked_run, tmp_path, capsys, extra, needles):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    rc = main(["infill", str(masked_run), "the old [MASK:3]", *argv])
    assert_one_line_error(rc, capsys.readouterr().err, needles)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_unwritable_folder(masked_run, tmp_path, capsys):
    """A folder where no file can be made (procfs refuses even root; elsewhere a folder without write permission)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    target = Path("/proc/textdiff-t.html") if os.access(locked, os.W_OK) else locked / "t.html"
    try:
        rc = main(["sample", str(masked_run), "--trajectory", str(target)])
        assert_one_line_error(rc, capsys.readouterr().err, ("--trajectory", "cannot be written"))
    finally:
        locked.chmod(0o700)


def test_show_and_json_conflict(masked_run, capsys):
    rc = main(["sample", str(masked_run), "--show", "--json"])
    assert_one_line_error(rc, capsys.readouterr().err, ("--show", "--json"))
