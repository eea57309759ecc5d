"""Text corpora -> fixed-length token sequences.

Sources: a local .txt / .jsonl / .json / .csv / .parquet file (relative paths resolve under
$TEXTDIFF_DATA_DIR) read with `datasets`, or a hub dataset id for users who are online; or one file per split
(`data.splits`). Split labels go through config.SPLIT_NAMES (dev, val, ... mean validation; others are refused).
Data naming no validation and no test split gets `data.holdout` of its examples held out for each (hold_out);
what one example of a .txt file is, is `data.example` (docs/data.md).

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
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from textdiff.config import SPLIT_NAMES, DataConfig
from textdiff.errors import TextdiffError, warn
from textdiff.noising.base import Batch

FORMATS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SPLITS = ("train", "validation", "test")


def resolve_path(cfg: DataConfig, name: str | None = None) -> Path | str:
    """A local file path, or the hub id unchanged. `name`: one file of data.splits instead of data.path."""
    key, name = ("data.path", cfg.path) if name is None else ("data.splits", name)
    path = Path(name).expanduser()
    if path.is_absolute():
        return path
    data_dir = os.environ.get("TEXTDIFF_DATA_DIR")
    if data_dir and (Path(data_dir) / path).is_file():
        return Path(data_dir) / path
    if path.is_file():
        return path
    if cfg.prepare and key == "data.path":
        from textdiff.corpora import PREPARERS, prepared_path

        if path == Path(PREPARERS[cfg.prepare][0]):  # another file (a recipe whose data.path changed) is not built
            return prepared_path(cfg.prepare)
    if path.suffix.lower() in FORMATS or key == "data.splits":
        where = f"$TEXTDIFF_DATA_DIR ({data_dir})" if data_dir else "the current directory ($TEXTDIFF_DATA_DIR is not set)"
        raise TextdiffError(f"{key}: file {name} not found under {where}")
    if path.is_dir() or (data_dir and (Path(data_dir) / path).is_dir()):  # datasets would read it as a folder
        raise TextdiffError(f"{key}: {name} is a directory; name one data file in it ({', '.join(FORMATS)})")
    return name  # a hub id


def source_name(cfg: DataConfig) -> str:
    """The corpus as messages name it: data.path, or data.splits' train file."""
    return cfg.path or next(f for k, f in cfg.splits.items() if SPLIT_NAMES[k] == "train")


def held_out_split(i: int, fraction: float, seed: int) -> str:
    """The split of example i under data.holdout: u_i = frac((i + 1) / phi + seed * 0.7549) (a Weyl sequence: every
    stretch of the file gives each held-out split close to `fraction` of its examples); validation if u_i < fraction,
    test if u_i < 2 * fraction, else train. A function of i alone, so streamed and loaded corpora agree."""
    u = ((i + 1) * 0.6180339887498949 + seed * 0.7548776662466927) % 1.0
    return "validation" if u < fraction else "test" if u < 2 * fraction else "train"


def hold_out(texts: list, fraction: float, seed: int) -> dict[str, list]:
    """{'train', 'validation', 'test'} from one list of examples, by held_out_split."""
    out: dict[str, list] = {s: [] for s in SPLITS}
    for i, text in enumerate(texts):
        out[held_out_split(i, fraction, seed)].append(text)
    return out


def unreadable(path, fmt: str, e: BaseException) -> TextdiffError:
    """The one-line error for a data file datasets / pyarrow could not read: the innermost cause says why."""
    while e.__cause__ is not None:
        e = e.__cause__
    why = (str(e).splitlines() or [type(e).__name__])[0][:200]
    return TextdiffError(f"data.path: could not read {path} as {fmt}: {why}")


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


def file_format(path: Path, cfg: DataConfig) -> str:
    """The `datasets` builder for a local file; data.example other than `line` only for .txt files."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise TextdiffError(f"data.path: {path} has an unknown extension; allowed: {', '.join(FORMATS)}")
    if fmt != "text" and cfg.example != "line":
        raise TextdiffError(f"data.example={cfg.example} is for .txt files; in {path.name} one row is one example "
                            f"(remove data.example)")
    return fmt


def builder_options(fmt: str, cfg: DataConfig) -> dict:
    """A .txt file's example unit for `datasets`' text builder (line, paragraph or document)."""
    return {"sample_by": cfg.example} if fmt == "text" else {}


def _load_local(path: Path, cfg: DataConfig, split_field: str | None) -> dict[str, list[str]]:
    """A local file's splits: by `split_field` (ignored for .txt files, which have no columns), else all train."""
    import datasets

    fmt = file_format(path, cfg)
    check_text_file(path)
    # a local file loads fast: no progress bars, and no log lines of its own beside our one-line error
    bars, verbosity = datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        ds = datasets.load_dataset(fmt, data_files=str(path), split="train", **builder_options(fmt, cfg))
    except Exception as e:  # datasets raises many types for malformed files
        raise unreadable(path, fmt, e) from None
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()
    split_field = None if fmt == "text" else split_field
    if cfg.source_field:
        return _pairs_by_split(ds, cfg, split_field, path)
    field = "text" if fmt == "text" else cfg.text_field
    return _by_split(ds, field, split_field, path) if split_field else {"train": _column(ds, field, path)}


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


