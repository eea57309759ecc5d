"""pipe.infill over a list of templates: batched by token length, num_samples rows each, in the order given."""

from __future__ import annotations

import pytest
import torch

from textdiff.errors import TextdiffError
from textdiff.pipeline import TextDiffusionPipeline


def test_a_list_of_templates_of_several_lengths_is_filled_in_order(masked_run, monkeypatch):
    pipe = TextDiffusionPipeline.from_pretrained(masked_run)
    templates = ["the old [MASK:2] the [MASK].", "the [MASK] king", "the old [MASK] river", "the [MASK] stone"]
    calls, run = [], pipe._run
    monkeypatch.setattr(pipe, "_run", lambda x, *a, **k: calls.append(x.shape) or run(x, *a, **k))
    out = pipe.infill(templates, num_samples=2, steps=4, seed=1)
    assert len(calls) == 3 and sum(s[0] for s in calls) == 8  # one sampler call per token length
    assert len(out.texts) == 8 and out.ids.shape[0] == 8
    starts = ["the old", "the old", "the", "the", "the old", "the old", "the", "the"]
    ends = ["", "", "king", "king", "river", "river", "stone", "stone"]
    for text, start, end in zip(out.texts, starts, ends):
        assert text.startswith(start) and text.endswith(end), text
    alone = pipe.infill([templates[1], templates[3]], num_samples=2, steps=4, seed=1)  # their own length group
    assert out.texts[2:4] + out.texts[6:] == alone.texts  # the same fillings as a call of that group alone
    pad, width = pipe.backend.special.pad, alone.ids.shape[1]
    assert torch.equal(out.ids[2:4, :width], alone.ids[:2]) and (out.ids[2:4, width:] == pad).all()


def test_a_list_holding_something_else_than_text_is_refused(masked_run):
    pipe = TextDiffusionPipeline.from_pretrained(masked_run)
    with pytest.raises(TextdiffError, match="list of templates"):
        pipe.infill(["the [MASK] king", 3])
