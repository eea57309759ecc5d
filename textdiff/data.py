"""Text corpora -> fixed-length token sequences.

Sources: a local .txt / .jsonl / .json / .csv / .parquet file (relative paths resolve under
$TEXTDIFF_DATA_DIR) read with `datasets`, or a hub dataset id for users who are online.

EOS / PAD, explicitly:
- `pack` mode: every example is followed by [EOS]; the stream is cut into max_length chunks (the last
  partial chunk is dropped). No [PAD] exists, every position counts in the loss.
- `pad` mode: one example per sequence, [EOS] after it, [PAD] up to max_length. [PAD] positions are
  neither noised nor counted in the loss unless `data.pad_in_loss` is set (then the model learns where text
  ends, which variable-length generation needs). [EOS] always counts.
- seq2seq (`data.source_field`, pad mode): the examples are (source, target) pairs and each sequence is
  `source [SEP] target [EOS] [PAD]...` (DiffuSeq's layout); the source and [SEP] never count in the loss, so no
  back-end noises them. Segment 0 is the source up to and including the first [SEP], segment 1 the rest.
"""

from __future__ import annotations

import codecs
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from textdiff.config import DataConfig
from textdiff.errors import TextdiffError
from textdiff.noising.base import Batch

FORMATS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SPLITS = ("train", "validation", "test")


def resolve_path(cfg: DataConfig) -> Path | str:
    """A local file path, or the hub id unchanged."""
    path = Path(cfg.path).expanduser()
    if path.is_absolute():
        return path
    data_dir = os.environ.get("TEXTDIFF_DATA_DIR")
    if data_dir and (Path(data_dir) / path).is_file():
        return Path(data_dir) / path
    if path.is_file():
        return path
    if cfg.prepare:
        from textdiff.corpora import prepared_path

        return prepared_path(cfg.prepare)
    if path.suffix.lower() in FORMATS:
        where = f"$TEXTDIFF_DATA_DIR ({data_dir})" if data_dir else "the current directory ($TEXTDIFF_DATA_DIR is not set)"
        raise TextdiffError(f"data.path: file {cfg.path} not found under {where}")
    if path.is_dir() or (data_dir and (Path(data_dir) / path).is_dir()):  # datasets would read it as a folder
        raise TextdiffError(f"data.path: {cfg.path} is a directory; name one data file in it "
                            f"({', '.join(FORMATS)})")
    return cfg.path  # a hub id


def check_text_file(path: Path) -> None:
    if path.is_dir():
        raise TextdiffError(f"data.path: {path} is a directory; name one data file")
    if not path.is_file():
        raise TextdiffError(f"data.path: file {path} not found")
    if path.stat().st_size == 0:
        raise TextdiffError(f"data.path: file {path} is empty")
    if FORMATS.get(path.suffix.lower()) == "parquet":
        return
    decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0  # a character cut at a chunk edge is fine
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 22)
            if b"\x00" in chunk:
                raise TextdiffError(f"data.path: file {path} looks binary (NUL bytes); expected UTF-8 text")
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                raise TextdiffError(f"data.path: file {path} is not UTF-8 text (near byte {offset + e.start})") from None
            if not chunk:
                break
            offset += len(chunk)


def _load_local(path: Path, cfg: DataConfig) -> dict[str, list[str]]:
    import datasets

    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise TextdiffError(f"data.path: {path} has an unknown extension; allowed: {', '.join(FORMATS)}")
    check_text_file(path)
    # a local file loads fast: no progress bars, and no log lines of its own beside our one-line error
    bars, verbosity = datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        ds = datasets.load_dataset(fmt, data_files=str(path), split="train")
    except Exception as e:  # datasets raises many types for malformed files; the innermost one says why
        while e.__cause__ is not None:
            e = e.__cause__
        why = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise TextdiffError(f"data.path: could not read {path} as {fmt}: {why}") from None
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()
    if cfg.source_field:
        return _pairs_by_split(ds, cfg, path)
    if fmt == "text":
        return {"train": _column(ds, "text", path)} if not cfg.split_field else _by_split(ds, cfg, path)
    return _by_split(ds, cfg, path) if cfg.split_field else {"train": _column(ds, cfg.text_field, path)}


