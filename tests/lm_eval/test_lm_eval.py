"""The lm-evaluation-harness model: a local multiple-choice task (a task YAML over a small local jsonl, no hub
dataset) through lm_eval's own command line and through simple_evaluate; the likelihoods against the model's own
numbers; rolling likelihood, generation, and the requests a run cannot answer."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys

import pytest
import torch

pytest.importorskip("lm_eval", reason="the lmeval extra: pip install -e '.[lmeval]'")

from tests.conftest import ADJS, NOUNS, ROOT, VERBS, tiny_recipe_dict  # noqa: E402
from textdiff.errors import TextdiffError  # noqa: E402
from textdiff.lm_eval import TextdiffLM  # noqa: E402


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """A multiple-choice task over the toy grammar: after `the ADJ NOUN VERB the`, a noun (right) or a verb or
    an adjective."""
    root = tmp_path_factory.mktemp("tasks")
    rng = random.Random(0)
    rows = []
    for _ in range(30):
        choices = [f"{rng.choice(NOUNS)}.", rng.choice(VERBS), rng.choice(ADJS)]
        order = rng.sample(range(3), 3)
        rows.append({"context": f"the {rng.choice(ADJS)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the",
                     "choices": [choices[k] for k in order], "answer": order.index(0)})
    (root / "toy_mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "toy_mc.yaml").write_text(
        "task: textdiff_toy_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {root / 'toy_mc.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n    higher_is_better: true\n")
    return root


def test_lm_eval_command_line_on_a_masked_run(masked_run, task_dir):
    """`python -m textdiff.lm_eval` is lm_eval's command line with the model registered; it prints the table."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "textdiff.lm_eval", "--model", "textdiff", "--model_args",
                           f"pretrained={masked_run},draws=4", "--tasks", "textdiff_toy_mc", "--include_path",
                           str(task_dir), "--batch_size", "16", "--device", "cpu"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = re.search(r"\|textdiff_toy_mc\s*\|.*\|acc\s*\|.\s*\|\s*([0-9.]+)\|", proc.stdout)
    assert row, proc.stdout
    assert 0.0 <= float(row.group(1)) <= 1.0


def test_simple_evaluate_on_an_ar_run(ar_run, task_dir):
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks = TaskManager(include_path=str(task_dir), include_defaults=False)
    res = lm_eval.simple_evaluate(model="textdiff", model_args=f"pretrained={ar_run}", tasks=["textdiff_toy_mc"],
                                  task_manager=tasks, batch_size=16, device="cpu")
    acc = res["results"]["textdiff_toy_mc"]["acc,none"]
    assert 0.0 <= acc <= 1.0
    print(f"ar acc {acc}")


def test_ar_loglikelihood_is_exact(ar_run):
    lm = TextdiffLM(str(ar_run))
    ctx, cont = lm.pair("the old king sees the", " river and")
    (ll, _), = lm.score([(ctx, cont)], progress=False)
    ids = torch.tensor([[lm.pipe.backend.special.eos] + ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(lm.pipe.model(ids[:, :-1]).float(), dim=-1)[0]
    want = sum(float(logp[len(ctx) + i, tok]) for i, tok in enumerate(cont))
    assert ll == pytest.approx(want, abs=1e-4)
    whole = lm.encode("the old king sees the river and")  # rolling over a short text: the likelihood from [EOS]
    rolled = lm.loglikelihood_rolling([type("R", (), {"args": ("the old king sees the river and",)})()], True)[0]
    assert rolled == pytest.approx(lm.score([([], whole)], progress=False)[0][0], abs=1e-4)


def test_masked_one_token_loglikelihood_is_the_model_probability(masked_run):
    """With one continuation token the ELBO (count sampling: k = 1 of n = 1, weight 1) is exactly log p(x | ctx)."""
    lm = TextdiffLM(str(masked_run), draws=3)
    ctx, cont = lm.pair("the old king sees the", " river.")
    assert len(cont) == 1
    (ll, _), = lm.score([(ctx, cont)], progress=False)
    x = torch.tensor([ctx + [lm.pipe.backend.special.mask]])
    with torch.no_grad():
        logits = lm.pipe.backend.predict(lm.pipe.model, x, torch.ones(1)).logits
    assert ll == pytest.approx(float(torch.log_softmax(logits[0, -1], -1)[cont[0]]), abs=1e-4)


def test_greedy_flag_and_generation(masked_run):
    lm = TextdiffLM(str(masked_run))
    ctx = lm.encode("the old king sees the")
    greedy = lm.pipe.denoise(torch.tensor([ctx + [lm.pipe.backend.special.mask]]), temperature=0.0, steps=1).ids
    best = greedy[0, -1].item()
    other = next(t for t in lm.encode("river. keeps old") if t != best)
    assert [hit for _, hit in lm.score([(ctx, [best]), (ctx, [other])], progress=False)] == [True, False]
    Req = type("R", (), {})
    req = Req()
    req.args = ("the old king", {"until": ["."], "max_gen_toks": 6})
    text, = lm.generate_until([req], True)
    assert isinstance(text, str) and "." not in text and "[MASK]" not in text


def test_a_backend_without_a_bound_cannot_answer(tmp_path_factory, corpus):
    from textdiff.config import recipe_from_dict
    from textdiff.training import train_recipe

    raw = tiny_recipe_dict(corpus, tmp_path_factory.mktemp("runs") / "simplex", "simplex")
    raw["train"]["steps"] = 2
    raw["sample"].pop("sampler", None)
    run = train_recipe(recipe_from_dict(raw), progress=False)
    lm = TextdiffLM(str(run))
    req = type("R", (), {"args": ("the old king", " sees")})()
    with pytest.raises(TextdiffError, match="simplex back-end has no likelihood bound"):
        lm.loglikelihood([req])
