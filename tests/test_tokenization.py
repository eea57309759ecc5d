"""Every tokenizer kind trains, keeps the special-token ids fixed, round-trips text and reloads from disk."""

from __future__ import annotations

import pytest

from textdiff.config import TokenizerConfig
from textdiff.tokenization import SPECIAL_TOKENS, encode, load_tokenizer, special_tokens, train_tokenizer
from tests.conftest import make_sentences


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "wordlevel", "sentencepiece"])
def test_tokenizer_kinds(kind, tmp_path):
    texts = make_sentences(400, seed=0)
    tok = train_tokenizer(TokenizerConfig(kind=kind, vocab_size=120, min_frequency=1), texts)
    assert [tok.convert_tokens_to_ids(s) for s in SPECIAL_TOKENS] == list(range(6))
    sp = special_tokens(tok)
    assert (sp.pad, sp.mask, sp.bos, sp.eos, sp.unk, sp.sep) == (0, 1, 2, 3, 4, 5)
    ids = encode(tok, [texts[0]])[0]
    assert ids and min(ids) >= 6  # no special token inside ordinary text
    decoded = tok.decode(ids)
    assert decoded.replace(" ", "") == texts[0].replace(" ", "")
    tok.save_pretrained(str(tmp_path))
    again = load_tokenizer(tmp_path)
    assert encode(again, [texts[1]]) == encode(tok, [texts[1]])
