"""Infill templates: `[MASK]` is one token, `[MASK:n]` exactly n; the given text stays as it is."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from textdiff.errors import TextdiffError
from textdiff.infill import MAX_HOLE, Template, parse_template, template_ids

MASK = 1


def encode(text: str) -> list[int]:
    """A stand-in tokenizer: one id per character, never the mask id."""
    return [ord(c) + 10 for c in text]


# --- parse_template ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("template, texts, holes", [
    ("The [MASK:3] of the LORD [MASK]", ("The ", " of the LORD ", ""), (3, 1)),
    ("[MASK]", ("", ""), (1,)),
    ("[MASK:2][MASK:5]", ("", "", ""), (2, 5)),
    ("[MASK:1] starts", ("", " starts"), (1,)),
    ("ends with [MASK:4]", ("ends with ", ""), (4,)),
    ("a [MASK: 7 ] b", ("a ", " b"), (7,)),
    ("a [MASK:007] b", ("a ", " b"), (7,)),
    (f"max [MASK:{MAX_HOLE}]", ("max ", ""), (MAX_HOLE,)),
    ("brackets [x] stay [MASK] ]", ("brackets [x] stay ", " ]"), (1,)),
    ("line\nbreak [MASK:2]\ttab", ("line\nbreak ", "\ttab"), (2,)),
    ("ünïcödé [MASK] 漢字", ("ünïcödé ", " 漢字"), (1,)),
])
def test_parse_template(template, texts, holes):
    assert parse_template(template) == Template(texts, holes)


@pytest.mark.parametrize("template, needle", [
    ("no hole at all", "has no hole"),
    ("", "has no hole"),
    ("[mask] is lower case", "has no hole"),
    ("[MASK:0]", "1 to 4096"),
    (f"[MASK:{MAX_HOLE + 1}]", "1 to 4096"),
    ("[MASK:" + "9" * 5000 + "]", "1 to 4096"),
    ("[MASK:-1]", "whole number"),
    ("[MASK:x]", "whole number"),
    ("[MASK:]", "whole number"),
    ("[MASK:1.5]", "whole number"),
    ("[MASK:²]", "whole number"),
    ("[MASK:٣]", "whole number"),
    ("[MASK] and [MASK:3", "malformed hole"),
    ("[MASK[MASK]", "malformed hole"),
    ("[MASKS] [MASK]", "malformed hole"),
])
def test_parse_template_rejects(template, needle):
    with pytest.raises(TextdiffError) as info:
        parse_template(template)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


# --- template_ids --------------------------------------------------------------------------------------------


def test_template_ids():
    ids = template_ids(parse_template("ab [MASK:2] c"), encode, MASK)
    assert ids == encode("ab") + [MASK, MASK] + encode(" c")


def test_template_ids_leaves_space_before_a_hole_to_the_hole():
    """Byte-level BPE spells a word with its leading space, so the space before a hole is not encoded."""
    assert template_ids(parse_template("a   [MASK]"), encode, MASK) == encode("a") + [MASK]
    assert template_ids(parse_template("[MASK]  tail  "), encode, MASK) == [MASK] + encode("  tail  ")


def test_template_ids_adjacent_holes_and_empty_text():
    assert template_ids(parse_template("[MASK:2][MASK:3]"), encode, MASK) == [MASK] * 5
    assert template_ids(parse_template(" [MASK] "), encode, MASK) == [MASK] + encode(" ")


@pytest.mark.parametrize("kind", ["bpe", "wordlevel"])
def test_template_ids_with_a_real_tokenizer(kind):
    """With a trained tokenizer: the given words survive and the holes are exactly [MASK] ids."""
    from tests.conftest import make_sentences
    from textdiff.config import TokenizerConfig
    from textdiff.tokenization import encode as tok_encode
    from textdiff.tokenization import special_tokens, train_tokenizer

    tok = train_tokenizer(TokenizerConfig(kind=kind, vocab_size=200, min_frequency=1), make_sentences(200, 0))
    mask = special_tokens(tok).mask
    ids = template_ids(parse_template("the old king [MASK:3] the river"), lambda s: tok_encode(tok, [s])[0], mask)
    assert ids.count(mask) == 3
    assert " ".join(tok.decode([i for i in ids if i != mask]).split()) == "the old king the river"


# --- properties ----------------------------------------------------------------------------------------------

piece = st.text(alphabet=st.characters(blacklist_characters="["), max_size=15)


@st.composite
def templates(draw):
    holes = draw(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=6))
    texts = draw(st.lists(piece, min_size=len(holes) + 1, max_size=len(holes) + 1))
    spell = [("[MASK]" if n == 1 and draw(st.booleans()) else f"[MASK:{n}]") for n in holes]
    template = texts[0] + "".join(h + t for h, t in zip(spell, texts[1:]))
    return template, tuple(texts), tuple(holes)


@settings(max_examples=300, deadline=None)
@given(templates())
def test_parse_template_recovers_texts_and_holes(case):
    template, texts, holes = case
    assert parse_template(template) == Template(texts, holes)


@settings(max_examples=300, deadline=None)
@given(templates())
def test_template_ids_places_exactly_the_holes(case):
    template, texts, holes = case
    ids = template_ids(parse_template(template), encode, MASK)
    assert ids.count(MASK) == sum(holes)
    # the given text, less the whitespace before each hole, in order and untouched
    kept = "".join(t.rstrip() if i < len(holes) else t for i, t in enumerate(texts))
    assert [i for i in ids if i != MASK] == encode(kept)


noise = st.text(alphabet=st.sampled_from(list("[]MASK:0123456789 x²٣-")) | st.characters(), max_size=40)


@settings(max_examples=500, deadline=None)
@given(st.one_of(noise, st.text(max_size=60), templates().map(lambda c: c[0]),
                 st.tuples(noise, templates().map(lambda c: c[0]), noise).map("".join)))
def test_random_strings_raise_only_textdiff_error(text):
    try:
        template = parse_template(text)
    except TextdiffError as e:
        assert "\n" not in str(e)
        return
    assert len(template.texts) == len(template.holes) + 1 >= 2
    assert all(n is None or 1 <= n <= MAX_HOLE for n in template.holes)  # None: [...], a span of unknown length
    assert sum(map(len, template.texts)) < len(text)
    assert template_ids(template, encode, MASK).count(MASK) == sum(n or 0 for n in template.holes)


def render(template: Template) -> str:
    """A parsed template written back in canonical form: every hole as [MASK:n] (or [...])."""
    return template.texts[0] + "".join(("[...]" if n is None else f"[MASK:{n}]") + t
                                       for n, t in zip(template.holes, template.texts[1:]))


@settings(max_examples=300, deadline=None)
@given(st.one_of(templates().map(lambda c: c[0]), st.tuples(noise, templates().map(lambda c: c[0]), noise).map("".join)))
def test_parse_render_parse_is_the_identity(text):
    """Round trip: whatever parses, rendered canonically, parses to the same template (and renders the same)."""
    try:
        template = parse_template(text)
    except TextdiffError:
        return
    again = parse_template(render(template))
    assert again == template
    assert render(again) == render(template)


def test_a_span_of_unknown_length_parses_to_none_and_becomes_the_back_ends_span_ids():
    from textdiff.infill import parse_template, template_ids

    tpl = parse_template("In the beginning [...] the [MASK:2].")
    assert tpl.texts == ("In the beginning ", " the ", ".") and tpl.holes == (None, 2)
    ids = template_ids(tpl, lambda s: [len(w) for w in s.split()], mask_id=1, span=(2,))
    assert ids == [2, 3, 9, 2, 3, 1, 1, 1]
