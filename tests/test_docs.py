"""The README stays short, every relative link of the documentation resolves, and nothing committed as
documentation, recipe or result names a machine path or a folder outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").rglob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
MACHINE_PATH = re.compile(r"(?<![\w.:/~$-])/(?:work|root|home|tmp|Users|mnt|scratch|usr|opt|var|srv)/|\.\./shared"
                          r"|[A-Za-z]:\\\\|site-packages/|\.venv/lib/")
SCANNED = [README, *DOCS, *(ROOT / "recipes").rglob("*.yaml"),
           *(p for p in (ROOT / "benchmarks/results").rglob("*") if p.is_file() and p.suffix != ".png")]


def relative_links(md: Path) -> list[str]:
    """The link targets of a markdown file outside its code blocks, without URLs and in-page anchors."""
    text = FENCE.sub("", md.read_text(encoding="utf-8"))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:|#", t)]


def test_readme_is_at_most_15_kb():
    assert len(README.read_bytes()) <= 15_000, f"README.md is {len(README.read_bytes())} bytes; the limit is 15,000"


@pytest.mark.parametrize("md", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file_in_the_repository(md):
    links = relative_links(md)
    for target in links:
        path = (md.parent / target.split("#")[0]).resolve()
        assert path == ROOT or ROOT in path.parents, f"{md.name}: {target} leaves the repository"
        assert path.exists(), f"{md.name}: {target} does not exist"


def test_docs_index_links_every_page():
    index = ROOT / "docs/README.md"
    linked = {(index.parent / t.split("#")[0]).resolve() for t in relative_links(index)}
    assert not [p.name for p in DOCS if p != index and p not in linked]
    assert index.resolve() in {(README.parent / t).resolve() for t in relative_links(README)}


def test_no_machine_path_or_folder_outside_the_repository():
    found = [f"{p.relative_to(ROOT)}:{n}: {m.group(0)}" for p in SCANNED
             for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
             for m in [MACHINE_PATH.search(line)] if m]
    assert not found, "machine paths:\n" + "\n".join(found[:20])


def test_the_pattern_catches_what_it_must_and_spares_prose():
    for bad in ("--runs /work/runs-bench", "(../shared/anchors.md)", "judge /root/.venv/lib/x.gguf", "`/tmp/s`"):
        assert MACHINE_PATH.search(bad), bad
    for fine in ("nats/token", "tok/s", "1/t", "https://pytorch.org/get-started/", "$TEXTDIFF_DATA_DIR/bible",
                 "recipes/kjv/masked.yaml", "runs-bench/masked-800", "~/.cache/textdiff"):
        assert not MACHINE_PATH.search(fine), fine


def test_layout_lists_each_module_once():
    block = re.search(r"## Layout\s+```\n(.*?)```", README.read_text(encoding="utf-8"), re.S).group(1)
    names = [ln.split()[0] for ln in block.splitlines() if ln.strip() and not ln.startswith(" " * 10)]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
