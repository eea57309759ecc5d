"""Corpora larger than memory (`data.streaming: true`): a local file read through `datasets`' streaming mode,
tokenized and packed on the fly into max_length sequences, handed out in file order.

Exact resume: step k takes sequences [k * batch_size, (k + 1) * batch_size) of the packed stream (epochs wrap,
each epoch's partial last sequence is dropped, as in `pack`), so the position to restore is state.json's
`data_position` = step * batch_size. Resuming re-reads and re-tokenizes the stream up to that position (simple
and exact; it costs one pass over the text already trained on). Every process reads the stream and takes the
whole global batch; the trainer gives each its micro-batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from textdiff.config import SPLIT_NAMES, DataConfig, Recipe
from textdiff.data import (FORMATS, build_sequences, builder_options, check_text_file, file_format, held_out_split,
                           resolve_path, split_of, unreadable)
from textdiff.errors import TextdiffError
from textdiff.noising.base import Batch


def stream_texts(cfg: DataConfig, split: str) -> Iterator[str]:
    """The non-empty texts of one split of a local file, in file order, without loading the file. Data naming no
    held-out split (a .txt file, no split_field, data.splits with a train file only) gives each data.holdout of its
    examples by the rule load_texts uses; a labelled file that lacks a split gives none."""
    files = {SPLIT_NAMES[k]: f for k, f in (cfg.splits or {"train": cfg.path}).items()}
    labelled = not cfg.splits and bool(cfg.split_field) and FORMATS.get(Path(cfg.path).suffix.lower()) != "text"
    held = cfg.holdout > 0 and not labelled and "validation" not in files and "test" not in files
    if split in files and not held:
        yield from _rows(cfg, files[split], split)
    elif held:
        for i, text in enumerate(_rows(cfg, files["train"], None)):
            if held_out_split(i, cfg.holdout, cfg.holdout_seed) == split:
                yield text


def _rows(cfg: DataConfig, name: str, split: str | None) -> Iterator[str]:
    """The non-empty texts of one local file: those labelled `split` when it has a split_field and split is given,
    else every row (None: the file holds no labels, or they are not asked for)."""
    import datasets

    path = resolve_path(cfg, name if cfg.splits else None)
    if not isinstance(path, Path):
        raise TextdiffError(f"data.streaming reads local files; {cfg.path} is not one (set data.streaming: false)")
    check_text_file(path)
    fmt = file_format(path, cfg)
    field = "text" if fmt == "text" else cfg.text_field
    split_field = None if fmt == "text" or cfg.splits else cfg.split_field
    if split_field is None and split not in (None, "train"):
        return
    stream = datasets.load_dataset(fmt, data_files=str(path), split="train", streaming=True, **builder_options(fmt, cfg))
    for i, row in enumerate(_stream_rows(stream, path, fmt)):
        if i == 0 and (field not in row or (split_field and split_field not in row)):
            missing = field if field not in row else split_field
            raise TextdiffError(f"data: column '{missing}' is not in {path}; columns: {', '.join(row)}")
        text = row[field]
        if isinstance(text, str) and text.strip() and (not split_field or split is None or
                                                       split_of(row[split_field], f"rows of {path}") == split):
            yield text


def _stream_rows(stream, path: Path, fmt: str) -> Iterator[dict]:
    """The rows of a datasets stream; a malformed file is a one-line error, as in non-streaming mode (data.py)."""
    import datasets

    rows, verbosity = iter(stream), datasets.logging.get_verbosity()
    while True:
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its own log line beside our one-line error
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as e:  # datasets / pyarrow raise many types for malformed files
            raise unreadable(path, fmt, e) from None
        finally:
            datasets.logging.set_verbosity(verbosity)
        yield row


class StreamedSequences:
    """The training split as an endless stream of packed (batch_size, max_length) batches, in file order."""

    def __init__(self, cfg: DataConfig, tokenizer, batch_size: int):
        from textdiff.tokenization import special_tokens

        self.cfg, self.tokenizer, self.batch_size = cfg, tokenizer, batch_size
        self.eos = special_tokens(tokenizer).eos
        self.position = 0  # sequences handed out so far
        self._rows: Iterator[list[int]] | None = None

    def _epoch(self) -> Iterator[list[int]]:
        from textdiff.tokenization import encode

        buffer: list[int] = []
        texts, count = [], 0
        for text in stream_texts(self.cfg, "train"):
            if self.cfg.max_examples and count >= self.cfg.max_examples:
                break
            texts.append(text)
            count += 1
            if len(texts) == 256:
                yield from self._pack(buffer, encode(self.tokenizer, texts))
                texts = []
        yield from self._pack(buffer, encode(self.tokenizer, texts) if texts else [])

    def _pack(self, buffer: list[int], token_lists: list[list[int]]) -> Iterator[list[int]]:
        L = self.cfg.max_length
        for ids in token_lists:
            buffer.extend(ids)
            buffer.append(self.eos)
            while len(buffer) >= L:
                yield buffer[:L]
                del buffer[:L]

    def _forever(self) -> Iterator[list[int]]:
        while True:
            n = 0
            for row in self._epoch():
                n += 1
                yield row
            if n < self.batch_size:
                raise TextdiffError(f"data: the stream holds {n} training sequences of {self.cfg.max_length} tokens, "
                                    f"fewer than train.batch_size={self.batch_size}")

    def seek(self, step: int) -> None:
        """Position the stream at step `step` (re-reads the stream from the start)."""
        self._rows, self.position = self._forever(), 0
        for _ in range(step * self.batch_size):
            next(self._rows)
        self.position = step * self.batch_size

    def batch_at(self, step: int) -> Batch:
        """The batch of optimizer step `step`: the next batch_size sequences (seeks first if out of order)."""
        if self._rows is None or self.position != step * self.batch_size:
            self.seek(step)
        ids = torch.tensor([next(self._rows) for _ in range(self.batch_size)], dtype=torch.long)  # (B, L)
        self.position += self.batch_size
        return Batch(ids, torch.ones_like(ids, dtype=torch.bool))


def _validation(recipe: Recipe, tokenizer):
    """The first eval_batches * batch_size packed validation sequences (None when the file has no validation split)."""
    wanted = recipe.train.eval_batches * recipe.train.batch_size * (recipe.data.max_length + 1)
    texts, chars = [], 0
    for text in stream_texts(recipe.data, "validation"):
        texts.append(text)
        chars += len(text)
        if chars >= 8 * wanted:  # ample: a token is rarely shorter than a character
            break
    return build_sequences(recipe.data, tokenizer, texts) if texts else None


def prepare_streaming(recipe: Recipe, run_dir: Path, resume: bool, world):
    """Tokenizer (trained on the first data.tokenizer_examples texts, data.max_examples at most), the training stream,
    validation sequences."""
    from itertools import islice

    from textdiff.rundir import tokenizer_for, write_run_files

    n = min(recipe.data.tokenizer_examples, recipe.data.max_examples or recipe.data.tokenizer_examples)
    head = [] if resume or not world.is_main or recipe.tokenizer.path else \
        list(islice(stream_texts(recipe.data, "train"), n))
    tokenizer = tokenizer_for(recipe, run_dir, head, resume or not world.is_main)
    train = StreamedSequences(recipe.data, tokenizer, recipe.train.batch_size)
    val = _validation(recipe, tokenizer)
    if world.is_main:
        write_run_files(recipe, run_dir, tokenizer, resume)
    return tokenizer, train, val
