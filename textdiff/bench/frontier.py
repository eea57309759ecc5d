"""The sampling frontier: for each run, each sampler of its back-end x each step count -> judge perplexity,
unigram entropy, tokens/s and wall time; an AR run is one point (KV-cache sampling) drawn as the reference line,
and real test text as a second one. Plots quality against wall time, one curve per (run, sampler).

With judge "none" the samples are drawn and timed but not scored: each point keeps its texts and token ids (and
the real test text likewise), and `judge_frontier` scores them later, on another machine if need be (sample on a
GPU box, judge where the judge LM is installed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from textdiff.errors import TextdiffError

STEPS = (4, 8, 16, 32, 64, 128, 256)
DEFERRED = "none"
"""The judge name that defers scoring to `judge_frontier`."""
SCORED = ("genppl", "entropy", "dist_2", "self_bleu", "judge_tokens")


def _point(run: str, pipe, g, stats=None, options: Optional[dict] = None) -> dict:
    """One frontier point from a `Generated` and its judge statistics (None: deferred, texts and ids kept)."""
    generated = sum(len(i) for i in g.ids)
    p = {"run": run, "backend": pipe.backend.name, "causal": pipe.backend.causal, "sampler": g.sampler,
         "steps": g.steps, "tokens_per_s": g.tokens_per_s, "wall_s": g.sample_seconds,
         "options": _options_text(options), "block_size": pipe.model.cfg.block_size, "nfe": g.nfe,
         "tokens_per_call": generated / len(g.ids) / max(g.nfe, 1)}
    if stats is None:
        return {**p, **dict.fromkeys(SCORED), "texts": g.texts, "ids": g.ids}
    return {**p, **_scores(stats)}


def _scores(s) -> dict:
    return {"genppl": s.ppl, "entropy": s.entropy, "dist_2": s.dist_2, "self_bleu": s.self_bleu,
            "judge_tokens": s.n_judge_tokens}


def run_steps(spec: str, default: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    """'RUN@8,16' -> (RUN, (8, 16)): step counts for one run (a distilled student at its own steps); a plain RUN
    takes the default ones."""
    head, sep, tail = spec.rpartition("@")
    counts = tail.split(",")
    if not (sep and head and all(c.strip().isdigit() for c in counts)):
        return spec, default
    if min(int(c) for c in counts) < 1:
        raise TextdiffError(f"{spec}: step counts must be > 0")
    return head, tuple(dict.fromkeys(int(c) for c in counts))  # each once, in the order given


def run_spec(spec: str, default: tuple[int, ...]) -> tuple[str, tuple[int, ...], dict]:
    """'RUN#cache=dual,block_size=16@8,16' -> (RUN, (8, 16), {"cache": "dual", "block_size": 16}): sampler options
    for one run's points (a Fast-dLLM cache beside the same run without it); `#...` and `@...` are optional."""
    import yaml

    run, counts = run_steps(spec, default)
    run, sep, tail = _split_options(run)
    options = {}
    for item in filter(None, tail.split(",")) if sep else ():
        key, eq, value = item.partition("=")
        if not (eq and key.strip()):
            raise TextdiffError(f"{spec}: options after # are KEY=VALUE,KEY=VALUE (e.g. RUN#cache=dual,block_size=16)")
        options[key.strip()] = yaml.safe_load(value)
    _check_options(spec, options)
    return run, counts, options


def _split_options(run: str) -> tuple[str, str, str]:
    """RUN#OPTIONS -> (RUN, '#', OPTIONS), cut at the first '#' whose left side is a directory (else the first '#'):
    a run directory whose own name holds '#' is taken whole, with or without options after it."""
    if "#" not in run or Path(run).is_dir():
        return run, "", ""
    cuts = [i for i, c in enumerate(run) if c == "#"]
    cut = next((i for i in cuts if Path(run[:i]).is_dir()), cuts[0])
    return run[:cut], "#", run[cut + 1:]


def _check_options(spec: str, options: dict) -> None:
    """Each option is a declared sampling option with a value of its type that passes its check (a sampler that
    does not take it skips the point; a value no sampler could take stops the frontier before it samples)."""
    from textdiff.options import convert
    from textdiff.sampling import all_options
    from textdiff.sampling.options import choices_message

    declared = all_options()
    for key, value in options.items():
        if key not in declared:
            raise TextdiffError(f"{spec}: {key} is not a sampling option; the options: {', '.join(declared)}")
        kind, option = declared[key][:2]
        try:  # the recipe's type check (ints for floats, nothing else coerces)
            convert(value, kind, key, spec)
        except TextdiffError:
            message = choices_message(option, kind, key, value) or f"{key}={value!r} must be a {kind.__name__}"
            raise TextdiffError(f"{spec}: {message}") from None
        try:
            option.validate(key, value)
        except ValueError as e:
            raise TextdiffError(f"{spec}: {e}") from None


def _options_text(options: Optional[dict]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((options or {}).items()))


