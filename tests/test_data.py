"""Data: packing, padding (PAD out of the loss), splits, path resolution, the KJV preparer's split rule."""

from __future__ import annotations

import json

import pytest

from textdiff.config import DataConfig
from textdiff.corpora import book_split
from textdiff.data import batch_indices, load_texts, pack, pad, resolve_path
from textdiff.errors import TextdiffError


def test_pack_joins_with_eos_and_counts_every_token():
    seqs = pack([[10, 11], [12], [13, 14]], max_length=3, eos=3)
    assert seqs.ids.tolist() == [[10, 11, 3], [12, 3, 13]]  # the partial tail [14, 3] is dropped
    assert seqs.loss_mask.all()


def test_pad_appends_eos_and_keeps_pad_out_of_the_loss():
    seqs = pad([[10, 11], [12, 13, 14, 15, 16]], max_length=4, eos=3, pad_id=0, pad_in_loss=False, truncate=True)
    assert seqs.ids.tolist() == [[10, 11, 3, 0], [12, 13, 14, 3]]
    assert seqs.loss_mask.tolist() == [[True, True, True, False], [True, True, True, True]]
    with_pad = pad([[10]], max_length=3, eos=3, pad_id=0, pad_in_loss=True, truncate=True)
    assert with_pad.loss_mask.all()
    with pytest.raises(TextdiffError, match="example 0 has 6 tokens"):
        pad([[1, 2, 3, 4, 5]], max_length=4, eos=3, pad_id=0, pad_in_loss=False, truncate=False)


def test_splits_come_from_the_split_field(corpus):
    texts = load_texts(DataConfig(path=str(corpus), text_field="text", split_field="split"))
    assert [len(texts[s]) for s in ("train", "validation", "test")] == [1200, 80, 80]
    only = load_texts(DataConfig(path=str(corpus), text_field="text", split_field=None, max_examples=10))
    assert len(only["train"]) == 10 and not only["test"]


@pytest.mark.parametrize("suffix,writer", [
    (".txt", lambda rows: "\n".join(r["text"] for r in rows)),
    (".csv", lambda rows: "text\n" + "\n".join(f'"{r["text"]}"' for r in rows)),
])
def test_other_local_formats(tmp_path, suffix, writer):
    rows = [{"text": f"line number {i}"} for i in range(5)]
    path = tmp_path / f"data{suffix}"
    path.write_text(writer(rows))
    texts = load_texts(DataConfig(path=str(path), split_field=None))
    assert texts["train"] == [r["text"] for r in rows]


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"body": ["a b", "c d"], "split": ["train", "test"]}), path)
    texts = load_texts(DataConfig(path=str(path), text_field="body"))
    assert texts["train"] == ["a b"] and texts["test"] == ["c d"]


def test_relative_paths_resolve_under_textdiff_data_dir(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.jsonl").write_text(json.dumps({"text": "x", "split": "train"}) + "\n")
    monkeypatch.setenv("TEXTDIFF_DATA_DIR", str(tmp_path))
    assert resolve_path(DataConfig(path="sub/c.jsonl")) == tmp_path / "sub" / "c.jsonl"
    monkeypatch.chdir(tmp_path / "sub")
    with pytest.raises(TextdiffError, match="not found under"):
        resolve_path(DataConfig(path="missing.jsonl"))
    assert resolve_path(DataConfig(path="some-org/some-dataset")) == "some-org/some-dataset"  # a hub id


def test_batch_order_is_a_function_of_seed_and_step():
    a = [batch_indices(10, 3, s, seed=1).tolist() for s in range(6)]
    assert a == [batch_indices(10, 3, s, seed=1).tolist() for s in range(6)]
    epoch0 = sum(a[:3], [])
    assert len(set(epoch0)) == 9  # no repeats within an epoch
    assert a != [batch_indices(10, 3, s, seed=2).tolist() for s in range(6)]


def test_bible_split_rule_matches_the_data_card():
    assert book_split("Ruth") == "validation" and book_split("Hebrews") == "test"
    assert book_split("Genesis") == "train"
