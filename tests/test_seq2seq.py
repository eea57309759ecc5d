"""Seq2seq conditioning for every back-end: the source is never noised and comes out unchanged, classifier-free
guidance at w = 0 is conditional sampling exactly, BLEU / ROUGE-L modules against sacrebleu and hand counts,
MBR, and a tiny train -> generate -> eval bleu through the CLI."""

from __future__ import annotations

import json
import random

import pytest
import sacrebleu
import torch

from textdiff.cli import main
from textdiff.config import recipe_from_dict
from textdiff.data import drop_condition, pad_pairs, segment_ids, source_mask
from textdiff.errors import TextdiffError
from textdiff.noising.base import Batch, SpecialTokens
from textdiff.pipeline import TextDiffusionPipeline
from textdiff.sampling import SAMPLERS
from textdiff.sampling.guidance import classifier_free

from tests.conftest import ADJS, NOUNS, VERBS

SPECIAL = SpecialTokens(pad=0, mask=1, bos=2, eos=3, unk=4, sep=5)
BACKENDS = ("masked", "embedding", "simplex", "uniform", "ar")


def make_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """Synthetic source `noun verb noun` -> target `the ADJ noun verb the noun .` (several targets per source)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        n1, v, n2 = rng.choice(NOUNS[:4]), rng.choice(VERBS[:3]), rng.choice(NOUNS[:4])
        out.append((f"{n1} {v} {n2}", f"the {rng.choice(ADJS[:2])} {n1} {v} the {n2} ."))
    return out


@pytest.fixture(scope="session")
def pair_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    rows = [{"src": s, "tgt": t, "split": sp} for sp, n, seed in (("train", 600, 0), ("validation", 40, 1),
                                                                ("test", 60, 2)) for s, t in make_pairs(n, seed)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def seq2seq_recipe(corpus, out_dir, backend: str, steps: int = 12) -> dict:
    return {
        "name": f"s2s-{backend}", "out_dir": str(out_dir),
        "data": {"path": str(corpus), "text_field": "tgt", "source_field": "src", "split_field": "split",
                 "mode": "pad", "pad_in_loss": True, "max_length": 16},
        "tokenizer": {"kind": "wordlevel", "vocab_size": 64, "min_frequency": 1},
        "model": {"n_layer": 2, "n_embd": 32, "n_head": 2, "segments": backend != "ar"},
        "backend": {"name": backend},
        "train": {"steps": steps, "batch_size": 16, "lr": 3e-3, "warmup_steps": 2, "precision": "fp32",
                  "eval_every": 12, "eval_batches": 1, "checkpoint_every": 12, "log_every": 6, "seed": 0,
                  "cond_dropout": 0.0 if backend == "ar" else 0.2},
        "sample": {"steps": 8, "num_samples": 2},
    }


@pytest.fixture(scope="session")
def s2s_runs(tmp_path_factory, pair_corpus):
    from textdiff.training import train_recipe

    root = tmp_path_factory.mktemp("s2s-runs")
    return {b: train_recipe(recipe_from_dict(seq2seq_recipe(pair_corpus, root / b, b)), progress=False)
            for b in BACKENDS}


# --- data layout -------------------------------------------------------------------------------------------------

def test_pairs_layout_loss_mask_and_segments():
    seqs = pad_pairs([[10, 11]], [[20, 21, 22]], 10, SPECIAL, pad_in_loss=True, truncate=True)
    assert seqs.ids[0].tolist() == [10, 11, 5, 20, 21, 22, 3, 0, 0, 0]
    assert seqs.loss_mask[0].tolist() == [False] * 3 + [True] * 7  # the source and [SEP] never count
    no_pad = pad_pairs([[10, 11]], [[20, 21, 22]], 10, SPECIAL, pad_in_loss=False, truncate=True)
    assert no_pad.loss_mask[0].tolist() == [False] * 3 + [True] * 4 + [False] * 3
    assert segment_ids(seqs.ids, 5)[0].tolist() == [0, 0, 0] + [1] * 7
    assert source_mask(seqs.ids, 5)[0].tolist() == [True, True] + [False] * 8


def test_a_long_pair_keeps_half_the_room_for_the_source():
    seqs = pad_pairs([list(range(10, 30))], [list(range(30, 50))], 12, SPECIAL, pad_in_loss=False, truncate=True)
    row = seqs.ids[0].tolist()
    assert row[:5] == list(range(10, 15)) and row[5] == 5 and row[-1] == 3
    with pytest.raises(TextdiffError, match="data.max_length"):
        pad_pairs([list(range(10, 30))], [[30]], 12, SPECIAL, pad_in_loss=False, truncate=False)


def test_condition_dropout_blanks_whole_sources_only():
    seqs = pad_pairs([[10, 11]] * 64, [[20, 21]] * 64, 8, SPECIAL, pad_in_loss=True, truncate=True)
    out = drop_condition(Batch(seqs.ids, seqs.loss_mask), 0.5, 5, 0, torch.Generator().manual_seed(0))
    dropped = out.ids[:, 0] == 0
    assert 10 < int(dropped.sum()) < 54
    assert (out.ids[dropped, :2] == 0).all() and (out.ids[~dropped, :2] == torch.tensor([10, 11])).all()
    assert torch.equal(out.ids[:, 2:], seqs.ids[:, 2:]) and torch.equal(out.loss_mask, seqs.loss_mask)
    same = drop_condition(Batch(seqs.ids, seqs.loss_mask), 0.0, 5, 0, torch.Generator().manual_seed(0))
    assert torch.equal(same.ids, seqs.ids)


@pytest.mark.parametrize("change, match", [
    ({"model": {"segments": True}}, "data.source_field"),
    ({"train": {"cond_dropout": 0.5}}, "data.source_field"),
    ({"data": {"source_field": "src", "mode": "pack"}}, "data.mode"),
    ({"data": {"source_field": "text"}}, "data.source_field"),
    ({"train": {"cond_dropout": 1.5}}, "train.cond_dropout"),
    ({"sample": {"guidance_scale": -1.0}}, "sample.guidance_scale"),
    ({"sample": {"mbr": 0}}, "sample.mbr"),
])
def test_bad_seq2seq_config_names_the_key(change, match):
    raw = {"data": {"path": "x.jsonl", "mode": "pad"}}
    for section, values in change.items():
        raw.setdefault(section, {}).update(values)
    with pytest.raises(TextdiffError, match=match):
        recipe_from_dict(raw)


def test_segments_are_for_bidirectional_backends():
    with pytest.raises(TextdiffError, match="model.segments"):
        recipe_from_dict({"data": {"path": "x.jsonl", "mode": "pad", "source_field": "s"},
                          "model": {"segments": True}, "backend": {"name": "ar"}})


# --- every back-end ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_source_tokens_come_out_unchanged(s2s_runs, backend):
    pipe = TextDiffusionPipeline.from_pretrained(s2s_runs[backend])
    sources = ["king sees river", "stone keeps city", "river finds king river"]
    out = pipe.translate(sources, num_samples=2, seed=3)
    assert len(out.texts) == 6 and out.ids.shape == (6, 16)
    sep = pipe.backend.special.sep
    for i, src in enumerate(sources):
        given = pipe.tokenizer(src, add_special_tokens=False)["input_ids"]
        for row in out.ids[2 * i:2 * i + 2].tolist():
            assert row[:len(given) + 1] == given + [sep]
    assert (out.ids != pipe.backend.special.mask).all()


@pytest.mark.parametrize("backend", ["masked", "ar"])
def test_sources_of_different_lengths_share_a_batch_except_for_the_ar_baseline(s2s_runs, backend, monkeypatch):
    """Each row keeps its own layout, so greedy outputs do not depend on the company a source keeps."""
    pipe = TextDiffusionPipeline.from_pretrained(s2s_runs[backend])
    sources = ["king sees river", "river finds king river", "stone keeps city"]
    calls, sample = [], pipe._sample
    monkeypatch.setattr(pipe, "_sample", lambda x, *a, **k: calls.append(x.shape[0]) or sample(x, *a, **k))
    opts = {"temperature": 0.0, **({} if backend == "ar" else {"steps": 4})}  # the AR sampler takes no steps
    together = pipe.translate(sources, **opts).texts
    assert calls == ([2, 1] if backend == "ar" else [3])
    assert together == [pipe.translate(s, **opts).texts[0] for s in sources]


def untrained(backend: str, vocab: int = 24, length: int = 16):
    from textdiff.models import build_model
    from textdiff.noising import get_backend

    raw = {"data": {"path": "unused.jsonl", "mode": "pad", "source_field": "src", "max_length": length},
           "model": {"n_layer": 1, "n_embd": 16, "n_head": 2, "segments": True}, "backend": {"name": backend}}
    recipe = recipe_from_dict(raw)
    torch.manual_seed(0)
    return build_model(recipe, vocab, length).eval(), get_backend(recipe.backend, SPECIAL, vocab)


@pytest.mark.parametrize("backend", ["masked", "embedding", "simplex", "uniform"])
def test_the_source_is_never_noised_in_training(backend):
    """The source and [SEP] are outside the loss mask: corruption at t = 1 leaves them clean, and they do not count."""
    model, bk = untrained(backend)
    seqs = pad_pairs([[6, 7, 8]] * 4, [[9, 10]] * 4, 16, SPECIAL, pad_in_loss=True, truncate=True)
    batch, gen = Batch(seqs.ids, seqs.loss_mask), torch.Generator().manual_seed(0)
    extra = {"model": model} if backend == "embedding" else {}
    x_t = bk.corrupt(batch.ids, torch.ones(4), gen, noise_mask=batch.loss_mask, **extra)
    clean = {"masked": lambda ids: ids, "uniform": lambda ids: ids, "embedding": lambda ids: model.noise.table()[ids],
             "simplex": lambda ids: bk.simplex(ids)}[backend](batch.ids)
    assert torch.equal(x_t[:, :4], clean[:, :4])
    assert not torch.equal(x_t[:, 4:], clean[:, 4:])
    with model.segmented(segment_ids(batch.ids, SPECIAL.sep)):
        out = bk.loss(model, batch, gen)
    assert out.n_tokens == int(seqs.loss_mask.sum()) == 4 * 12
    assert bool(torch.isfinite(out.loss))


@pytest.mark.parametrize("backend", ["masked", "embedding", "simplex", "uniform"])
def test_guidance_scale_zero_is_conditional_sampling_exactly(s2s_runs, backend):
    pipe = TextDiffusionPipeline.from_pretrained(s2s_runs[backend])
    x = torch.tensor([[6, 7, 8, 5] + [1] * 12, [9, 7, 6, 5] + [1] * 12])
    opts = pipe.options(steps=6)
    sampler = SAMPLERS[opts.sampler]
    src = source_mask(x, 5)

    def run(guidance):
        with pipe.model.segmented(segment_ids(x, 5)):
            return sampler(pipe.model, pipe.backend, x, torch.Generator().manual_seed(7), steps=opts.steps,
                           guidance=guidance, **opts.options)

    plain = run(None)
    assert torch.equal(run(classifier_free(pipe.model, pipe.backend, src, 0.0)), plain)


def test_mix_is_the_cfg_combination_and_keeps_infinities():
    from textdiff.sampling.guidance import mix

    inf = float("-inf")
    cond, uncond = torch.tensor([1.0, 2.0, inf, 0.0]), torch.tensor([0.5, 3.0, 0.0, inf])
    assert torch.equal(mix(cond, uncond, 0.0), cond)
    assert torch.equal(mix(cond, uncond, 2.0), torch.tensor([2.0, 0.0, inf, 0.0]))  # (1 + w) c - w u where finite


@pytest.mark.parametrize("backend", ["masked", "embedding", "simplex", "uniform"])
def test_guided_generation_runs_and_keeps_the_source(s2s_runs, backend):
    pipe = TextDiffusionPipeline.from_pretrained(s2s_runs[backend])
    out = pipe.translate(["king sees river"], num_samples=2, guidance_scale=1.5, seed=0)
    given = pipe.tokenizer("king sees river", add_special_tokens=False)["input_ids"]
    assert all(row[:len(given)] == given for row in out.ids.tolist())


def test_guidance_needs_condition_dropout_and_a_diffusion_model(s2s_runs):
    with pytest.raises(TextdiffError, match="guidance"):
        TextDiffusionPipeline.from_pretrained(s2s_runs["ar"]).translate(["king sees river"], guidance_scale=1.0)


def test_mbr_returns_one_output_per_source(s2s_runs):
    pipe = TextDiffusionPipeline.from_pretrained(s2s_runs["masked"])
    out = pipe.translate(["king sees river", "stone keeps city"], mbr=4, seed=0)
    assert len(out.texts) == 2 and out.ids.shape[0] == 2


def test_an_empty_source_is_refused(s2s_runs):
    pipe = TextDiffusionPipeline.from_pretrained(s2s_runs["masked"])
    for sources in ("", ["king sees river", "  "]):
        with pytest.raises(TextdiffError, match="source [01] is empty"):
            pipe.translate(sources)


def test_translate_refuses_an_unconditional_run(masked_run):
    with pytest.raises(TextdiffError, match="not seq2seq"):
        TextDiffusionPipeline.from_pretrained(masked_run).translate("the king")


# --- metrics -----------------------------------------------------------------------------------------------------

PREDS = ["the cat sat on the mat .", "a dog barks at the old man", "it is raining"]
REFS = [["the cat sat on a mat .", "a cat was sitting on the mat ."], ["the dog barks at an old man"],
        ["it rains", "it is raining today", "rain"]]


def test_bleu_module_matches_sacrebleu_single_and_multi_reference():
    from textdiff.evaluation.metrics import load

    bleu = load("bleu")
    single = bleu.compute(predictions=PREDS, references=[[r[0]] for r in REFS])
    assert single["score"] == pytest.approx(sacrebleu.corpus_bleu(PREDS, [[r[0] for r in REFS]]).score, abs=1e-9)
    multi = bleu.compute(predictions=PREDS, references=REFS)
    streams = [[r[k] if k < len(r) else None for r in REFS] for k in range(3)]
    assert multi["score"] == pytest.approx(sacrebleu.corpus_bleu(PREDS, streams).score, abs=1e-9)
    assert multi["score"] > single["score"]
    assert multi["signature"].startswith("nrefs:var|") and "tok:13a" in multi["signature"]


def test_rouge_l_matches_a_hand_computation():
    from textdiff.evaluation.metrics import load
    from textdiff.evaluation.metrics.rouge import lcs

    assert lcs("a b c d e".split(), "a c e x".split()) == 3
    rouge = load("rouge")
    # "The cat sat on the mat." vs "the cat sat on a mat": LCS 5 of 6 and 6 words -> F1 = 5/6
    assert rouge.compute(predictions=["The cat sat on the mat."], references=[["the cat sat on a mat"]])["score"] == \
        pytest.approx(100 * 5 / 6)
    # best of two references: "a b c d" vs "a x c" (LCS 2, P 2/4, R 2/3 -> 4/7) and "a b" (P 2/4, R 1 -> 2/3)
    two = rouge.compute(predictions=["a b c d", "q"], references=[["a x c", "a b"], ["z"]])
    assert two["score"] == pytest.approx(100 * (2 / 3 + 0.0) / 2)


def test_paired_bootstrap_delta_is_the_bleu_difference_and_p_separates_better_from_equal():
    from textdiff.evaluation.metrics import load
    from textdiff.evaluation.significance import describe, paired_bootstrap

    refs = REFS * 20
    good, bad = PREDS * 20, ["the cat", "a man", "raining"] * 20
    bleu = load("bleu")
    r = paired_bootstrap(good, bad, refs, resamples=200)
    want = bleu.compute(predictions=good, references=refs)["score"] - bleu.compute(predictions=bad, references=refs)["score"]
    assert r["delta"] == pytest.approx(want, abs=1e-9) and r["delta"] > 0
    assert r["low"] > 0 and r["p"] == 0.0 and r["resamples"] == 200  # better on every source: never <= in a resample
    assert paired_bootstrap(bad, good, refs, resamples=200)["p"] == 1.0
    same = paired_bootstrap(good, list(good), refs, resamples=50)
    assert same["delta"] == same["low"] == same["high"] == 0.0 and same["p"] == 1.0  # a tie is not "above"
    # one source better, one worse: the resamples disagree, and a fixed seed repeats them
    mixed = [PREDS[0], "zebra", PREDS[2]] * 20
    r1, r2 = (paired_bootstrap(mixed, [PREDS[0], PREDS[1], "rain"] * 20, refs, resamples=300, seed=3) for _ in range(2))
    assert r1 == r2 and 0.0 < r1["p"] < 1.0 and r1["low"] < r1["high"]
    assert describe(r, "edit", "copy").startswith(f"edit - copy = +{r['delta']:.2f} BLEU, 95% interval [+")
    assert describe(r, "edit", "copy").endswith("p(edit <= copy) < 0.005")
    with pytest.raises(TextdiffError, match="one output per source"):
        paired_bootstrap(good[:-1], bad, refs)


def test_bootstrap_script_sets_cached_evaluations_against_each_other_and_copying(tmp_path, pair_corpus):
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from textdiff.config import recipe_from_dict
    from textdiff.data import load_texts
    from textdiff.evaluation.seq2seq import grouped_references

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(seq2seq_recipe(pair_corpus, tmp_path / "run", "masked")))
    groups = grouped_references(load_texts(recipe_from_dict(seq2seq_recipe(pair_corpus, tmp_path, "masked")).data)["test"])
    n_refs = sum(map(len, groups.values()))

    def evaluation(name, rows, n_references=n_refs):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"seq2seq": {"split": "test", "n_sources": len(groups), "n_references": n_references,
                                                "rows": [{"predictions": r} for r in rows]}}))
        return str(path)

    good = evaluation("good", [list(groups), [refs[0] for refs in groups.values()]])  # row 0 copies, row 1 is right
    bad = evaluation("bad", [["zebra"] * len(groups)])
    script = [sys.executable, str(Path(__file__).resolve().parents[1] / "benchmarks" / "bootstrap.py"), "--recipe", str(recipe), "--resamples", "100"]
    out = subprocess.run([*script, f"{good}:1", bad, "copy", f"{good}:0"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [ln.split(" = ")[0] for ln in lines] == ["good:1 - bad", "good:1 - copy", "good:1 - good:0"]
    assert all("BLEU, 95% interval [+" in ln and ln.endswith("< 0.01") for ln in lines), lines
    assert "good:0 - copy = +0.00 BLEU" in subprocess.run([*script, f"{good}:0", "copy"], capture_output=True,
                                                         text=True).stdout  # row 0 is the sources themselves
    other = evaluation("other", [list(groups)], n_references=n_refs + 1)  # scored against another split's references
    for argv, why in (([other, "copy"], "split does not match"), ([f"{good}:7", "copy"], "not a seq2seq evaluation"),
                      (["copy", good], "name an evaluation first")):
        err = subprocess.run([*script, *argv], capture_output=True, text=True)
        assert err.returncode == 2 and why in err.stderr and "Traceback" not in err.stderr, err.stderr


def test_mbr_picks_the_consensus_candidate():
    from textdiff.evaluation.mbr import mbr_select

    cands = ["the old king sees the river .", "zebra", "the old king sees a river .", "the king sees the river ."]
    assert mbr_select(cands) == 0
    assert mbr_select(cands, "rouge") == 0
    with pytest.raises(ValueError, match="bleu, rouge"):
        mbr_select(cands, "meteor")


# --- the command line --------------------------------------------------------------------------------------------

def test_train_generate_eval_bleu_through_the_cli(tmp_path, pair_corpus, capsys):
    import yaml

    recipe = tmp_path / "s2s.yaml"
    recipe.write_text(yaml.safe_dump(seq2seq_recipe(pair_corpus, tmp_path / "run", "masked", steps=6)))
    assert main(["train", str(recipe)]) == 0
    assert "source:" in capsys.readouterr().out
    assert main(["generate", str(tmp_path / "run"), "--source", "king sees river", "--source", "city keeps stone",
                 "--steps", "4", "--guidance-scale", "1.0"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line[:3] for line in lines] == ["[0]", "[1]"]
    out = tmp_path / "eval.json"
    assert main(["eval", str(tmp_path / "run"), "--metrics", "bleu,rouge", "--split", "test", "--steps", "4",
                 "--max-sequences", "5", "--guidance-scale", "0,1", "--copy-baseline", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "bleu:" in printed and "nrefs:" in printed and "rougeL|f1" in printed and "of the outputs equal" in printed
    result = json.loads(out.read_text())["seq2seq"]
    assert result["n_sources"] == 5 and result["n_references"] > 5  # references grouped by source
    assert [r["settings"]["guidance_scale"] for r in result["rows"]] == [0.0, 1.0]
    assert all(0 <= r["bleu"]["score"] <= 100 and len(r["predictions"]) == 5 for r in result["rows"])
    assert all(r["unchanged"] in {0.0, 20.0, 40.0, 60.0, 80.0, 100.0} for r in result["rows"])  # of 5 outputs
    assert "| bleu (test) |" in out.with_suffix(".md").read_text()


def test_bleu_on_an_unconditional_run_is_one_line_error(masked_run, capsys):
    assert main(["eval", str(masked_run), "--metrics", "bleu"]) == 2
    assert "not seq2seq" in capsys.readouterr().err