def _warm_up(pipe, grid) -> None:
    """One untimed call, so the first timed point does not pay for allocation and kernel selection."""
    try:
        pipe.generate(1, sampler=grid[0][0], steps=min((n for _, n in grid if n), default=None))
    except TextdiffError:
        pass


def frontier(runs: list[str], steps: tuple[int, ...] = STEPS, num_samples: int = 16, seed: int = 0,
             judge: Optional[str] = None, device: str = "cpu", samplers: Optional[list[str]] = None,
             echo=print, repeats: int = 1) -> dict:
    """Every (run, sampler, steps) point; combinations a sampler refuses (e.g. more steps than tokens) are
    listed under "skipped" with the reason. A run given as 'RUN@8,16' is sampled at those step counts only. With
    repeats > 1 each point is drawn that many times (the same seed: the same samples) and its wall time is the
    median, the runs' times kept in `wall_runs` (a shared CPU's timings vary by a third from one run to the next)."""
    from textdiff.evaluation.genppl import generate_for_judge, reference_texts, text_stats
    from textdiff.evaluation.judge import load_judge
    from textdiff.evaluation.report import environment
    from textdiff.pipeline import TextDiffusionPipeline

    from tqdm.auto import tqdm

    j = None if judge == DEFERRED else load_judge(judge, device)
    points, skipped, references = [], [], {}
    specs = [run_spec(r, tuple(steps)) for r in runs]
    for spec, (run, _, _) in zip(runs, specs):  # every run before any is sampled
        if not Path(run).is_dir():
            hint = " (RUN@8,16: step counts after @, last; RUN#key=value: options before them)" if "@" in spec else ""
            raise TextdiffError(f"{spec}: run directory {run} not found{hint}")
    for run, counts, options in tqdm(specs, desc="frontier", unit="run", leave=False):
        pipe = TextDiffusionPipeline.from_pretrained(run, device=device)
        data_key = str(pipe.recipe.data.path)
        if data_key not in references:
            texts, ids = reference_texts(pipe, num_samples)
            references[data_key] = {"texts": texts, "ids": ids} if j is None else text_stats(texts, ids, j).__dict__
        grid = [(pipe.backend.default_sampler, None)] if pipe.backend.causal else \
            [(s, n) for s in pipe.backend.samplers if not samplers or s in samplers for n in counts]
        _warm_up(pipe, grid)
        for sampler, n in grid:
            try:
                g = generate_for_judge(pipe, num_samples, seed, sampler=sampler, steps=n, **options)
            except TextdiffError as e:
                skipped.append({"run": run, "sampler": sampler, "steps": n, "reason": str(e)})
                echo(f"skip {run} {sampler} {n}: {e}")
                continue
            g, walls = _retimed(pipe, g, repeats, num_samples, seed, sampler=sampler, steps=n, **options)
            points.append({**_point(run, pipe, g, None if j is None else text_stats(g.texts, g.ids, j), options),
                           "wall_runs": walls})
            _echo_point(echo, points[-1])
    return {"runs": [r for r, _, _ in specs], "steps": sorted({n for _, ns, _ in specs for n in ns}),
            "num_samples": num_samples, "seed": seed, "repeats": repeats,
            "judge": j.name if j else DEFERRED, "judge_tokenizer": j.tokenizer if j else None,
            "references": references, "points": points, "skipped": skipped, **environment(device)}


def _retimed(pipe, g, repeats: int, num_samples: int, seed: int, **opts):
    """g with the median wall time (and its tokens/s) of `repeats` draws of it, and every draw's seconds."""
    import dataclasses
    import statistics

    from textdiff.evaluation.genppl import timed_generate

    walls = [g.sample_seconds] + [timed_generate(pipe, num_samples, seed, **opts)[1] for _ in range(repeats - 1)]
    median = statistics.median(walls)
    return dataclasses.replace(g, sample_seconds=median, tokens_per_s=g.tokens_per_s * g.sample_seconds / median), walls


def _echo_point(echo, p: dict) -> None:
    scored = f"genppl {p['genppl']:.1f}, entropy {p['entropy']:.3f}, " if p["genppl"] is not None else ""
    echo(f"{p['run']} {p['sampler']} {p['steps']} steps: {scored}{p['wall_s']:.2f} s, {p['tokens_per_s']:,.0f} tok/s")


def check_frontier(res, where) -> dict:
    """A frontier.json's shape (a mapping with a list of point mappings and a mapping of reference mappings, texts
    as lists of strings), so that a damaged file is a one-line error rather than an AttributeError mid-way."""
    ok = isinstance(res, dict) and isinstance(res.get("points"), list) and isinstance(res.get("references"), dict)
    entries = [*res["points"], *res["references"].values()] if ok else []
    ok = ok and all(isinstance(e, dict) for e in entries)
    ok = ok and all(isinstance(e.get("texts", []), list) and isinstance(e.get("ids", []), list)
                    and all(isinstance(t, str) for t in e.get("texts", [])) for e in entries)
    if not ok:
        raise TextdiffError(f"{where}: not a frontier.json written by `textdiff bench frontier` (expected \"points\": "
                            "a list and \"references\": a mapping, each entry a mapping with lists of texts and ids)")
    return res


