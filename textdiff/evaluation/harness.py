"""`textdiff eval`: every asked metric on one run, as one JSON object and one markdown report.

A back-end without a likelihood bound (has_bound False) asked for `ppl` alone is an error; asked for several
metrics, its ppl row reads "n/a" with the reason and the others are computed.
"""

from __future__ import annotations

from typing import Optional

from textdiff.errors import TextdiffError
from textdiff.evaluation.perplexity import ppl_text, stderr_text
from textdiff.evaluation.report import env_lines, environment
from textdiff.evaluation.seq2seq import SEQ2SEQ_METRICS, markdown_rows, seq2seq_eval


def check_metrics(metrics: list[str], backend) -> None:
    if metrics and all(m == "ppl" for m in metrics) and not backend.has_bound:
        raise TextdiffError(f"--metrics ppl: the {backend.name} back-end has no likelihood bound; "
                            f"use --metrics genppl (judge perplexity)")


def run_eval(pipe, metrics: list[str], run: str, *, split: str = "test", draws: int = 32, batch_size: int = 32,
             max_sequences: int = 0, seed: int = 0, num_samples: int = 16, judge: Optional[str] = None,
             reference: bool = True, sample_opts: Optional[dict] = None, guidance_scales: tuple = (),
             copy_baseline: bool = False, classifier=None, classifier_scales: tuple = (0.0, 1.0, 3.0),
             echo=print) -> dict:
    """Compute `metrics` on `pipe`; returns the JSON-able result (with the environment), echoing a line per metric."""
    from textdiff.evaluation.genppl import generative_perplexity
    from textdiff.evaluation.perplexity import perplexity

    check_metrics(metrics, pipe.backend)
    result = {"run": run, "backend": pipe.backend.name, "seed": seed, **environment(str(pipe.device))}
    if "ppl" in metrics:
        if pipe.backend.has_bound:
            r = perplexity(pipe, split, draws, batch_size, max_sequences, seed)
            result["ppl"] = r.to_dict()
            echo(r.line())
        else:
            result["ppl"] = {"available": False, "reason": f"the {pipe.backend.name} back-end has no likelihood bound"}
            echo(f"ppl: n/a ({result['ppl']['reason']})")
    if "genppl" in metrics:
        g = generative_perplexity(pipe, num_samples, seed, judge, reference, **(sample_opts or {}))
        result["genppl"] = g.to_dict()
        echo(g.line())
    if "control" in metrics:
        from textdiff.classifier import control_success

        if classifier is None:
            raise TextdiffError("--metrics control: give the guiding classifier with --classifier DIR")
        c = control_success(pipe, classifier, list(classifier_scales), num_samples, seed, **(sample_opts or {}))
        result["control"] = c
        for row in c["rows"]:
            echo(f"control ({c['label']}), scale {row['scale']:g}: {row['success']:.1%} of samples name their class "
                 f"({', '.join(f'{k} {v:.0%}' for k, v in row['per_class'].items())}); dist-2 {row['dist_2']:.3f}")
    if "lengths" in metrics:
        from textdiff.evaluation.lengths import format_histograms, length_report

        opts = {k: v for k, v in (sample_opts or {}).items() if k not in ("mbr", "guidance_scale")}
        result["lengths"] = length_report(pipe, num_samples, split, seed, **opts)
        echo(format_histograms(result["lengths"]))
    wanted = [m for m in SEQ2SEQ_METRICS if m in metrics]
    if wanted:
        result["seq2seq"] = seq2seq_eval(pipe, wanted, split, max_sequences, seed, guidance_scales, copy_baseline,
                                         sample_opts, batch_size, echo)
    return result


def _ppl_rows(p: dict) -> list[str]:
    if not p.get("available", True):
        return [f"| ppl | n/a | {p['reason']} |"]
    kind = "exact" if p["exact"] else f"ELBO bound, {p['time_draws']} time draws, ± Monte Carlo SE"
    se = stderr_text(p["exact"], p["stderr"])
    return [f"| ppl ({p['split']}) | {ppl_text(p['ppl'])} | {p['nats_per_token']:.4f}{se} nats/token ({kind}); "
            f"{p['n_tokens']:,} run tokens in {p['n_sequences']} sequences{_first(p)}; {p['nats_per_word']:.3f} nats/word |"]


