"""textdiff runs in EleutherAI's lm-evaluation-harness (optional extra `lmeval`), as LLaDA, Dream and dllm report:

    python -m textdiff.lm_eval --model textdiff --model_args pretrained=RUN,draws=32 --tasks TASK [lm_eval's flags]

`python -m textdiff.lm_eval` is lm_eval's own command line with the `textdiff` model registered (lm_eval finds
models only in its registry; `import textdiff.lm_eval` registers it for `lm_eval.simple_evaluate` too).

- `loglikelihood(context, continuation)`: log p(continuation | context). Diffusion back-ends: minus the Monte Carlo
  ELBO over the continuation's tokens with the context given and never noised (LLaDA's conditional likelihood
  estimate, `draws` time draws; a lower bound on the log-likelihood); the AR baseline: exact. `is_greedy`: whether
  the run's sampler at temperature 0 (one token per step) writes exactly the continuation after the context
  (LLaDA's `suffix_greedy_prediction`). Back-ends without a bound (simplex, edit) cannot answer: a one-line error.
- `loglikelihood_rolling(text)`: the sum over lm_eval's rolling windows of the model's length.
- `generate_until(context, {until, max_gen_toks, temperature})`: the context, then `max_gen_toks` positions to
  denoise with the run's sampler (temperature 0 by default: greedy), cut at the first stop string or [EOS].
Model arguments: pretrained (a run directory), draws (32), batch_size (16), device (cpu), seed (0), and any
sampling option of `textdiff sample` (sampler, steps, temperature, ...) for generate_until.
"""

from __future__ import annotations

import sys
from typing import Optional

import torch

from textdiff.errors import TextdiffError

try:
    import lm_eval.models  # noqa: F401  (lm_eval's own models first: its registry loads them only while empty)
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError:
    MISSING = "textdiff.lm_eval needs lm-evaluation-harness: pip install -e \".[lmeval]\""
    if __name__ == "__main__":  # python -m textdiff.lm_eval: one line, exit 2
        print(f"textdiff: error: {MISSING}", file=sys.stderr)
        raise SystemExit(2)
    raise TextdiffError(MISSING) from None

MAX_GEN_TOKS = 32


def pick_device(device: Optional[str]) -> str:
    """lm_eval's --device (its default is cuda:0 even when not given): the CPU when CUDA is asked for and absent,
    as lm_eval's own hf model does."""
    if device and device.startswith("cuda") and not torch.cuda.is_available():
        print(f"textdiff: --device {device}: CUDA is not available here, using the CPU", file=sys.stderr)
        return "cpu"
    return device or "cpu"


