"""Infill templates: text with `[MASK]` (one token), `[MASK:n]` (exactly n tokens) and `[...]` (a span of unknown
length, for variable-length back-ends) holes."""

from __future__ import annotations

import re
from dataclasses import dataclass

from textdiff.errors import TextdiffError

HOLE = re.compile(r"\[MASK(?::([^\]]*))?\]|\[\.\.\.\]")
MAX_HOLE = 4096
CONTROL_TOKENS = ("[PAD]", "[BOS]", "[EOS]", "[UNK]", "[SEP]", "[CLS]")
"""The special tokens of textdiff's tokenizers (tokenization.SPECIAL_TOKENS, [MASK] aside) and BERT's [CLS]."""


@dataclass(frozen=True)
class Template:
    """Alternating pieces: `texts` has one more entry than `holes`; holes[i] tokens go after texts[i] (None: a span
    of unknown length)."""

    texts: tuple[str, ...]
    holes: tuple[int | None, ...]


def parse_template(template: str) -> Template:
    """'The [MASK:3] of the LORD [MASK]' -> Template(('The', ' of the LORD', ''), (3, 1)); `[...]` gives None."""
    texts, holes, pos = [], [], 0
    for m in HOLE.finditer(template):
        n = None if m.group(0) == "[...]" else _hole_size(m.group(1), m.group(0))
        texts.append(template[pos:m.start()])
        holes.append(n)
        pos = m.end()
    texts.append(template[pos:])
    if not holes:
        raise TextdiffError(f"infill template {template!r} has no hole; write [MASK] for one token, [MASK:n] for n "
                            "or [...] for a span of unknown length")
    stray = next((t for t in texts if "[MASK" in t), None)
    if stray is not None:
        raise TextdiffError(f"infill template: malformed hole in {stray!r}; write [MASK] or [MASK:n] with n >= 1")
    special = next((tok for tok in CONTROL_TOKENS for t in texts if tok in t), None)
    if special is not None:  # the tokenizer reads it as a control token, which decoding then drops from the text
        raise TextdiffError(f"infill template: {special} is a special token, not text (it would vanish from the "
                            "output); remove it, or spell it differently")
    return Template(tuple(texts), tuple(holes))


def foreign_words(template: str, texts) -> list[str]:
    """The words of the template's given text (case aside) that occur in none of `texts`: a template kept from another
    corpus's recipe gives words this corpus never uses."""
    wanted = {w for piece in parse_template(template).texts for w in re.findall(r"\w+", piece.lower())}
    for text in texts:
        if not wanted:
            break
        wanted -= set(re.findall(r"\w+", text.lower()))
    return sorted(wanted)


def _hole_size(arg: str | None, hole: str) -> int:
    if arg is None:
        return 1
    arg = arg.strip()
    if not (arg.isascii() and arg.isdigit()):  # str.isdigit alone accepts '²', which int() rejects
        raise TextdiffError(f"infill template: {hole} needs a whole number of tokens, e.g. [MASK:3]")
    n = int(arg) if len(arg) <= 9 else MAX_HOLE + 1  # int() refuses > 4300 digits
    if not 1 <= n <= MAX_HOLE:
        raise TextdiffError(f"infill template: {hole} must ask for 1 to {MAX_HOLE} tokens")
    return n


def template_ids(template: Template, encode, mask_id: int, span: tuple[int, ...] = ()) -> list[int]:
    """Token ids with mask_id in the holes and the ids `span` for a span of unknown length. Whitespace before a hole
    is left to the hole's first token (byte-level BPE spells a word with its leading space)."""
    ids: list[int] = []
    for i, text in enumerate(template.texts):
        if i < len(template.holes):
            text = text.rstrip()
        if text:
            ids.extend(encode(text))
        if i < len(template.holes):
            n = template.holes[i]
            ids.extend(span if n is None else [mask_id] * n)
    return ids
