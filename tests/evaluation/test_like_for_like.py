"""Like for like: the AR baseline's exact likelihood and a diffusion bound score the same tokens of the same split
(AR predicts each sequence's first token after an [EOS] start); an AR run from before `backend.start_token`
still loads, keeps its own convention, says so, and cannot be resumed under the new one."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from textdiff.errors import TextdiffError
from textdiff.evaluation import perplexity
from textdiff.pipeline import TextDiffusionPipeline


def _ppl(run, **kw):
    return perplexity(TextDiffusionPipeline.from_pretrained(run), "test", progress=False, **kw)


def test_ar_and_masked_count_the_same_tokens_on_the_same_split(masked_run, ar_run):
    masked, ar = _ppl(masked_run, time_draws=1), _ppl(ar_run)
    assert ar.n_sequences == masked.n_sequences > 0
    assert ar.n_tokens == masked.n_tokens == ar.n_sequences * 24  # packed: every position of every sequence
    assert ar.every_token and masked.every_token and "every token scored" in ar.line()


def test_the_first_token_is_predicted_after_an_eos_start(ar_run):
    pipe = TextDiffusionPipeline.from_pretrained(ar_run)
    from textdiff.noising.base import Batch

    ids = torch.tensor([[7, 8, 9, 10]])
    out = pipe.backend.bound(pipe.model, Batch(ids, torch.ones_like(ids, dtype=torch.bool)))
    logits = pipe.model(torch.tensor([[pipe.backend.special.eos, 7, 8, 9]]))  # (1, 4, V)
    direct = torch.nn.functional.cross_entropy(logits[0].float(), ids[0], reduction="sum")
    assert int(out.n_tokens) == 4 and torch.allclose(out.nll, direct.reshape(1), atol=1e-4)


@pytest.fixture
def old_ar_run(ar_run, tmp_path):
    """The AR run as written before backend.start_token existed (its config.json lacks the key)."""
    old = tmp_path / "old-ar"
    shutil.copytree(ar_run, old)
    cfg = json.loads((old / "config.json").read_text())
    del cfg["recipe"]["backend"]["start_token"]
    (old / "config.json").write_text(json.dumps(cfg))
    return old


def test_an_old_ar_run_loads_scores_as_it_was_trained_and_says_so(old_ar_run, ar_run):
    old, new = _ppl(old_ar_run), _ppl(ar_run)
    assert not old.every_token and old.n_tokens == new.n_tokens - new.n_sequences
    assert "first token not scored" in old.line() and "retrain" in old.line()


def test_an_old_ar_run_is_not_resumed_under_the_new_convention(old_ar_run):
    from textdiff.config import recipe_from_dict
    from textdiff.rundir import check

    raw = json.loads((old_ar_run / "config.json").read_text())["recipe"]
    raw["backend"]["start_token"] = True
    with pytest.raises(TextdiffError, match="backend.start_token"):
        check(recipe_from_dict(raw), old_ar_run, resume=True)


def test_benchmarks_reuse_old_diffusion_runs_and_retrain_only_old_ar_runs(masked_run, old_ar_run, tmp_path):
    """kjv_ratio.py / run_all.py reuse a run whose recipe is unchanged (rundir.same_recipe): a run written before
    backend.start_token and data.holdout existed still matches its recipe unless it is an AR run."""
    from textdiff.config import recipe_from_dict
    from textdiff.rundir import same_recipe

    old_masked = tmp_path / "old-masked"
    shutil.copytree(masked_run, old_masked)
    cfg = json.loads((old_masked / "config.json").read_text())
    for key in ("splits", "example", "holdout", "holdout_seed"):
        del cfg["recipe"]["data"][key]
    (old_masked / "config.json").write_text(json.dumps(cfg))
    for run, reused in ((old_masked, True), (old_ar_run, False)):
        raw = json.loads((run / "config.json").read_text())["recipe"]
        fresh = {k: v for k, v in raw.items() if k != "backend"} | {"backend": {"name": raw["backend"]["name"]}}
        fresh["data"] = {k: v for k, v in raw["data"].items() if k not in ("splits", "example", "holdout", "holdout_seed")}
        assert same_recipe(run, recipe_from_dict(fresh)) == reused