@register_model("textdiff")
class TextdiffLM(LM):
    """A textdiff run as an lm_eval model (see the module docstring)."""

    def __init__(self, pretrained: str, draws: int = 32, batch_size: int | str = 16, device: Optional[str] = None,
                 seed: int = 0, max_gen_toks: int = MAX_GEN_TOKS, max_batch_size=None, **sample_opts):
        super().__init__()
        from textdiff.pipeline import TextDiffusionPipeline

        self.pipe = TextDiffusionPipeline.from_pretrained(pretrained, device=pick_device(device))
        self.draws, self.seed = int(draws), int(seed)
        self.batch_size = 16 if str(batch_size).startswith("auto") else int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self.sample_opts = {k: v for k, v in sample_opts.items() if v is not None}
        self.pipe.options(**{k: v for k, v in self.sample_opts.items() if k != "length"})  # bad options fail now
        self.limit = self.pipe.model.max_len - len(self.start())

    # --- helpers -----------------------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        from textdiff.tokenization import encode

        return encode(self.pipe.tokenizer, [text])[0] if text else []

    def pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of (context, continuation); trailing spaces of the context move to the continuation (lm_eval's
        convention) and the context is cut from the left to fit the model."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        ctx, cont = self.encode(context), self.encode(continuation)
        if not cont:
            raise TextdiffError(f"lm-eval: the continuation {continuation!r} has no tokens")
        if len(cont) > self.limit:
            raise TextdiffError(f"lm-eval: a continuation of {len(cont)} tokens is longer than this model's "
                                f"{self.limit}")
        return ctx[max(0, len(ctx) - (self.limit - len(cont))):], cont

    def check_bound(self) -> None:
        from textdiff.noising import BACKENDS

        bk = self.pipe.backend
        if not bk.has_bound:
            bounded = ", ".join(n for n, cls in BACKENDS.items() if cls.has_bound)
            raise TextdiffError(f"lm-eval loglikelihood: the {bk.name} back-end has no likelihood bound, so this run "
                                f"cannot score continuations; use generate_until tasks, or a run of {bounded}")

    def start(self) -> list[int]:
        """[EOS] for an AR run from before `backend.start_token` (its bound leaves the first position out), else
        nothing (a diffusion bound scores every position; AR's own bound reads an [EOS] start before the row)."""
        return [] if self.pipe.backend.scores_every_token else [self.pipe.backend.special.eos]

    def rows(self, pairs: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) ids [start] + context + continuation, and the (B, L) mask of the continuation."""
        start = self.start()
        ids = [start + c + t for c, t in pairs]
        mask = [[False] * (len(start) + len(c)) + [True] * len(t) for c, t in pairs]
        return torch.tensor(ids, device=self.pipe.device), torch.tensor(mask, device=self.pipe.device)

    def batches(self, pairs: list[tuple[list[int], list[int]]]):
        """Indices in batches of one total length (a bidirectional model sees no padding)."""
        by_len: dict[int, list[int]] = {}
        for i, (c, t) in enumerate(pairs):
            by_len.setdefault(len(c) + len(t), []).append(i)
        for group in by_len.values():
            for k in range(0, len(group), self.batch_size):
                yield group[k:k + self.batch_size]

    @torch.no_grad()
    def score(self, pairs: list[tuple[list[int], list[int]]], greedy: bool = True,
              progress: bool = True) -> list[tuple[float, bool]]:
        """log p(continuation | context) per pair: minus the ELBO's `draws`-draw estimate (exact for AR)."""
        from tqdm.auto import tqdm

        from textdiff.data import segment_ids
        from textdiff.noising.base import Batch

        self.check_bound()
        gen = torch.Generator(self.pipe.device).manual_seed(self.seed)
        out: list[Optional[tuple[float, bool]]] = [None] * len(pairs)
        groups = list(self.batches(pairs))
        for group in tqdm(groups, desc="lm-eval likelihood", unit="batch", disable=not progress):
            ids, mask = self.rows([pairs[i] for i in group])
            with self.pipe.model.segmented(segment_ids(ids, self.pipe.backend.special.sep)):
                nll = self.pipe.backend.bound(self.pipe.model, Batch(ids, mask), self.draws, gen).nll
            hits = self.greedy([pairs[i] for i in group]) if greedy else [False] * len(group)
            for i, value, hit in zip(group, nll.tolist(), hits):
                out[i] = (-value, hit)
        return out

    def steps(self, n: int) -> dict:
        """{"steps": n} for a sampler with a step count ({} for the AR baseline's, one call per token)."""
        from textdiff.registry import SAMPLERS

        return {"steps": n} if SAMPLERS[self.pipe.options(**self.sample_opts).sampler].takes_steps else {}

    def greedy(self, pairs: list[tuple[list[int], list[int]]]) -> list[bool]:
        """Whether the sampler at temperature 0, one token per step, writes each continuation after its context."""
        mask = self.pipe.backend.special.mask
        x = torch.tensor([c + [mask] * len(t) for c, t in pairs])
        opts = {**{k: v for k, v in self.sample_opts.items() if k not in ("temperature", "steps")},
                "temperature": 0.0, **self.steps(len(pairs[0][1]))}
        ids = self.pipe.denoise(x, seed=self.seed, **opts).ids.tolist()
        return [row[len(c):] == t for row, (c, t) in zip(ids, pairs)]

    # --- lm_eval's interface -------------------------------------------------------------------------------------

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        self.check_bound()
        pairs = [self.pair(*req.args[:2]) for req in requests]
        return self.score(pairs, progress=not disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        self.check_bound()
        out = []
        for req in requests:
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                self.encode(req.args[0]), self.pipe.backend.special.eos, self.limit, 1)]
            pairs = [(ctx[1:] if ctx and ctx[0] == self.pipe.backend.special.eos else ctx, pred)
                     for ctx, pred in windows]
            out.append(sum(ll for ll, _ in self.score(pairs, greedy=False, progress=False)))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from tqdm.auto import tqdm

        return [self.generate_one(*req.args[:2]) for req in tqdm(requests, desc="lm-eval generate",
                                                                 disable=disable_tqdm)]

    def generate_one(self, context: str, gen_kwargs: dict) -> str:
        kwargs = dict(gen_kwargs or {})
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        n = min(int(kwargs.pop("max_gen_toks", self.max_gen_toks)), self.limit)
        ctx = self.encode(context)[-(self.limit - n):] if self.limit > n else []
        bk = self.pipe.backend
        opts = {"temperature": float(kwargs.pop("temperature", 0.0)), **self.sample_opts}
        if opts.get("steps") is None:
            opts.update(self.steps(min(self.pipe.options().steps, n)))
        x = torch.tensor([ctx + bk.open_hole(n)])
        ids = self.pipe.denoise(x, seed=self.seed, **opts).ids[0].tolist()
        new = ids if bk.variable_length else ids[len(ctx):]
        if bk.special.eos in new:
            new = new[:new.index(bk.special.eos)]
        text = self.pipe.tokenizer.decode(new, skip_special_tokens=True)
        if bk.variable_length and text.startswith(context.strip()):
            text = text[len(context.strip()):]
        for stop in until:
            if stop and stop in text:
                text = text[:text.index(stop)]
        return text


def main(argv: Optional[list[str]] = None) -> int:
    """lm_eval's command line with the textdiff model registered; a TextdiffError is one line on exit code 2."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        cli_evaluate()
    except TextdiffError as e:
        print(f"textdiff: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
