"""Length distributions: the tokens per sequence of a split beside those of a run's samples (for back-ends whose
samples choose their own length, e.g. edit; a fixed-length back-end's samples all have the generated length)."""

from __future__ import annotations

import torch

from textdiff.errors import TextdiffError


def length_histograms(data_lengths: list[int], sample_lengths: list[int], bin_width: int = 1) -> dict:
    """Both normalised histograms on shared bins [lo, lo + bin_width), their means and their total variation
    distance TV = 1/2 sum_b |p_data(b) - p_samples(b)|."""
    if not data_lengths or not sample_lengths:
        raise TextdiffError("length histograms need at least one data and one sample length")
    top = max(max(data_lengths), max(sample_lengths)) // bin_width + 1
    hist = {}
    for name, lengths in (("data", data_lengths), ("samples", sample_lengths)):
        counts = torch.bincount(torch.tensor(lengths) // bin_width, minlength=top).double()
        hist[name] = (counts / counts.sum()).tolist()
    tv = 0.5 * sum(abs(p - q) for p, q in zip(hist["data"], hist["samples"]))
    return {"bins": [b * bin_width for b in range(top)], "bin_width": bin_width, "data": hist["data"],
            "samples": hist["samples"], "mean_data": sum(data_lengths) / len(data_lengths),
            "mean_samples": sum(sample_lengths) / len(sample_lengths), "tv": tv,
            "n_data": len(data_lengths), "n_samples": len(sample_lengths)}


def format_histograms(report: dict, width: int = 30) -> str:
    """The two histograms as text, one row per non-empty bin: `lo | data bar | samples bar`."""
    peak = max(max(report["data"]), max(report["samples"])) or 1.0
    lines = [f"tokens  {'data':<{width}}  samples   (TV {report['tv']:.3f}; means {report['mean_data']:.1f} vs "
             f"{report['mean_samples']:.1f})"]
    for lo, p, q in zip(report["bins"], report["data"], report["samples"]):
        if p or q:
            lines.append(f"{lo:>6}  {'#' * round(width * p / peak):<{width}}  {'#' * round(width * q / peak)}")
    return "\n".join(lines)


def length_report(pipe, num_samples: int = 64, split: str = "validation", seed: int = 0, bin_width: int = 4,
                  **opts) -> dict:
    """Tokens per sequence (the counted non-[PAD] ones, [EOS] included) of `split` against those of num_samples
    unconditional samples of the run; `opts` go to `pipe.generate`."""
    from textdiff.data import build_sequences, load_texts, source_name

    if pipe.recipe.data.source_field:
        raise TextdiffError("length report: this run is seq2seq; it compares unconditional samples with the data")
    seqs = build_sequences(pipe.recipe.data, pipe.tokenizer, load_texts(pipe.recipe.data)[split])
    if not len(seqs):
        raise TextdiffError(f"length report: split '{split}' of {source_name(pipe.recipe.data)} is empty")
    data = (seqs.loss_mask & (seqs.ids != pipe.backend.special.pad)).sum(1).tolist()
    gen = pipe.generate(num_samples, seed=seed, **opts)
    samples = (gen.ids != pipe.backend.special.pad).sum(1).tolist()
    return length_histograms(data, samples, bin_width)
