"""data.streaming: a local file packed on the fly, in file order, resumed exactly at state.json's data_position."""

from __future__ import annotations

import json
import shutil

import torch

from tests.test_training import final_state
from textdiff.config import DataConfig, TokenizerConfig, load_recipe
from textdiff.data import load_texts, pack
from textdiff.streaming import StreamedSequences
from textdiff.tokenization import encode, special_tokens, train_tokenizer
from textdiff.training import train_recipe


def test_the_stream_is_the_packed_corpus_in_file_order_and_seeks_exactly(corpus):
    cfg = DataConfig(path=str(corpus), max_length=24, streaming=True)
    texts = load_texts(cfg)["train"]
    tok = train_tokenizer(TokenizerConfig(kind="wordlevel", vocab_size=64, min_frequency=1), texts)
    packed = pack(encode(tok, texts), 24, special_tokens(tok).eos).ids  # (N, 24)
    stream = StreamedSequences(cfg, tok, batch_size=8)
    epochs = torch.cat([packed, packed])  # epochs follow one another: a batch may straddle two
    k = len(packed) // 8
    assert torch.equal(stream.batch_at(0).ids, epochs[:8])
    assert torch.equal(stream.batch_at(1).ids, epochs[8:16])
    assert torch.equal(stream.batch_at(k).ids, epochs[8 * k:8 * k + 8])  # a seek past the end of the first epoch
    assert torch.equal(StreamedSequences(cfg, tok, 8).batch_at(5).ids, epochs[40:48])


def test_streamed_training_resumes_exactly(write_recipe, tmp_path):
    recipe = write_recipe(data={"streaming": True}, train={"steps": 6, "checkpoint_every": 3, "eval_every": 3})
    run = train_recipe(load_recipe(recipe), progress=False)
    state = json.loads((run / "checkpoints" / "step_00000006" / "state.json").read_text())
    assert state["data_position"] == 6 * 8
    again = tmp_path / "again"
    shutil.copytree(run, again)
    shutil.rmtree(again / "checkpoints" / "step_00000006")
    train_recipe(load_recipe(recipe, [f"out_dir={again}"]), resume=True, progress=False)
    a, b = final_state(run), final_state(again)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_streamed_tokenizer_trains_on_data_max_examples_texts_at_most(write_recipe, monkeypatch):
    import textdiff.rundir as rundir

    seen, real = [], rundir.tokenizer_for
    monkeypatch.setattr(rundir, "tokenizer_for", lambda recipe, run_dir, texts, *a: seen.append(len(texts)) or
                        real(recipe, run_dir, texts, *a))
    recipe = write_recipe(data={"streaming": True, "max_examples": 40}, train={"steps": 2, "eval_every": 0})
    train_recipe(load_recipe(recipe), progress=False)
    assert seen == [40]  # data.tokenizer_examples is 100,000
