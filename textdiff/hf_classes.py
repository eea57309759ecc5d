"""transformers classes for textdiff run directories (registered by textdiff.hf_auto; this module imports
transformers and torch, so only that hook and its users import it)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from textdiff.errors import TextdiffError
from textdiff.hf_names import MODEL_TYPE, WATCHED

RUN_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md")
"""What a run needs to load (and what `textdiff push` uploads beside its extras)."""


class TextdiffConfig(PretrainedConfig):
    """A run's config.json as transformers reads it: the recipe (a dict), the back-end's name and the sizes."""

    model_type = MODEL_TYPE

    def __init__(self, recipe: Optional[dict] = None, backend: Optional[str] = None, vocab_size: Optional[int] = None,
                 max_len: Optional[int] = None, **kwargs):
        self.recipe, self.backend, self.vocab_size, self.max_len = recipe, backend, vocab_size, max_len
        super().__init__(**kwargs)


@dataclass
class DenoiserOutput(ModelOutput):
    """logits: the denoiser's output, (B, L, V) x0 logits for a token head, or (B, L, D) vectors for a back-end
    whose model predicts in a continuous space (see the back-end's `predict`)."""

    logits: Optional[torch.Tensor] = None


class TextdiffModel(PreTrainedModel):
    """A run's denoiser (textdiff's Transformer, or the causal AR baseline) behind transformers' API:
    `model(input_ids, t)` -> DenoiserOutput. `model.pipeline` is the run's TextDiffusionPipeline (sampling,
    infilling), `model.backend` its noising back-end."""

    config_class = TextdiffConfig
    base_model_prefix = "denoiser"
    main_input_name = "input_ids"

    def __init__(self, config: TextdiffConfig, pipeline=None):
        super().__init__(config)
        if pipeline is None:  # a fresh, untrained denoiser of this config's recipe
            from textdiff.config import recipe_from_dict
            from textdiff.models import build_model

            recipe = recipe_from_dict(config.recipe, "config.json", legacy=True)
            denoiser, backend = build_model(recipe, config.vocab_size, config.max_len), None
        else:
            denoiser, backend = pipeline.model, pipeline.backend
        self.denoiser, self.backend, self.pipeline = denoiser, backend, pipeline

    def forward(self, input_ids: torch.Tensor, t: Optional[torch.Tensor] = None, **kwargs) -> DenoiserOutput:
        """input_ids (B, L) (or (B, L, D) vectors for the embedding back-end), t (B,) in [0, 1] for a time-conditioned
        denoiser; keyword arguments go to textdiff's Transformer (x0_prev, select, ...)."""
        return DenoiserOutput(logits=self.denoiser(input_ids, t, **kwargs))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, device: str = "cpu", **kwargs):
        """Load through textdiff's own loader (config checks, safetensors only, never a pickle); a name that is not a
        local folder is fetched from the hub first (the files a run needs)."""
        from textdiff.pipeline import TextDiffusionPipeline

        run = local_run(pretrained_model_name_or_path, kwargs.get("revision"))
        pipe = TextDiffusionPipeline.from_pretrained(run, device=device)
        if not isinstance(config, TextdiffConfig):
            config = TextdiffConfig.from_pretrained(str(run))
        return cls(config, pipeline=pipe).eval()


def local_run(name, revision: Optional[str] = None) -> Path:
    """A local run directory for `name`: itself when it is a folder, else a snapshot of the hub repository."""
    path = Path(name)
    if path.is_dir():
        return path
    if path.exists() or str(name).startswith((".", "/", "~")):
        raise TextdiffError(f"{name}: not a run directory (a textdiff run is a folder holding config.json, "
                            "model.safetensors and tokenizer.json)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name), revision=revision, allow_patterns=list(RUN_FILES)))
    except Exception as e:  # offline, unknown repository, no access: one line
        reason = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise TextdiffError(f"{name}: not a local run directory, and the hub could not give it ({reason})") from None


def register_config() -> None:
    from transformers import AutoConfig

    AutoConfig.register(MODEL_TYPE, TextdiffConfig, exist_ok=True)


def register_model() -> None:
    from transformers import AutoModel

    register_config()
    AutoModel.register(TextdiffConfig, TextdiffModel, exist_ok=True)


def register_loaded() -> None:
    """Register with the auto modules that have finished loading (the others register when they do)."""
    if getattr(sys.modules.get(WATCHED[0]), "AutoConfig", None) is not None:
        register_config()
    if getattr(sys.modules.get(WATCHED[1]), "AutoModel", None) is not None:
        register_model()


register_loaded()
