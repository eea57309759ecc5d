"""The bound's report never crashes or misleads: a diverged model's bound gives PPL inf (not an OverflowError, not
a 96-digit number), and one time draw says its Monte Carlo error cannot be estimated instead of printing ± 0."""

from __future__ import annotations

import json
import math

from textdiff.cli import main
from textdiff.evaluation.perplexity import perplexity
from textdiff.noising.base import BoundOutput
from textdiff.pipeline import TextDiffusionPipeline


def test_a_diverged_bound_reports_an_infinite_perplexity(masked_run):
    pipe = TextDiffusionPipeline.from_pretrained(masked_run)
    real = pipe.backend.bound

    def diverged(model, batch, n_draws, gen):
        out = real(model, batch, n_draws, gen)
        return BoundOutput(out.nll * 0 + 1e6, out.mc_var, out.n_tokens, exact=False)  # ~4e4 nats/token

    pipe.backend.bound = diverged
    r = perplexity(pipe, "test", time_draws=2, max_sequences=4, progress=False)
    assert r.ppl == math.inf and "PPL inf" in r.line()
    pipe.backend.bound = lambda *a: BoundOutput(*(lambda o: (o.nll * 0 + 120.0 * o.n_tokens, o.mc_var, o.n_tokens))(
        real(*a)), exact=False)  # 120 nats/token: finite, but e^120 has 53 digits
    line = perplexity(pipe, "test", time_draws=2, max_sequences=4, progress=False).line()
    assert "PPL 1.3e+52" in line


def test_one_time_draw_says_the_error_cannot_be_estimated(masked_run, capsys, tmp_path):
    out = tmp_path / "ppl.json"
    assert main(["eval", str(masked_run), "--metrics", "ppl", "--draws", "1", "--max-sequences", "4",
                 "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert "± 0.0000" not in line and "not estimated: one time draw" in line
    assert json.loads(out.read_text())["ppl"]["stderr"] is None
    assert "not estimated" in out.with_suffix(".md").read_text()


def test_eval_announces_its_size_and_time_up_front_and_takes_threads(masked_run, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        assert main(["eval", str(masked_run), "--metrics", "ppl", "--draws", "3", "--max-sequences", "5",
                     "--batch-size", "2", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    captured = capsys.readouterr()
    first = captured.err.splitlines()[0]
    assert first.startswith("textdiff: eval test: 5 sequences x 3 time draws in 3 batches, about ") and " s " in first
    assert "3/3" in captured.err  # the progress bar over the batches
