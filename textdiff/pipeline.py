"""`TextDiffusionPipeline`: a trained run directory as a generator of text.

    pipe = TextDiffusionPipeline.from_pretrained("runs/quickstart")
    pipe.generate(4, steps=64)
    pipe.infill("The [MASK:3] of the LORD [MASK] upon the waters")
    pipe.infill("In the beginning [...] the earth.")                     # edit runs: a span of unknown length
    pipe.translate(["name[The Eagle], eatType[coffee shop]"], guidance_scale=1.0, mbr=8)   # seq2seq runs
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from textdiff import checkpoint as ckpt
from textdiff import rundir
from textdiff.config import Recipe, SampleConfig
from textdiff.data import segment_ids, source_mask
from textdiff.errors import TextdiffError
from textdiff.infill import parse_template, template_ids
from textdiff.models import build_model
from textdiff.noising import get_backend
from textdiff.registry import BACKENDS, SAMPLERS
from textdiff.sampling import all_options, hole_blocks
from textdiff.tokenization import encode, special_tokens

OWN_KEYS = tuple(f.name for f in dataclasses.fields(SampleConfig) if f.name != "options")
USED_BY = {"length": "generate (the length of unconditional samples; a template or a seq2seq layout sets its own)",
           "guidance_scale": "translate (classifier-free guidance of a seq2seq run)",
           "mbr": "translate (minimum Bayes risk over a seq2seq run's candidates)"}
"""The sample keys only one call uses; any other call refuses them instead of ignoring them."""
"""The sample section's own keys; every other sampling keyword is a sampler option."""


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
        cfg = rundir.read_config(run_dir)
        recipe = rundir.read_recipe(run_dir, cfg)
        tokenizer = rundir.read_tokenizer(run_dir, cfg)
        model = build_model(recipe, cfg["vocab_size"], cfg["max_len"], backbone=rundir.backbone_record(run_dir, cfg) or None)
        weights = run_dir / "model.safetensors"
        if not weights.is_file():
            raise TextdiffError(f"{run_dir}: no model.safetensors yet (training has not reached its first checkpoint)")
        ckpt.check_backend(weights, recipe.backend.name)
        ckpt.load_model_tensors(model, ckpt.load_tensors(weights), weights)
        backend = get_backend(recipe.backend, special_tokens(tokenizer), cfg["vocab_size"])
        return cls(recipe, model.to(device), backend, tokenizer, device)

    # --- options -----------------------------------------------------------------------------------------------

    def options(self, **overrides) -> SampleConfig:
        """The recipe's sample section with keyword overrides (None means keep), validated: the sampler resolved
        (the back-end's default when neither names one) and `options` completed to every option it declares (the
        recipe's where the sampler takes them, then the overrides). An override the sampler does not declare is
        refused in one line naming the samplers it belongs to."""
        given = {k: v for k, v in overrides.items() if v is not None}
        sampler = given.get("sampler") or self.recipe.sample.sampler_for(type(self.backend))
        if sampler not in self.backend.samplers:
            raise TextdiffError(f"sampler '{sampler}' does not work with the {self.backend.name} back-end; "
                                f"choose one of {', '.join(self.backend.samplers)}")
        declared = SAMPLERS[sampler].options
        extra = {k: v for k, v in given.items() if k not in OWN_KEYS}
        for key, value in extra.items():
            self._check_option(sampler, key, value)
        if "steps" in given and not SAMPLERS[sampler].takes_steps:
            raise TextdiffError(f"steps={given['steps']}: the {sampler} sampler writes one token per model call and "
                                "takes no step count; leave --steps out")
        recipe_opts = {k: v for k, v in self.recipe.sample.options.items() if k in declared}
        options = {**{k: opt.default for k, (_, opt) in declared.items()}, **recipe_opts, **extra}
        own = {k: v for k, v in given.items() if k in OWN_KEYS and k != "sampler"}
        try:
            return dataclasses.replace(self.recipe.sample, sampler=sampler, options=options, **own)
        except ValueError as e:
            raise TextdiffError(str(e)) from None

    def _check_option(self, sampler: str, key: str, value) -> None:
        declared = all_options()
        if key not in declared:
            raise TextdiffError(f"{key}: not a sampling option; options: {', '.join(declared)}")
        kind, opt, owners = declared[key]
        if key not in SAMPLERS[sampler].options:
            backends = [b for b in BACKENDS if any(o in BACKENDS[b].samplers for o in owners)]
            usable = [o for o in owners if o in self.backend.samplers]
            hint = f"use --sampler {usable[0]} or leave it out" if usable else "leave it out"
            raise TextdiffError(f"{key.replace('_', ' ')} ({key}={value!r}) is an option of the {', '.join(owners)} "
                                f"sampler{'s' if len(owners) > 1 else ''} (the {', '.join(backends)} back-end"
                                f"{'s' if len(backends) > 1 else ''}), not of '{sampler}'; {hint}")
        if not isinstance(value, kind) and not (kind is float and isinstance(value, int)):
            raise TextdiffError(f"{key}={value!r} must be {kind.__name__}")
        try:
            opt.validate(key, value)
        except ValueError as e:
            raise TextdiffError(str(e)) from None

    def _run(self, x: torch.Tensor, opts: SampleConfig, seed: int, callback: Optional[Callable],
             guidance: Optional[Callable] = None) -> Generation:
        K = self.model.cfg.block_size
        holes = K or int((x == self.backend.special.mask).sum(dim=1).max())  # a block model's steps are per block
        if SAMPLERS[opts.sampler].reveals_per_step and opts.steps > holes:
            raise TextdiffError(f"steps={opts.steps} is more than the {holes} tokens to generate"
                                f"{' in a block' if K else ''}; use --steps {holes} or fewer")
        if not K:
            self._check_blocks(x, opts)
        if not 0 <= seed < 2 ** 63:
            raise TextdiffError(f"seed={seed} must lie in [0, 2**63)")
        gen = torch.Generator(self.device).manual_seed(seed)
        ids = self._sample(x, opts, gen, callback, guidance=guidance)
        return Generation([self.decode(row) for row in ids.tolist()], ids)

    def _check_cache(self, opts: SampleConfig, guided: bool) -> None:
        """A block model samples over blocks of its own K; Fast-dLLM's caches need a bidirectional model under
        semi-autoregressive blocks and no guidance."""
        K, o = self.model.cfg.block_size, opts.options
        if K and o.get("block_size", 0) not in (0, K):
            raise TextdiffError(f"block_size={o['block_size']}: this block model was trained with blocks of {K}; "
                                f"leave --block-size out (or give {K})")
        mode = o.get("cache", "auto")
        if mode in ("prefix", "dual") and (K or not o.get("block_size", 0) or guided):
            why = ("a block model has its exact cache (--cache auto)" if K else "it needs --block-size > 0"
                   if not o.get("block_size", 0) else "it takes no guidance")
            raise TextdiffError(f"cache={mode}: Fast-dLLM's approximate cache is for a bidirectional model's "
                                f"semi-autoregressive blocks; {why}")
        if K and guided:
            raise TextdiffError("guidance: a block model's cached sampler takes no guidance yet; sample without it")

    def _check_blocks(self, x: torch.Tensor, opts: SampleConfig) -> None:
        block_size = opts.options.get("block_size", 0)
        n_blocks = len(hole_blocks(x, self.backend.special.mask, block_size))
        if SAMPLERS[opts.sampler].takes_steps and opts.steps < n_blocks:
            raise TextdiffError(f"steps={opts.steps} is fewer than the {n_blocks} blocks of block_size={block_size}")

    def _sample(self, x: torch.Tensor, opts: SampleConfig, gen, callback=None, guidance_scale: float = 0.0,
                guidance: Optional[Callable] = None) -> torch.Tensor:
        """One sampler call on x (B, L): seq2seq segments for the model, classifier-free guidance when asked, or the
        given guidance hook (classifier guidance)."""
        x = x.to(self.device)
        sampler = SAMPLERS[opts.sampler]
        if guidance_scale > 0:
            from textdiff.sampling.guidance import classifier_free

            guidance = classifier_free(self.model, self.backend, source_mask(x, self.backend.special.sep), guidance_scale)
        self._check_cache(opts, guidance is not None)
        if guidance is not None and not sampler.takes_guidance:
            raise TextdiffError(f"the {opts.sampler} sampler of the {self.backend.name} back-end takes no guidance")
        steps = {"steps": opts.steps} if sampler.takes_steps else {}
        try:
            with torch.no_grad(), self.model.segmented(segment_ids(x, self.backend.special.sep)):
                out = sampler(self.model, self.backend, x, gen, callback=callback, guidance=guidance, **steps,
                              **opts.options)
        except ValueError as e:
            raise TextdiffError(f"sampler '{opts.sampler}': {e}") from None
        return self.backend.decode(out).cpu()

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
                 sampler: Optional[str] = None, seed: int = 0, callback: Optional[Callable] = None,
                 guidance: Optional[Callable] = None, **opts) -> Generation:
        """Unconditional samples of `length` tokens (default: the training length). `guidance(out, x_t, t) -> out`
        changes every model evaluation, e.g. `Classifier.load(dir).guidance(pipe, "Chinese", 3.0)` (classifier
        guidance, textdiff.classifier)."""
        if num_samples < 1:
            raise TextdiffError(f"n={num_samples}: the number of samples must be at least 1")
        _refuse_unused("generate", opts)
        o = self.options(steps=steps, length=length, sampler=sampler, **opts)
        L = o.length or self.recipe.data.max_length
        self._check_length(L)
        x = self.backend.prior((num_samples, L), self.device)
        return self._run(x, o, seed, callback, guidance)

    def denoise(self, x: torch.Tensor, seed: int = 0, callback: Optional[Callable] = None, **opts) -> Generation:
        """One sampler call from a start of your own: x (B, L) token ids, [MASK] wherever text is to be generated
        (what generate and infill build from a length or a template; lm-evaluation-harness builds it from ids)."""
        _refuse_unused("denoise", opts)
        return self._run(x, self.options(**opts), seed, callback)

    def infill(self, template: str | list[str], num_samples: int = 1, steps: Optional[int] = None,
               sampler: Optional[str] = None, seed: int = 0, callback: Optional[Callable] = None, **opts) -> Generation:
        """Fill the [MASK] / [MASK:n] holes of `template` (and, on a variable-length back-end, the [...] spans of
        unknown length); the given text stays fixed at every step. A template ending in a hole is prefix-conditioned
        generation, one starting with a hole suffix-conditioned. A list of templates gives num_samples rows each,
        template-major: the templates of one token length are filled in one sampler call (what `textdiff serve`
        batches), one call per length (`callback` sees each call's rows; ids are [PAD]-padded to the longest)."""
        templates = [template] if isinstance(template, str) else list(template)
        if num_samples < 1:
            raise TextdiffError(f"n={num_samples}: the number of samples must be at least 1")
        if not templates or not all(isinstance(t, str) for t in templates):
            raise TextdiffError("infill: give a template or a list of templates (strings)")
        _refuse_unused("infill", opts)
        rows = [self.template_row(t) for t in templates]
        self._check_block_template(rows)
        o = self.options(steps=steps, sampler=sampler, **opts)
        by_length: dict[int, list[int]] = {}
        for i, row in enumerate(rows):
            by_length.setdefault(len(row), []).append(i)
        done: dict[int, tuple[list[str], torch.Tensor]] = {}
        for group in by_length.values():
            out = self._infill_rows([rows[i] for i in group], num_samples, o, steps is None, seed, callback)
            for k, i in enumerate(group):
                lo = k * num_samples
                done[i] = (out.texts[lo:lo + num_samples], out.ids[lo:lo + num_samples])
        width = max(len(r) for r in rows)
        pad = self.backend.special.pad
        ids = torch.cat([torch.nn.functional.pad(done[i][1], (0, width - done[i][1].shape[1]), value=pad)
                         for i in range(len(rows))])
        return Generation([t for i in range(len(rows)) for t in done[i][0]], ids)

    def _infill_rows(self, rows: list[list[int]], num_samples: int, o: SampleConfig, default_steps: bool, seed: int,
                     callback: Optional[Callable]) -> Generation:
        """One sampler call over templates of one length, num_samples rows each."""
        holes = max(sum(1 for i in r if i == self.backend.special.mask) for r in rows)
        if default_steps and SAMPLERS[o.sampler].reveals_per_step:  # at least one token per step
            o = dataclasses.replace(o, steps=min(o.steps, holes))
        x = torch.tensor([r for r in rows for _ in range(num_samples)], dtype=torch.long)
        return self._run(x, o, seed, callback)

    def _check_block_template(self, rows: list[list[int]]) -> None:
        """A block model's block sees itself and the blocks before it: no given token may lie in a block after a
        hole's."""
        K, sp = self.model.cfg.block_size, self.backend.special
        for row in rows:
            holes = [i // K for i, v in enumerate(row) if v == sp.mask] if K else []
            if holes and any(i // K > holes[0] for i, v in enumerate(row) if v not in (sp.mask, sp.pad)):
                raise TextdiffError(f"infill: this block model (blocks of {K}) sees only the text before a hole; put "
                                    "the holes at the end of the template (prefix-conditioned infill)")

    def template_row(self, template: str) -> list[int]:
        """A template's sampler-input ids: [MASK] in its holes, the back-end's open holes and [PAD] room for [...]."""
        tpl, bk = parse_template(template), self.backend
        if None in tpl.holes and not bk.variable_length:
            raise TextdiffError(f"infill template: [...] (a span of unknown length) needs the edit back-end; the "
                                f"{bk.name} back-end fills holes of a fixed length: write [MASK:n]")
        ids = template_ids(tpl, lambda s: encode(self.tokenizer, [s])[0], bk.special.mask, tuple(bk.open_hole(1)))
        self._check_length(len(ids))
        if None in tpl.holes:  # room for the spans to grow into
            fixed, L = len(ids) - tpl.holes.count(None), self.recipe.data.max_length
            if fixed >= L:
                raise TextdiffError(f"infill template: its given text and [MASK] holes take {fixed} tokens, this run's "
                                    f"whole length (data.max_length={L}), leaving no room for its [...] spans; "
                                    "shorten the template")
            ids += [bk.special.pad] * max(0, L - len(ids))
        return ids

    def translate(self, sources: str | list[str], num_samples: int = 1, steps: Optional[int] = None,
                  sampler: Optional[str] = None, seed: int = 0, batch_size: int = 64, progress: bool = False,
                  **opts) -> Generation:
        """Seq2seq generation: num_samples targets per source (source-major order), each sequence laid out as in
        training, `source [SEP] [MASK]...`, the source never noised. `guidance_scale=w` mixes in the unconditional
        model (classifier-free guidance); `mbr=N` draws N candidates per source and keeps the one of highest
        expected BLEU against the others. Sources longer than (max_length - 2) // 2 tokens are cut to that.
        `progress` shows a bar over the generation batches."""
        if not self.recipe.data.source_field:
            raise TextdiffError("this run is not seq2seq (its recipe has no data.source_field); use sample or infill")
        _refuse_unused("translate", opts)
        sources = [sources] if isinstance(sources, str) else list(sources)
        if num_samples < 1 or not sources:
            raise TextdiffError(f"n={num_samples}, {len(sources)} sources: need at least one of each")
        empty = [i for i, text in enumerate(sources) if not str(text).strip()]
        if empty:
            raise TextdiffError(f"source {empty[0]} is empty: each source needs text to condition on")
        o = self.options(steps=steps, sampler=sampler, **opts)
        self._check_guidance(o)
        draws = o.mbr if o.mbr > 1 else num_samples
        L, sp = self.recipe.data.max_length, self.backend.special
        encoded = [ids[:(L - 2) // 2] for ids in encode(self.tokenizer, sources)]
        gen = torch.Generator(self.device).manual_seed(seed)
        out: dict[int, torch.Tensor] = {}
        groups = _by_length(encoded, max(1, batch_size // draws), exact=self.backend.causal)
        for group in tqdm(groups, desc=f"generate ({len(sources)} sources)", unit="batch", disable=not progress):
            x = torch.tensor([encoded[i] + [sp.sep] + self.backend.open_hole(L - len(encoded[i]) - 1) for i in group
                              for _ in range(draws)])
            fewest = L - 1 - max(len(encoded[i]) for i in group)  # the smallest hole in the batch
            run_opts = dataclasses.replace(o, steps=min(o.steps, fewest)) if SAMPLERS[o.sampler].reveals_per_step else o
            self._check_blocks(x, run_opts)
            ids = self._sample(x, run_opts, gen, guidance_scale=o.guidance_scale).view(len(group), draws, L)
            out.update({i: row for i, row in zip(group, ids)})
        ids = torch.cat([out[i] for i in range(len(sources))])  # (S * draws, L)
        texts = [self.decode_target(row) for row in ids.tolist()]
        if o.mbr > 1:
            from textdiff.evaluation.mbr import mbr_select

            picks = [i * draws + mbr_select(texts[i * draws:(i + 1) * draws]) for i in range(len(sources))]
            ids, texts = ids[picks], [texts[p] for p in picks]
        return Generation(texts, ids)

    def decode_target(self, ids: list[int]) -> str:
        """A seq2seq sequence's target: the tokens after the first [SEP], up to [EOS]."""
        sp = self.backend.special
        target = ids[ids.index(sp.sep) + 1:] if sp.sep in ids else ids
        target = target[:target.index(sp.eos)] if sp.eos in target else target
        return self.tokenizer.decode(target, skip_special_tokens=True).strip()

    def _check_guidance(self, o: SampleConfig) -> None:
        if o.guidance_scale > 0 and self.recipe.train.cond_dropout <= 0:
            raise TextdiffError(f"guidance_scale={o.guidance_scale}: classifier-free guidance needs a model trained "
                                "with train.cond_dropout > 0 (it has never seen the null condition)")
        if o.guidance_scale > 0 and not SAMPLERS[o.sampler].takes_guidance:
            raise TextdiffError(f"guidance_scale={o.guidance_scale}: the {o.sampler} sampler of the {self.backend.name} "
                                "back-end takes no guidance")

    def _check_length(self, length: int) -> None:
        limit = self.model.max_len if self.model.pos is not None else 4 * self.model.max_len
        if length > limit:
            raise TextdiffError(f"length {length} tokens is more than this model handles ({limit})")


def _refuse_unused(call: str, opts: dict) -> None:
    """A sample key given to a call that does not use it is refused in one line naming the call that does."""
    for key, value in opts.items():
        if value is not None and key in USED_BY and not USED_BY[key].startswith(call + " "):
            raise TextdiffError(f"{key}={value!r}: {call} does not use it; it is an option of {USED_BY[key]}")


def _by_length(encoded: list[list[int]], size: int, exact: bool = True) -> list[list[int]]:
    """Indices of the sources in chunks of `size`, shortest first. `exact`: a chunk holds sources of one token length
    only (one prompt layout per sampler call, as the AR baseline's KV cache needs); otherwise neighbouring lengths
    share a chunk (each row has its own layout: the bidirectional samplers work per row), so batches stay full."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    if not exact:
        return [order[k:k + size] for k in range(0, len(order), size)]
    groups: dict[int, list[int]] = {}
    for i in order:
        groups.setdefault(len(encoded[i]), []).append(i)
    return [g[k:k + size] for _, g in groups.items() for k in range(0, len(g), size)]