def judge_frontier(res: dict, judge: Optional[str] = None, device: str = "cpu", echo=print) -> dict:
    """Score a frontier drawn with judge "none": every point and reference that still holds its texts gets the
    judge's perplexity and the diversity statistics (its texts and ids are then dropped); the rest is kept."""
    from textdiff.evaluation.genppl import text_stats
    from textdiff.evaluation.judge import load_judge

    if res.get("judge") not in (DEFERRED, None):
        raise TextdiffError(f"this frontier was already scored by {res['judge']}; only a frontier drawn with "
                            f"--judge {DEFERRED} can be judged afterwards")
    j = load_judge(judge, device)
    for data, r in res["references"].items():
        if "texts" in r:
            res["references"][data] = text_stats(r["texts"], r["ids"], j).__dict__
    for p in res["points"]:
        if "texts" in p:
            p.update(_scores(text_stats(p.pop("texts"), p.pop("ids"), j)))
            _echo_point(echo, p)
    return {**res, "judge": j.name, "judge_tokenizer": j.tokenizer}


def markdown(res: dict) -> list[str]:
    from textdiff.evaluation.report import env_lines, markdown_table

    timing = f"; wall time the median of {res['repeats']} draws" if res.get("repeats", 1) > 1 else ""
    judged = (f"judge {res['judge']} (perplexity per token of its {res['judge_tokenizer']})"
              if res["judge"] != DEFERRED else "not judged yet")
    lines = [f"Sampling frontier: {res['num_samples']} samples per point, seed {res['seed']}{timing}; {judged}; "
             "entropy in nats over the run's token ids.",
             *env_lines(res), ""]
    cols = ["run", "backend", "sampler", "steps", "wall_s", "tokens_per_s", "genppl", "entropy", "dist_2", "self_bleu"]
    if any("nfe" in p for p in res["points"]):  # frontiers drawn since model calls are counted
        cols[4:4] = ["options", "block_size", "nfe", "tokens_per_call"]
    lines += markdown_table(res["points"], cols)
    for data, r in res["references"].items():
        if "ppl" not in r:  # drawn with judge "none": not scored yet
            continue
        lines.append(f"\nReal test text of {data} ({res['num_samples']} sequences): genppl {r['ppl']:.2f}, "
                     f"entropy {r['entropy']:.3f}, dist-2 {r['dist_2']:.3f}, self-BLEU {r['self_bleu']:.2f}.")
    lines += [f"\nSkipped: {s['run']} {s['sampler']} {s['steps']} steps ({s['reason']})" for s in res["skipped"]]
    return lines


def _curves(points: list[dict]) -> dict[str, list[dict]]:
    curves: dict[str, list[dict]] = {}
    for p in points:
        extra = f" [{p['options']}]" if p.get("options") else ""
        curves.setdefault(f"{Path(p['run']).name}: {p['backend']} / {p['sampler']}{extra}", []).append(p)
    return curves


def plot(res: dict, out: Path) -> None:
    """Judge perplexity and entropy against wall time (log-log), one curve per (run, sampler); the AR runs and
    real text as horizontal reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    finite = [p for p in res["points"] if p["genppl"] is not None and math.isfinite(p["genppl"])
              and math.isfinite(p["entropy"]) and p["wall_s"] > 0]
    for (label, pts), color in zip(_curves(finite).items(), plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4):
        pts = sorted(pts, key=lambda p: p["wall_s"])
        for ax, key in zip(axes, ("genppl", "entropy")):
            if pts[0]["causal"]:  # an AR run: one point and a reference line
                ax.axhline(pts[0][key], color=color, ls="--", lw=1)
                ax.plot([pts[0]["wall_s"]], [pts[0][key]], "*", color=color, ms=12, label=f"{label} (KV cache)")
                continue
            ax.plot([p["wall_s"] for p in pts], [p[key] for p in pts], "o-", color=color, label=label)
            for p in pts:
                ax.annotate(str(p["steps"]), (p["wall_s"], p[key]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for r in (r for r in res["references"].values() if "ppl" in r):
        axes[0].axhline(r["ppl"], color="black", ls=":", lw=1, label="real test text")
        axes[1].axhline(r["entropy"], color="black", ls=":", lw=1, label="real test text")
    for ax, ylabel in zip(axes, ("judge perplexity (lower is better)", "unigram entropy (nats)")):
        ax.set_xscale("log")
        ax.set_xlabel(f"wall time for {res['num_samples']} samples (s)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Sampling frontier (numbers: steps) — {res['machine']}", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    from textdiff.checkpoint import atomic_write_figure

    atomic_write_figure(out, fig, dpi=110)
    plt.close(fig)