def _split_labels(ds, split_field: str, where) -> list[str]:
    """Each row's split (train / validation / test) from its label; a label naming no split is an error."""
    if split_field not in ds.column_names:
        raise TextdiffError(f"data.split_field: column '{split_field}' is not in {where} (columns: "
                            f"{', '.join(ds.column_names)}); name the column that holds each row's split, or set "
                            f"data.split_field: null to hold out validation and test rows (data.holdout)")
    labels = ds[split_field]
    return [split_of(label, f"rows of {where}", labels) for label in labels]


def split_of(label, where: str, labels=()) -> str:
    """The split a label means (SPLIT_NAMES); an unknown label is refused, never dropped."""
    if label not in SPLIT_NAMES:
        count = f" ({sum(1 for x in labels if x == label):,} rows)" if labels else ""
        raise TextdiffError(f"data.split_field: {where} labelled {label!r}{count} are in no split; label them "
                            f"train, validation or test (or one of {', '.join(k for k in SPLIT_NAMES if k not in SPLITS)})")
    return SPLIT_NAMES[label]


def _by_split(ds, field: str, split_field: str, where) -> dict[str, list[str]]:
    _require(ds, field, "data.text_field", where)
    _report_non_text(ds[field], field, where)
    rows = [(s, t) for s, t in zip(_split_labels(ds, split_field, where), ds[field]) if isinstance(t, str) and t.strip()]
    return {name: [t for s, t in rows if s == name] for name in SPLITS}


def _pairs_by_split(ds, cfg: DataConfig, split_field: str | None, where) -> dict[str, list[tuple[str, str]]]:
    """Seq2seq rows as (source, target) pairs per split; rows missing either side are dropped."""
    _require(ds, cfg.text_field, "data.text_field", where)
    _require(ds, cfg.source_field, "data.source_field", where)
    ok = lambda v: isinstance(v, str) and v.strip()  # noqa: E731
    splits = _split_labels(ds, split_field, where) if split_field else ["train"] * len(ds)
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
    out: dict[str, list] = {}
    for hub_split in dd:
        if hub_split not in SPLIT_NAMES:
            warn(f"data.path: the hub split '{hub_split}' of {name} is not read (not a train, validation or test name)")
            continue
        where, split = f"{name}[{hub_split}]", SPLIT_NAMES[hub_split]
        if split in out:
            raise TextdiffError(f"data.path: {name} has two {split} splits ({hub_split} and another); cannot choose")
        out[split] = _pairs_by_split(dd[hub_split], cfg, None, where)["train"] if cfg.source_field else \
            _column(dd[hub_split], cfg.text_field, where)
    return out


def _load_files(cfg: DataConfig) -> dict[str, list]:
    """data.splits: every row of each file belongs to its split."""
    out = {}
    for key, name in cfg.splits.items():
        path = resolve_path(cfg, name)
        if not isinstance(path, Path):
            raise TextdiffError(f"data.splits: file {name} not found")
        out[SPLIT_NAMES[key]] = _load_local(path, cfg, None)["train"]
    return out


def load_texts(cfg: DataConfig) -> dict[str, list[str]]:
    """{'train': [...], 'validation': [...], 'test': [...]} of raw strings (missing splits are empty). Data that
    names neither a validation nor a test split gives each data.holdout of its examples (hold_out)."""
    if cfg.splits:
        splits = _load_files(cfg)
    else:
        source = resolve_path(cfg)
        splits = _load_local(source, cfg, cfg.split_field) if isinstance(source, Path) else _load_hub(source, cfg)
    splits = {s: splits.get(s, []) for s in SPLITS}
    if not splits["train"]:
        raise TextdiffError(f"data.path: {source_name(cfg)} has no training text (field '{cfg.text_field}', split 'train')")
    if cfg.holdout and not splits["validation"] and not splits["test"]:
        splits = hold_out(splits["train"], cfg.holdout, cfg.holdout_seed)
    if cfg.max_examples:
        splits["train"] = splits["train"][:cfg.max_examples]
    return splits


@dataclass
class Sequences:
    """Fixed-length sequences of one split: ids (N, L) long, loss_mask (N, L) bool."""

    ids: torch.Tensor
    loss_mask: torch.Tensor

    def __len__(self) -> int:
        return self.ids.shape[0]

    def batch(self, index: torch.Tensor) -> Batch:
        return Batch(self.ids[index], self.loss_mask[index])


def subsample(seqs: Sequences, n: int) -> Sequences:
    """The first `n` sequences of a split (data.train_sequences), refused when the split has fewer."""
    if n > len(seqs):
        raise TextdiffError(f"data.train_sequences={n:,} is more than the {len(seqs):,} training sequences the data "
                            f"gives ({len(seqs) * seqs.ids.shape[1]:,} tokens); allowed: 1 to {len(seqs):,}")
    return Sequences(seqs.ids[:n], seqs.loss_mask[:n])


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
