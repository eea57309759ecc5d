"""Tokenizers trained on the training split, wrapped as a transformers `PreTrainedTokenizerFast`, saved with the run.

Special tokens always take the first ids, in this order: [PAD]=0 [MASK]=1 [BOS]=2 [EOS]=3 [UNK]=4 [SEP]=5. A
pretrained backbone brings its own tokenizer instead (`backbone_tokenizer`): its tokens keep their ids and each
role (`pad_token`, `mask_token`, ... in tokenizer_config.json) names one of them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from textdiff.errors import TextdiffError
from textdiff.noising.base import SpecialTokens

SPECIAL_TOKENS = ["[PAD]", "[MASK]", "[BOS]", "[EOS]", "[UNK]", "[SEP]"]


def _bpe(cfg):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                  special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    return tok, trainer


def _wordpiece(cfg):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                        special_tokens=SPECIAL_TOKENS, show_progress=False)
    return tok, trainer


def _wordlevel(cfg):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                        special_tokens=SPECIAL_TOKENS, show_progress=False)
    return tok, trainer


def _sentencepiece(cfg, texts: Iterable[str]):
    """A SentencePiece unigram model trained by the sentencepiece library, rebuilt as a `tokenizers` Unigram
    (pieces and scores read through the processor, so no protobuf is needed)."""
    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(t.replace("\n", " ") for t in texts), encoding="utf-8")
        try:
            spm.SentencePieceTrainer.train(
                input=str(corpus), model_prefix=f"{tmp}/sp", model_type="unigram", vocab_size=cfg.vocab_size,
                pad_id=0, unk_id=4, bos_id=2, eos_id=3, pad_piece="[PAD]", unk_piece="[UNK]", bos_piece="[BOS]",
                eos_piece="[EOS]", user_defined_symbols=["[MASK]", "[SEP]"], hard_vocab_limit=False,
                character_coverage=1.0, minloglevel=2)
        except RuntimeError as e:  # e.g. "Vocabulary size is smaller than required_chars. 16 vs 67."
            why = str(e).split("] ")[-1].split(". Increase")[0][:160]
            raise TextdiffError(f"tokenizer.vocab_size={cfg.vocab_size}: sentencepiece cannot build it on this data "
                                f"({why}); raise tokenizer.vocab_size") from None
        sp = spm.SentencePieceProcessor(model_file=f"{tmp}/sp.model")
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tok = Tokenizer(models.Unigram(vocab, unk_id=sp.unk_id()))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def _wrap(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", mask_token="[MASK]", bos_token="[BOS]",
                                   eos_token="[EOS]", unk_token="[UNK]", sep_token="[SEP]")


def train_tokenizer(cfg, texts: Iterable[str]):
    """Train a tokenizer of kind cfg.kind on an iterator of strings."""
    texts = list(texts)
    if not texts:
        raise TextdiffError("the training split holds no text to train a tokenizer on")
    if cfg.kind == "sentencepiece":
        tok = _sentencepiece(cfg, texts)
    else:
        tok, trainer = {"bpe": _bpe, "wordpiece": _wordpiece, "wordlevel": _wordlevel}[cfg.kind](cfg)
        tok.train_from_iterator(_batches(texts), trainer=trainer, length=len(texts))
    wrapped = _wrap(tok)
    check_special_tokens(wrapped, "the trained tokenizer")
    return wrapped


def _batches(texts: list[str], size: int = 1000) -> Iterator[list[str]]:
    for i in range(0, len(texts), size):
        yield texts[i:i + size]


def load_tokenizer(path: str | Path):
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise TextdiffError(f"{path}: no tokenizer.json (a tokenizer directory saved by textdiff is expected)")
    try:
        tok = PreTrainedTokenizerFast.from_pretrained(str(path))
    except Exception as e:  # the tokenizers / transformers parsers raise many types for a damaged file
        raise TextdiffError(f"{path / 'tokenizer.json'}: not a readable tokenizer ({type(e).__name__}); "
                            "retrain or copy the run's tokenizer files again") from None
    check_special_tokens(tok, str(path))
    return tok


ROLES = ("pad", "mask", "bos", "eos", "unk", "sep")
"""textdiff's token roles, the order of SPECIAL_TOKENS; a tokenizer names each as transformers does (`pad_token`, ...)."""


def role_ids(tok) -> dict[str, int | None]:
    """{role: id} from the tokenizer's own role tokens (`tok.pad_token`, ...), else textdiff's literal `[PAD]` ...;
    None where neither exists."""
    vocab = tok.get_vocab()
    ids = {}
    for role, literal in zip(ROLES, SPECIAL_TOKENS):
        token = getattr(tok, f"{role}_token", None)
        ids[role] = vocab.get(str(token)) if token is not None else vocab.get(literal)
    return ids


def check_special_tokens(tok, where: str) -> None:
    missing = [f"{role} ({literal})" for (role, i), literal in zip(role_ids(tok).items(), SPECIAL_TOKENS) if i is None]
    if missing:
        raise TextdiffError(f"{where}: special tokens {', '.join(missing)} are missing; a textdiff tokenizer needs "
                            f"the roles {' '.join(SPECIAL_TOKENS)} (a backbone's tokenizer maps them to its own tokens)")


def special_tokens(tok) -> SpecialTokens:
    return SpecialTokens(**role_ids(tok))


def backbone_tokenizer(tok, where: str):
    """A backbone's own tokenizer as a textdiff tokenizer: a `PreTrainedTokenizerFast` over its tokenizer.json with
    every role named. A role the tokenizer lacks takes a related token of its own (bos: CLS, else EOS; eos: SEP;
    sep: EOS; unk: PAD); [MASK] and [PAD] are added when it has none (the model's embeddings grow to match)."""
    from transformers import PreTrainedTokenizerFast

    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise TextdiffError(f"{where}: the tokenizer cannot take a [MASK] token (no fast tokenizer.json to add it to); "
                            "give a backbone whose tokenizer has a tokenizer.json")
    own = {role: getattr(tok, f"{role}_token", None) for role in ("pad", "mask", "bos", "eos", "unk", "sep", "cls")}
    eos = own["eos"] or own["sep"]
    if eos is None:
        raise TextdiffError(f"{where}: the tokenizer names no end-of-sequence token (eos_token or sep_token); "
                            "textdiff joins and ends texts with it")
    roles = {"pad": own["pad"] or "[PAD]", "mask": own["mask"] or "[MASK]", "bos": own["bos"] or own["cls"] or eos,
             "eos": eos, "sep": own["sep"] or eos}
    roles["unk"] = own["unk"] or roles["pad"]
    from tokenizers import Tokenizer

    inner = Tokenizer.from_str(backend.to_str())
    inner.no_padding()  # textdiff pads and packs itself (sentence-transformers' files pad to a fixed length)
    inner.no_truncation()
    out = PreTrainedTokenizerFast(tokenizer_object=inner, **{f"{r}_token": str(t) for r, t in roles.items()})
    if len(out) < len(tok):
        raise TextdiffError(f"{where}: the tokenizer's added tokens did not carry over ({len(out)} of {len(tok)})")
    check_special_tokens(out, where)
    return out


def encode(tok, texts: list[str]) -> list[list[int]]:
    """Fast batch encoding without special tokens (the data pipeline adds [EOS] itself)."""
    return [e.ids for e in tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
