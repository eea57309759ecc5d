"""`textdiff train | sample | infill | eval | prepare`. Bad input: one line on stderr, exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from textdiff.errors import TextdiffError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default prints the whole usage block)
        print(f"textdiff: error: {' '.join(message.split())} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be > 0")
        return value
    return parse


def _sampling_args(p):
    p.add_argument("--steps", type=_positive(int), help="denoising steps (default: the recipe's sample.steps)")
    p.add_argument("--sampler", help="sampler name (default: the recipe's; see textdiff.sampling.SAMPLERS)")
    p.add_argument("--temperature", type=float, help="softmax temperature on x0 logits (0 = greedy)")
    p.add_argument("--top-k", type=int, dest="top_k")
    p.add_argument("--top-p", type=float, dest="top_p")
    p.add_argument("--block-size", type=int, dest="block_size", help="semi-autoregressive blocks of this many tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="textdiff", description="Train, sample and evaluate text diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a recipe into a run directory")
    p.add_argument("recipe", help="YAML recipe")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=3e-4")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run directory")
    p.add_argument("--no-samples", action="store_true", help="do not print samples when training ends")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")

    p = sub.add_parser("sample", help="draw unconditional samples from a run")
    p.add_argument("run", help="run directory")
    p.add_argument("-n", type=int, default=4, help="number of samples")
    p.add_argument("--length", type=_positive(int), help="tokens per sample (default: the training length)")
    p.add_argument("--json", action="store_true", help="print one JSON object per sample")
    _sampling_args(p)

    p = sub.add_parser("infill", help="fill [MASK] / [MASK:n] holes in a text")
    p.add_argument("run", help="run directory")
    p.add_argument("text", help='template, e.g. "The [MASK:3] of the LORD [MASK] upon the waters"')
    p.add_argument("-n", type=int, default=1, help="number of fillings")
    _sampling_args(p)

    p = sub.add_parser("eval", help="evaluate a run")
    p.add_argument("run", help="run directory")
    p.add_argument("--metrics", default="ppl", help="comma-separated: ppl")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--draws", type=_positive(int), default=32, help="time draws per sequence for ELBO bounds")
    p.add_argument("--batch-size", type=_positive(int), default=32, dest="batch_size")
    p.add_argument("--max-sequences", type=int, default=0, dest="max_sequences", help="evaluate only the first N")
    p.add_argument("--out", help="also write the results as JSON here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")

    p = sub.add_parser("prepare", help="build a corpus from its public source into the cache")
    p.add_argument("corpus", choices=["bible"])
    return parser


def cmd_train(args) -> None:
    from textdiff.config import load_recipe
    from textdiff.training import train_recipe

    recipe = load_recipe(args.recipe, args.set)
    _check_device(args.device)
    if recipe.run_dir().exists() and not recipe.run_dir().is_dir():
        raise TextdiffError(f"{recipe.run_dir()}: the run directory (out_dir) exists and is not a directory")
    run_dir = train_recipe(recipe, resume=args.resume, device=args.device)
    from textdiff import distributed

    world = distributed.init_world(args.device)
    distributed.close_world(world)
    if args.no_samples or not world.is_main:  # under torchrun / accelerate launch, rank 0 prints the samples
        return
    from textdiff.pipeline import TextDiffusionPipeline

    pipe = TextDiffusionPipeline.from_pretrained(run_dir)
    if recipe.sample.num_samples:
        print(f"\n=== {recipe.sample.num_samples} samples ({pipe.options().sampler}, {recipe.sample.steps} steps) ===")
        for i, text in enumerate(pipe.generate(recipe.sample.num_samples, seed=recipe.train.seed).texts):
            print(f"[{i}] {text}")
    if recipe.sample.infill:
        print(f"\n=== infill ===\n{recipe.sample.infill}")
        for text in pipe.infill(recipe.sample.infill, seed=recipe.train.seed).texts:
            print(f"-> {text}")
    print(f"\nrun directory: {run_dir}")


def _check_device(device: str | None) -> None:
    if device is None:
        return
    import torch

    try:
        torch.empty(0, device=torch.device(device))
    except (RuntimeError, AssertionError, ValueError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise TextdiffError(f"--device {device!r} is not usable here ({reason}); use cpu or cuda") from None


def _sample_opts(args) -> dict:
    return {k: getattr(args, k) for k in ("steps", "sampler", "temperature", "top_k", "top_p", "block_size")}


def _check_opts(opts: dict) -> None:
    from textdiff.config import SampleConfig

    try:
        SampleConfig(**{k: v for k, v in opts.items() if v is not None})
    except ValueError as e:
        raise TextdiffError(str(e).replace("sample.", "--").replace("_", "-")) from None


def _sampling_pipeline(args):
    """Validate the sampling flags and the device, then load the run."""
    from textdiff.pipeline import TextDiffusionPipeline

    _check_opts(_sample_opts(args))
    _check_device(args.device)
    return TextDiffusionPipeline.from_pretrained(args.run, device=args.device)


def cmd_sample(args) -> None:
    pipe = _sampling_pipeline(args)
    out = pipe.generate(args.n, length=args.length, seed=args.seed, **_sample_opts(args))
    for i, text in enumerate(out.texts):
        print(json.dumps({"index": i, "text": text}) if args.json else f"[{i}] {text}")


def cmd_infill(args) -> None:
    pipe = _sampling_pipeline(args)
    for text in pipe.infill(args.text, num_samples=args.n, seed=args.seed, **_sample_opts(args)).texts:
        print(text)


def cmd_eval(args) -> None:
    from textdiff.evaluation import METRICS, perplexity
    from textdiff.pipeline import TextDiffusionPipeline

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise TextdiffError(f"--metrics {args.metrics!r}: unknown metric(s) {', '.join(unknown) or '(none)'}; "
                            f"available: {', '.join(METRICS)}")
    if args.max_sequences < 0:
        raise TextdiffError(f"--max-sequences {args.max_sequences} must be >= 0 (0: every sequence)")
    if args.out and (Path(args.out).is_dir() or not Path(args.out).parent.is_dir()):
        raise TextdiffError(f"--out {args.out}: is a directory or its folder does not exist; give a file path")
    _check_device(args.device)
    pipe = TextDiffusionPipeline.from_pretrained(args.run, device=args.device)
    result = perplexity(pipe, args.split, args.draws, args.batch_size, args.max_sequences, args.seed)
    print(result.line())
    if args.out:
        from textdiff.checkpoint import atomic_write_json

        atomic_write_json(Path(args.out), {"run": str(args.run), "ppl": result.to_dict()})


def cmd_prepare(args) -> None:
    from textdiff.corpora import prepared_path

    print(prepared_path(args.corpus))


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "infill": cmd_infill, "eval": cmd_eval, "prepare": cmd_prepare}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed on one line)
        return e.code if isinstance(e.code, int) else 0
    try:
        COMMANDS[args.command](args)
    except TextdiffError as e:
        print(f"textdiff: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("textdiff: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