def _require(ds, field: str, key: str, where) -> None:
    if field not in ds.column_names:
        raise TextdiffError(f"{key}: column '{field}' is not in {where}; columns: {', '.join(ds.column_names)}")


def _column(ds, field: str, where) -> list[str]:
    _require(ds, field, "data.text_field", where)
    values = ds[field]
    _report_non_text(values, field, where)
    return [t for t in values if isinstance(t, str) and t.strip()]


def _report_non_text(values: list, field: str, where) -> None:
    """Rows whose text is a number, a list or an object are skipped, and said so (empty or missing text is not)."""
    odd = sum(v is not None and not isinstance(v, str) for v in values)
    if odd:
        print(f"textdiff: data: skipped {odd:,} of {len(values):,} rows of {where} whose '{field}' is not text "
              "(a number, list or object)")


def _by_split(ds, cfg: DataConfig, where) -> dict[str, list[str]]:
    _require(ds, cfg.text_field, "data.text_field", where)
    _require(ds, cfg.split_field, "data.split_field", where)
    _report_non_text(ds[cfg.text_field], cfg.text_field, where)
    rows = [(s, t) for s, t in zip(ds[cfg.split_field], ds[cfg.text_field]) if isinstance(t, str) and t.strip()]
    return {name: [t for s, t in rows if s == name] for name in SPLITS}


def _pairs_by_split(ds, cfg: DataConfig, where) -> dict[str, list[tuple[str, str]]]:
    """Seq2seq rows as (source, target) pairs per split; rows missing either side are dropped."""
    _require(ds, cfg.text_field, "data.text_field", where)
    _require(ds, cfg.source_field, "data.source_field", where)
    ok = lambda v: isinstance(v, str) and v.strip()  # noqa: E731
    splits = ds[cfg.split_field] if cfg.split_field else ["train"] * len(ds)
    if cfg.split_field:
        _require(ds, cfg.split_field, "data.split_field", where)
    rows = [(sp, (src, tgt)) for sp, src, tgt in zip(splits, ds[cfg.source_field], ds[cfg.text_field])
            if ok(src) and ok(tgt)]
    return {name: [p for sp, p in rows if sp == name] for name in SPLITS}


def flat_texts(texts: list) -> list[str]:
    """The strings of a split for tokenizer training: seq2seq pairs contribute both sides."""
    return [t for item in texts for t in (item if isinstance(item, tuple) else (item,))]


def _load_hub(name: str, cfg: DataConfig) -> dict[str, list[str]]:
    import datasets

    try:
        dd = datasets.load_dataset(name, cfg.hub_config)
    except Exception as e:
        raise TextdiffError(f"data.path: '{name}' is neither a local file nor a loadable hub dataset "
                            f"({str(e).splitlines()[0][:160]})") from None
    if cfg.source_field:
        return {split: _pairs_by_split(dd[split], dataclasses.replace(cfg, split_field=None), f"{name}[{split}]")["train"]
                for split in SPLITS if split in dd}
    return {split: _column(dd[split], cfg.text_field, f"{name}[{split}]") for split in SPLITS if split in dd}


def load_texts(cfg: DataConfig) -> dict[str, list[str]]:
    """{'train': [...], 'validation': [...], 'test': [...]} of raw strings (missing splits are empty)."""
    source = resolve_path(cfg)
    splits = _load_local(source, cfg) if isinstance(source, Path) else _load_hub(source, cfg)
    if not splits.get("train"):
        raise TextdiffError(f"data.path: {cfg.path} has no training text (field '{cfg.text_field}', split 'train')")
    if cfg.max_examples:
        splits["train"] = splits["train"][:cfg.max_examples]
    return {s: splits.get(s, []) for s in SPLITS}


@dataclass
class Sequences:
    """Fixed-length sequences of one split: ids (N, L) long, loss_mask (N, L) bool."""

    ids: torch.Tensor
    loss_mask: torch.Tensor

    def __len__(self) -> int:
        return self.ids.shape[0]

    def batch(self, index: torch.Tensor) -> Batch:
        return Batch(self.ids[index], self.loss_mask[index])


def pack(token_lists: list[list[int]], max_length: int, eos: int) -> Sequences:
    stream = [tok for ids in token_lists for tok in (*ids, eos)]
    n = len(stream) // max_length
    ids = torch.tensor(stream[:n * max_length], dtype=torch.long).view(n, max_length)
    return Sequences(ids, torch.ones_like(ids, dtype=torch.bool))


