"""`TextDiffusionPipeline`: a trained run directory as a generator of text.

    pipe = TextDiffusionPipeline.from_pretrained("runs/quickstart")
    pipe.generate(4, steps=64)
    pipe.infill("The [MASK:3] of the LORD [MASK] upon the waters")
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from textdiff import checkpoint as ckpt
from textdiff.config import Recipe, SampleConfig, recipe_from_dict
from textdiff.errors import TextdiffError
from textdiff.infill import parse_template, template_ids
from textdiff.models import build_model
from textdiff.noising import get_backend
from textdiff.sampling import SAMPLERS
from textdiff.tokenization import encode, load_tokenizer, special_tokens


@dataclass
class Generation:
    texts: list[str]
    ids: torch.Tensor
    """(B, L) token ids."""


class TextDiffusionPipeline:
    def __init__(self, recipe: Recipe, model, backend, tokenizer, device="cpu"):
        self.recipe, self.model, self.backend, self.tokenizer = recipe, model.eval(), backend, tokenizer
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(cls, run_dir: str | Path, device: str = "cpu") -> "TextDiffusionPipeline":
        """Load a run directory (config.json, model.safetensors, tokenizer). Never unpickles anything."""
        run_dir = Path(run_dir)
        cfg = ckpt.read_run_config(run_dir)
        recipe = recipe_from_dict(cfg["recipe"], str(run_dir / "config.json"))
        if cfg.get("backend", recipe.backend.name) != recipe.backend.name:
            raise TextdiffError(f"{run_dir / 'config.json'}: \"backend\": {cfg['backend']!r} disagrees with the recipe's "
                                f"backend.name={recipe.backend.name!r}; the file was edited or mixed from two runs")
        tokenizer = load_tokenizer(run_dir)
        if len(tokenizer) != cfg.get("vocab_size"):
            raise TextdiffError(f"{run_dir}: tokenizer has {len(tokenizer)} tokens, config.json says {cfg.get('vocab_size')}; "
                                "the tokenizer files come from another run: copy this run's tokenizer.json back")
        model = build_model(recipe, cfg["vocab_size"], cfg["max_len"])
        weights = run_dir / "model.safetensors"
        if not weights.is_file():
            raise TextdiffError(f"{run_dir}: no model.safetensors yet (training has not reached its first checkpoint)")
        ckpt.check_backend(weights, recipe.backend.name)
        ckpt.load_model_tensors(model, ckpt.load_tensors(weights), weights)
        backend = get_backend(recipe.backend, special_tokens(tokenizer), cfg["vocab_size"])
        return cls(recipe, model.to(device), backend, tokenizer, device)

    # --- options -----------------------------------------------------------------------------------------------

    def options(self, **overrides) -> SampleConfig:
        """The recipe's sample section with keyword overrides (None means keep), validated."""
        opts = dataclasses.replace(self.recipe.sample, **{k: v for k, v in overrides.items() if v is not None})
        if opts.sampler not in self.backend.samplers:
            if "sampler" in overrides and overrides["sampler"] is not None:
                raise TextdiffError(f"sampler '{opts.sampler}' does not work with the {self.backend.name} back-end; "
                                    f"choose one of {', '.join(self.backend.samplers)}")
            opts = dataclasses.replace(opts, sampler=self.backend.default_sampler)
        return opts

    def _run(self, x: torch.Tensor, opts: SampleConfig, seed: int, callback: Optional[Callable]) -> Generation:
        holes = int((x == self.backend.special.mask).sum(dim=1).max())
        n_blocks = -(-x.shape[1] // opts.block_size) if opts.block_size else 1
        if opts.sampler == "confidence" and opts.steps > holes:
            raise TextdiffError(f"steps={opts.steps} is more than the {holes} tokens to generate; use --steps {holes} or fewer")
        if opts.steps < n_blocks:
            raise TextdiffError(f"steps={opts.steps} is fewer than the {n_blocks} blocks of block_size={opts.block_size}")
        if not 0 <= seed < 2 ** 63:
            raise TextdiffError(f"seed={seed} must lie in [0, 2**63)")
        gen = torch.Generator(self.device).manual_seed(seed)
        try:
            with torch.no_grad():
                out = SAMPLERS[opts.sampler](self.model, self.backend, x.to(self.device), opts, gen, callback)
        except ValueError as e:
            raise TextdiffError(f"sampler '{opts.sampler}': {e}") from None
        ids = self.backend.decode(out).cpu()
        return Generation([self.decode(row) for row in ids.tolist()], ids)

    def decode(self, ids: list[int]) -> str:
        """Token ids -> text; [EOS] separates examples (verses in packed data) and is shown as a space."""
        eos, pieces, piece = self.backend.special.eos, [], []
        for i in ids + [eos]:
            if i == eos:
                pieces.append(self.tokenizer.decode(piece, skip_special_tokens=True).strip())
                piece = []
            else:
                piece.append(i)
        return " ".join(p for p in pieces if p)

    # --- public API ----------------------------------------------------------------------------------------------

    def generate(self, num_samples: int = 4, steps: Optional[int] = None, length: Optional[int] = None,
                 sampler: Optional[str] = None, seed: int = 0, callback: Optional[Callable] = None, **opts) -> Generation:
        """Unconditional samples of `length` tokens (default: the training length)."""
        if num_samples < 1:
            raise TextdiffError(f"n={num_samples}: the number of samples must be at least 1")
        o = self.options(steps=steps, length=length, sampler=sampler, **opts)
        L = o.length or self.recipe.data.max_length
        self._check_length(L)
        x = self.backend.prior((num_samples, L), self.device)
        return self._run(x, o, seed, callback)

    def infill(self, template: str, num_samples: int = 1, steps: Optional[int] = None, sampler: Optional[str] = None,
               seed: int = 0, callback: Optional[Callable] = None, **opts) -> Generation:
        """Fill the [MASK] / [MASK:n] holes of `template`; the given text stays fixed at every step.
        A template ending in a hole is prefix-conditioned generation, one starting with a hole suffix-conditioned."""
        if num_samples < 1:
            raise TextdiffError(f"n={num_samples}: the number of samples must be at least 1")
        ids = template_ids(parse_template(template), lambda s: encode(self.tokenizer, [s])[0], self.backend.special.mask)
        self._check_length(len(ids))
        holes = sum(1 for i in ids if i == self.backend.special.mask)
        o = self.options(steps=steps, sampler=sampler, **opts)
        if steps is None and o.sampler == "confidence":  # it reveals at least one token per step
            o = dataclasses.replace(o, steps=min(o.steps, holes))
        x = torch.tensor([ids] * num_samples, dtype=torch.long)
        return self._run(x, o, seed, callback)

    def _check_length(self, length: int) -> None:
        limit = self.model.max_len if self.model.pos is not None else 4 * self.model.max_len
        if length > limit:
            raise TextdiffError(f"length {length} tokens is more than this model handles ({limit})")
