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
    only = load_texts(DataConfig(path=str(corpus), text_field="text", split_field=None, max_examples=10, holdout=0))
    assert len(only["train"]) == 10 and not only["test"]


@pytest.mark.parametrize("suffix,writer", [
    (".txt", lambda rows: "\n".join(r["text"] for r in rows)),
    (".csv", lambda rows: "text\n" + "\n".join(f'"{r["text"]}"' for r in rows)),
])
def test_other_local_formats(tmp_path, suffix, writer):
    rows = [{"text": f"line number {i}"} for i in range(5)]
    path = tmp_path / f"data{suffix}"
    path.write_text(writer(rows))
    texts = load_texts(DataConfig(path=str(path), split_field=None, holdout=0))
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


# --- a newcomer's own corpus (issue 32, item 5) --------------------------------------------------------------------


def _lines(path, n, start=0):
    path.write_text("".join(f"line {i} of my own text\n" for i in range(start, start + n)))
    return path


def test_a_txt_file_gets_a_seeded_validation_and_test_split_by_default(tmp_path):
    path = _lines(tmp_path / "my.txt", 400)
    texts = load_texts(DataConfig(path=str(path)))  # the default split_field is ignored: a .txt file has no columns
    assert all(abs(len(texts[s]) - 20) <= 2 for s in ("validation", "test"))  # data.holdout = 5% each
    every = sorted(sum(texts.values(), []), key=lambda t: int(t.split()[1]))
    assert every == path.read_text().splitlines()  # nothing lost, nothing repeated
    assert texts == load_texts(DataConfig(path=str(path)))  # seeded
    assert texts["test"] != load_texts(DataConfig(path=str(path), holdout_seed=1))["test"]
    assert load_texts(DataConfig(path=str(path), max_examples=50))["test"] == texts["test"]  # only train is cut
    assert load_texts(DataConfig(path=str(path), holdout=0))["train"] == path.read_text().splitlines()


def test_held_out_splits_are_the_same_streamed_or_loaded(tmp_path):
    from textdiff.streaming import stream_texts

    cfg = DataConfig(path=str(_lines(tmp_path / "my.txt", 200)), streaming=True)
    texts = load_texts(cfg)
    assert all(list(stream_texts(cfg, s)) == texts[s] for s in ("train", "validation", "test"))


def test_split_names_are_mapped_and_unknown_labels_refused(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = [("a", "train"), ("b", "dev"), ("c", "val"), ("d", "testing"), ("e", "training")]
    path.write_text("".join(json.dumps({"text": t, "split": s}) + "\n" for t, s in rows))
    texts = load_texts(DataConfig(path=str(path)))
    assert texts == {"train": ["a", "e"], "validation": ["b", "c"], "test": ["d"]}
    path.write_text(path.read_text() + json.dumps({"text": "f", "split": "holdout"}) + "\n")
    with pytest.raises(TextdiffError, match=r"labelled 'holdout' \(1 rows\) are in no split"):
        load_texts(DataConfig(path=str(path)))


def test_a_missing_split_column_says_what_to_do(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": "a"}) + "\n")
    with pytest.raises(TextdiffError, match="set data.split_field: null to hold out"):
        load_texts(DataConfig(path=str(path)))


def test_one_file_per_split(tmp_path):
    files = {"train": _lines(tmp_path / "a.txt", 30), "dev": _lines(tmp_path / "b.txt", 4, 100),
             "test": _lines(tmp_path / "c.txt", 3, 200)}
    texts = load_texts(DataConfig(splits={k: str(v) for k, v in files.items()}))
    assert [len(texts[s]) for s in ("train", "validation", "test")] == [30, 4, 3]
    assert texts["validation"][0] == "line 100 of my own text"
    only_train = load_texts(DataConfig(splits={"train": str(files["train"])}))
    assert only_train["validation"] and only_train["test"]  # held out, as from data.path
    with pytest.raises(TextdiffError, match="data.splits: file missing.txt not found"):
        load_texts(DataConfig(splits={"train": "missing.txt"}))


@pytest.mark.parametrize("kw,needle", [
    ({"path": "a.txt", "splits": {"train": "a.txt"}}, "both given"),
    ({"splits": {"train": "a.txt", "heldout": "b.txt"}}, "'heldout' is not a split name"),
    ({"splits": {"train": "a.txt", "dev": "b.txt", "val": "c.txt"}}, "dev, val all name the validation split"),
    ({"splits": {"dev": "b.txt"}}, "no train file"),
    ({"path": "a.txt", "example": "sentence"}, "data.example"),
    ({"path": "a.txt", "holdout": 0.5}, "data.holdout=0.5"),
])
def test_bad_split_settings_are_refused(kw, needle):
    with pytest.raises(ValueError, match=needle):
        DataConfig(**kw)


def test_what_one_example_of_a_txt_file_is(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("first line\nof one paragraph\n\nsecond paragraph\n\n\nthird\n")
    by = {unit: load_texts(DataConfig(path=str(path), example=unit, holdout=0))["train"]
          for unit in ("line", "paragraph", "document")}
    assert len(by["line"]) == 4 and len(by["document"]) == 1
    assert [t.split() for t in by["paragraph"]] == [["first", "line", "of", "one", "paragraph"], ["second", "paragraph"],
                                                     ["third"]]
    (tmp_path / "r.jsonl").write_text(json.dumps({"text": "a", "split": "train"}) + "\n")
    with pytest.raises(TextdiffError, match="data.example=paragraph is for .txt files"):
        load_texts(DataConfig(path=str(tmp_path / "r.jsonl"), example="paragraph"))


def test_a_changed_data_path_is_not_replaced_by_the_prepared_corpus(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TEXTDIFF_DATA_DIR", raising=False)
    with pytest.raises(TextdiffError, match="file my.txt not found"):  # not silently the KJV of data.prepare
        resolve_path(DataConfig(path="my.txt", prepare="bible"))


def test_hub_split_names_are_mapped_and_others_named_in_a_warning(monkeypatch, capsys):
    import datasets

    dd = datasets.DatasetDict({name: datasets.Dataset.from_dict({"text": [f"{name} text"]})
                               for name in ("train", "dev", "unsupervised")})
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: dd)
    texts = load_texts(DataConfig(path="some-org/some-dataset"))
    assert texts == {"train": ["train text"], "validation": ["dev text"], "test": []}
    assert "hub split 'unsupervised' of some-org/some-dataset is not read" in capsys.readouterr().err


def test_runs_from_before_data_holdout_keep_their_splits():
    from textdiff.config import recipe_from_dict

    def data(section, legacy=True):
        return recipe_from_dict({"data": section}, legacy=legacy).data

    assert data({"path": "my.txt"}).holdout == 0  # trained on every line: no test split drawn from its training text
    assert data({"path": "c.jsonl", "split_field": None}).holdout == 0
    assert data({"path": "bible/kjv_asv.jsonl", "split_field": "split"}).holdout == 0.05  # labelled: the same recipe
    assert data({"path": "my.txt", "holdout": 0.1}).holdout == 0.1
    assert data({"path": "my.txt"}, legacy=False).holdout == 0.05