def pad(token_lists: list[list[int]], max_length: int, eos: int, pad_id: int, pad_in_loss: bool, truncate: bool) -> Sequences:
    ids = torch.full((len(token_lists), max_length), pad_id, dtype=torch.long)
    for i, toks in enumerate(token_lists):
        if len(toks) + 1 > max_length and not truncate:
            raise TextdiffError(f"data: example {i} has {len(toks) + 1} tokens with [EOS], more than data.max_length="
                                f"{max_length}; raise data.max_length or set data.truncate: true")
        row = (toks[:max_length - 1] + [eos])
        ids[i, :len(row)] = torch.tensor(row)
    keep = torch.ones_like(ids, dtype=torch.bool) if pad_in_loss else ids != pad_id
    return Sequences(ids, keep)


def pad_pairs(sources: list[list[int]], targets: list[list[int]], max_length: int, sp, pad_in_loss: bool,
              truncate: bool) -> Sequences:
    """Seq2seq sequences `source [SEP] target [EOS] [PAD]...`; only the target part counts in the loss."""
    ids = torch.full((len(sources), max_length), sp.pad, dtype=torch.long)
    keep = torch.zeros_like(ids, dtype=torch.bool)
    for i, (src, tgt) in enumerate(zip(sources, targets)):
        n = len(src) + len(tgt) + 2
        if n > max_length and not truncate:
            raise TextdiffError(f"data: example {i} has {n} tokens with [SEP] and [EOS], more than data.max_length="
                                f"{max_length}; raise data.max_length or set data.truncate: true")
        if n > max_length:  # the source keeps at least half the room, the target is cut
            src = src[:max(max_length - 2 - len(tgt), (max_length - 2) // 2)]
        row = (src + [sp.sep] + tgt)[:max_length - 1] + [sp.eos]
        ids[i, :len(row)] = torch.tensor(row)
        keep[i, len(src) + 1:] = pad_in_loss
        keep[i, len(src) + 1:len(row)] = True
    return Sequences(ids, keep)


def segment_ids(ids: torch.Tensor, sep: int) -> torch.Tensor:
    """(B, L) 0 on the source (up to and including the first [SEP]), 1 after it."""
    is_sep = ids == sep
    return ((is_sep.long().cumsum(dim=1) - is_sep.long()) > 0).long()


def source_mask(ids: torch.Tensor, sep: int) -> torch.Tensor:
    """(B, L) True on the source tokens (before the first [SEP]) of seq2seq sequences."""
    return ids.eq(sep).long().cumsum(dim=1) == 0


def drop_condition(batch: Batch, p: float, sep: int, pad: int, generator: torch.Generator) -> Batch:
    """Classifier-free guidance training: each sequence's source becomes [PAD] (the null condition) w.p. p."""
    if p <= 0:
        return batch
    drop = torch.rand(batch.ids.shape[0], generator=generator, device=generator.device) < p  # (B,)
    null = source_mask(batch.ids, sep) & drop.to(batch.ids.device)[:, None]
    return Batch(batch.ids.masked_fill(null, pad), batch.loss_mask)


def build_sequences(cfg: DataConfig, tokenizer, texts: list) -> Sequences:
    from textdiff.tokenization import encode, special_tokens

    sp = special_tokens(tokenizer)
    if cfg.source_field:
        sources = encode(tokenizer, [s for s, _ in texts])
        targets = encode(tokenizer, [t for _, t in texts])
        return pad_pairs(sources, targets, cfg.max_length, sp, cfg.pad_in_loss, cfg.truncate)
    lists = encode(tokenizer, texts)
    if cfg.mode == "pack":
        return pack(lists, cfg.max_length, sp.eos)
    return pad(lists, cfg.max_length, sp.eos, sp.pad, cfg.pad_in_loss, cfg.truncate)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of epoch `epoch`: a pure function of (seed, epoch), so resuming needs only the step."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Indices of the examples for optimizer step `step` (0-based); epochs wrap, incomplete tails are dropped."""
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise TextdiffError(f"data: only {n} training sequences, fewer than train.batch_size={batch_size}")
    epoch, k = divmod(step, per_epoch)
    return epoch_order(n, seed, epoch)[k * batch_size:(k + 1) * batch_size]
