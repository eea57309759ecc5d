"""Edit infilling through the pipeline and the CLI: a span of unknown length never pushes the given text out, and
a template whose given text leaves no room for its spans is refused in one line."""

from __future__ import annotations

from tests.test_cli_errors import assert_one_line_error
from textdiff.cli import main
from textdiff.pipeline import TextDiffusionPipeline


def test_the_given_suffix_survives_spans_at_their_maximum_length(edit_run):
    pipe = TextDiffusionPipeline.from_pretrained(edit_run)
    for seed in range(3):
        for text in pipe.infill("the old [...] the river.", num_samples=8, steps=8, seed=seed).texts:
            assert text.startswith("the old") and text.endswith("the river."), text


def test_a_template_that_leaves_no_room_for_its_span_is_refused(edit_run, capsys):
    template = "the old king " * 8 + "[...] the river."  # 27 given tokens, the run's length is 24
    rc = main(["infill", str(edit_run), template])
    assert_one_line_error(rc, capsys.readouterr().err, ("no room for its [...] spans", "data.max_length=24"))