def _first(p: dict) -> str:
    return "" if p.get("every_token", True) else " (first tokens not scored: an AR run from before backend.start_token)"


def _genppl_rows(g: dict) -> list[str]:
    s, r = g["samples"], g["reference"]

    def pair(key, fmt):
        return f"{fmt.format(s[key])}" + (f" (reference {fmt.format(r[key])})" if r else "")

    return [f"| genppl | {pair('ppl', '{:.2f}')} | judge {g['judge']}; {s['n_judge_tokens']:,} tokens of the "
            f"{g['judge_tokenizer']}, token-weighted over all samples; {s['nats_per_word']:.3f} nats/word |",
            f"| unigram entropy (nats) | {pair('entropy', '{:.3f}')} | the run's token ids, all samples pooled; "
            f"reference: as many test sequences |",
            f"| dist-1 / dist-2 / dist-3 | {s['dist_1']:.3f} / {s['dist_2']:.3f} / {s['dist_3']:.3f} | whitespace words, pooled |",
            f"| self-BLEU | {pair('self_bleu', '{:.2f}')} | each sample vs the others; {s['self_bleu_signature']} |",
            f"| sampling | {g['tokens_per_s']:,.0f} tok/s | {g['num_samples']} x {g['length']} tokens in "
            f"{g['sample_seconds']:.2f} s |"]


def _control_rows(c: dict) -> list[str]:
    targets = list(c["rows"][0]["per_class"])
    acc = c["classifier"].get("validation_accuracy", {})
    lines = ["", f"Control success: {c['num_samples']} samples per class steered toward it by the classifier of "
             f"`{c['label']}` (validation accuracy at t = {' / '.join(acc)}: "
             f"{' / '.join(f'{a:.2f}' for a in acc.values())}); success = the sample names the class value "
             f"(whole words, any case). Scale 0 is unguided sampling (the base rate).", "",
             "| guidance scale | success | " + " | ".join(targets) + " | dist-2 | entropy |",
             "|---|---|" + "---|" * len(targets) + "---|---|"]
    for r in c["rows"]:
        lines.append(f"| {r['scale']:g} | {r['success']:.1%} | " + " | ".join(f"{r['per_class'][t]:.0%}" for t in targets)
                     + f" | {r['dist_2']:.3f} | {r['entropy']:.3f} |")
    return lines


def markdown(result: dict) -> str:
    lines = [f"# textdiff eval: {result['run']} ({result['backend']})", "", *env_lines(result), "",
             "| metric | value | details |", "|---|---|---|"]
    if "ppl" in result:
        lines += _ppl_rows(result["ppl"])
    if "lengths" in result:
        r = result["lengths"]
        lines += [f"| length TV (data vs samples) | {r['tv']:.3f} | mean {r['mean_data']:.1f} tokens over {r['n_data']} "
                  f"sequences vs {r['mean_samples']:.1f} over {r['n_samples']} samples |"]
    if "genppl" in result:
        g = result["genppl"]
        lines += _genppl_rows(g)
        opts = ", ".join(f"{k}={v}" for k, v in g["settings"].items())
        lines += ["", f"Sampler settings: {opts}; {g['num_samples']} samples, seed {g['seed']}."]
    if "seq2seq" in result:
        lines += markdown_rows(result["seq2seq"])
    if "control" in result:
        lines += _control_rows(result["control"])
    if "ppl" in result and result["ppl"].get("available", True):
        lines += [f"Likelihood seed {result['seed']}."]
    if "lengths" in result:
        from textdiff.evaluation.lengths import format_histograms

        lines += ["", f"Tokens per sequence, data vs samples (bins of {result['lengths']['bin_width']}; bars scaled to "
                      "the largest bin):", "", "```", format_histograms(result["lengths"]), "```"]
    return "\n".join(lines) + "\n"
