"""BLEU and ROUGE-L of a seq2seq run on a split: one output per distinct source, scored against every reference
of that source (E2E: ~7 sentences per MR), through the local `evaluate` modules; optionally swept over the
classifier-free guidance scale, and beside the copy-the-input baseline (KJV -> ASV)."""

from __future__ import annotations

import time

from textdiff.errors import TextdiffError

SEQ2SEQ_METRICS = ("bleu", "rouge")
SETTINGS = ("sampler", "steps", "guidance_scale", "mbr", "temperature", "block_size", "threshold", "joint_edits")
"""The sampling settings recorded with each row (those the row's sampler takes)."""


def grouped_references(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    """{source: [its references...]} in first-seen order."""
    groups: dict[str, list[str]] = {}
    for source, target in pairs:
        groups.setdefault(source, []).append(target)
    return groups


def score(predictions: list[str], references: list[list[str]], metrics: list[str]) -> dict:
    """{metric: {"score", "signature", ...}} for each of metrics (bleu, rouge)."""
    from textdiff.evaluation.metrics import load

    return {m: load(m).compute(predictions=predictions, references=references) for m in metrics}


def unchanged(predictions: list[str], sources: list[str]) -> float:
    """The percentage of outputs identical to their source (whitespace at the ends aside): how much of a revision
    model's BLEU is the copy baseline's."""
    same = sum(p.strip() == s.strip() for p, s in zip(predictions, sources, strict=True))
    return 100.0 * same / max(len(sources), 1)


def seq2seq_eval(pipe, metrics: list[str], split: str = "test", max_sources: int = 0, seed: int = 0,
                 guidance_scales: tuple[float, ...] = (), copy_baseline: bool = False, sample_opts=None,
                 batch_size: int = 64, echo=print, progress: bool = True) -> dict:
    from textdiff.data import load_texts, source_name

    if not pipe.recipe.data.source_field:
        raise TextdiffError(f"--metrics {','.join(metrics)}: this run is not seq2seq (no data.source_field)")
    groups = grouped_references(load_texts(pipe.recipe.data)[split])
    if not groups:
        raise TextdiffError(f"split '{split}' of {source_name(pipe.recipe.data)} has no (source, target) pairs")
    sources = list(groups)[:max_sources] if max_sources else list(groups)
    refs = [groups[s] for s in sources]
    out = {"split": split, "n_sources": len(sources), "n_references": sum(map(len, refs)), "rows": []}
    opts = {k: v for k, v in (sample_opts or {}).items() if v is not None and k != "length"}
    if copy_baseline:
        out["copy"] = score(sources, refs, metrics)
        _echo_row(echo, "copy-the-input", out["copy"], len(sources))
    for w in guidance_scales or (opts.pop("guidance_scale", None),):
        run_opts = {**opts, **({"guidance_scale": w} if w is not None else {})}
        start = time.perf_counter()
        gen = pipe.translate(sources, seed=seed, batch_size=batch_size, progress=progress, **run_opts)
        settings = pipe.options(**{k: v for k, v in run_opts.items() if k in SETTINGS})
        flat = settings.flat()
        row = {"settings": {k: flat[k] for k in SETTINGS if k in flat},
               "seconds": time.perf_counter() - start, **score(gen.texts, refs, metrics),
               "unchanged": unchanged(gen.texts, sources), "predictions": gen.texts}
        out["rows"].append(row)
        _echo_row(echo, f"w={settings.guidance_scale:g}, {settings.sampler}, {settings.steps} steps, mbr {settings.mbr}",
                  row, len(sources))
        if copy_baseline:
            echo(f"unchanged: {row['unchanged']:.1f}% of the outputs equal their source")
    return out


def _echo_row(echo, what: str, row: dict, n: int) -> None:
    for m in SEQ2SEQ_METRICS:
        if m in row:
            echo(f"{m}: {row[m]['score']:.2f} ({what}; {n} sources) {row[m]['signature']}")


def markdown_rows(s: dict) -> list[str]:
    lines = []
    rows = ([("copy-the-input", s["copy"])] if "copy" in s else []) + [
        (", ".join(f"{k}={v}" for k, v in r["settings"].items()), r) for r in s["rows"]]
    for what, r in rows:
        for m in SEQ2SEQ_METRICS:
            if m in r:
                lines.append(f"| {m} ({s['split']}) | {r[m]['score']:.2f} | {what}; {s['n_sources']} sources, "
                             f"{s['n_references']} references; {r[m]['signature']} |")
        if "copy" in s and "unchanged" in r:
            lines.append(f"| unchanged ({s['split']}) | {r['unchanged']:.1f}% | {what}; outputs equal to their "
                         "source |")
    return lines
