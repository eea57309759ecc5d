"""The README.md model card of a run directory (the hub's convention): what it is, how to use it, the recipe, the
data and its licence, the metrics at the end of training and the command that made it.

    write_model_card(run_dir)          # run_dir/README.md, atomically; called when training ends and by `textdiff push`

Everything comes from the run directory itself (config.json, metrics.jsonl, model.safetensors' header) and, for a
corpus the project prepares, its data card under data/<corpus>/README.md.
"""

from __future__ import annotations

import json
import shlex
import struct
import sys
from pathlib import Path
from typing import Optional

import yaml

from textdiff.errors import TextdiffError

DATA_CARDS = Path(__file__).resolve().parents[1] / "data"
"""The repository's data cards (absent from an installed wheel: then the card says where the data came from)."""
MADE_BY = "Made by:"
PIPELINE_TAGS = {True: "text-generation", False: "fill-mask"}
"""The hub's task tag: a causal baseline generates text; the diffusion back-ends fill masks."""


def write_model_card(run_dir: str | Path, command: Optional[str] = None) -> Path:
    """Write run_dir/README.md from the run's own files; `command` defaults to the current `textdiff train` command
    line when this process is one, else to training the recipe shown in the card."""
    from textdiff.checkpoint import atomic_write_bytes
    from textdiff.rundir import read_config as read_run_config

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    text = model_card(run_dir, cfg, command or current_command() or previous_command(run_dir / "README.md"))
    atomic_write_bytes(run_dir / "README.md", text.encode())
    return run_dir / "README.md"


def current_command() -> Optional[str]:
    """This process's command line when it is `textdiff train ...` (a console script or `python -m textdiff`)."""
    argv = sys.argv
    if len(argv) > 1 and argv[1] == "train" and Path(argv[0]).name in ("textdiff", "__main__.py"):
        return shlex.join(["textdiff", *argv[1:]])
    return None


def previous_command(card: Path) -> Optional[str]:
    """The command an earlier card of this run recorded (a card rewritten later, e.g. by `textdiff push`)."""
    if not card.is_file():
        return None
    line = next((ln for ln in card.read_text().splitlines() if ln.startswith(MADE_BY)), "")
    return line[len(MADE_BY):].strip().strip("`") or None


def model_card(run_dir: Path, cfg: dict, command: Optional[str]) -> str:
    from textdiff.noising import BACKENDS

    recipe, backend = cfg["recipe"], cfg.get("backend", cfg["recipe"].get("backend", {}).get("name"))
    causal = BACKENDS[backend].causal
    front = {"library_name": "textdiff", "license": "other", "pipeline_tag": PIPELINE_TAGS[causal],
             "tags": ["textdiff", "text-diffusion" if not causal else "autoregressive-baseline", f"{backend}"]}
    params = parameter_count(run_dir / "model.safetensors")
    name = recipe.get("name", run_dir.name)
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {name}", "",
             f"A {describe(backend, causal)} trained with textdiff: "
             f"{params / 1e6:.2f}M parameters, sequences of {cfg['max_len']} tokens, a "
             f"{recipe.get('tokenizer', {}).get('kind', '?')} tokenizer of {cfg['vocab_size']} tokens."
             + (f" Distilled: {json.dumps(cfg['distillation'])}." if cfg.get("distillation") else ""), ""]
    lines += usage(name, recipe, causal) + metrics_section(run_dir / "metrics.jsonl", causal)
    lines += data_section(recipe.get("data", {})) + training_section(recipe, command)
    return "\n".join(lines) + "\n"


def describe(backend: str, causal: bool) -> str:
    return f"left-to-right autoregressive baseline ({backend})" if causal else f"{backend} text-diffusion model"


def usage(name: str, recipe: dict, causal: bool) -> list[str]:
    infill = recipe.get("sample", {}).get("infill") or "The [MASK:3] of the [MASK]"
    seq2seq = recipe.get("data", {}).get("source_field")
    call = ('pipe.translate(["a source text"])' if seq2seq else
            "pipe.generate(4)" if causal else f"pipe.infill({infill!r})")
    return ["## Use", "", "```python", "from textdiff import TextDiffusionPipeline", "",
            f'pipe = TextDiffusionPipeline.from_pretrained("{name}")   # this folder, or its hub repository',
            f"print({call}.texts)", "```", "",
            "From the command line: `textdiff sample RUN -n 4 --show`"
            + ("" if causal or seq2seq else f", `textdiff infill RUN {shlex.quote(infill)}`")
            + ", `textdiff serve RUN` (an HTTP API and a playground page). With transformers, after `import textdiff`: "
              "`AutoModel.from_pretrained(RUN)` (the denoiser) and `AutoTokenizer.from_pretrained(RUN)`.", ""]


def metrics_section(path: Path, causal: bool) -> list[str]:
    """The last training loss and validation number of metrics.jsonl."""
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []
    train = next((r for r in reversed(rows) if "loss" in r), None)
    val = next((r for r in reversed(rows) if "val_nll" in r or "val_loss" in r), None)
    out = ["## Metrics at the end of training", ""]
    if train is None and val is None:
        return out + ["No metrics were recorded (metrics.jsonl is missing or empty).", ""]
    out += ["| step | metric | value |", "|---|---|---|"]
    if train is not None:
        out.append(f"| {train['step']} | training loss (nats/token) | {train['loss']:.4f} |")
        if "tok_per_s" in train:
            out.append(f"| {train['step']} | training throughput (tokens/s) | {train['tok_per_s']:,.0f} |")
    if val is not None and "val_nll" in val:
        kind = "exact NLL" if causal else "ELBO bound"
        out.append(f"| {val['step']} | validation nats/token ({kind}) | {val['val_nll']:.4f} |")
        out.append(f"| {val['step']} | validation perplexity | {val['val_ppl']:.2f} |")
    elif val is not None:
        out.append(f"| {val['step']} | validation loss (no likelihood bound for this back-end) | {val['val_loss']:.4f} |")
    return out + ["", "Validation numbers are on the first `train.eval_batches` batches of the validation split; "
                      "`textdiff eval RUN` gives the test split's.", ""]


def data_section(data: dict) -> list[str]:
    """Where the data came from and its licence: the project's data card when it has one for the corpus."""
    path = str(data.get("path", ""))
    card = data_card(data)
    where = f"`data.path: {path}`" if path else f"`data.splits: {data.get('splits')}`"
    out = ["## Data", "", f"{where}, field `{data.get('text_field')}`"
           + (f" (source `{data['source_field']}`)" if data.get("source_field") else "")
           + (f", splits from `{data['split_field']}`" if data.get("split_field") else "") + ".", ""]
    if card is not None:
        licence = card_field(card.read_text(), "Licence") or "see the data card"
        out += [f"Data card: textdiff's `data/{card.parent.name}/README.md`.", "", f"Licence of the data: {licence}", ""]
    elif Path(path).suffix:
        out += ["Licence of the data: not recorded (a local file); state it here before sharing this model.", ""]
    else:
        out += [f"Licence of the data: see the dataset's card, https://huggingface.co/datasets/{path}", ""]
    return out


def card_field(text: str, name: str) -> Optional[str]:
    """A `- **Name:** ...` bullet of a data card, its continuation lines joined."""
    lines, found = [], False
    for ln in text.splitlines():
        if ln.startswith("- **"):
            found = ln.startswith(f"- **{name}")
            if found:
                lines.append(ln.split(":**", 1)[-1].strip())
        elif found and ln.startswith("  "):
            lines.append(ln.strip())
        else:
            found = False
    return " ".join(lines) or None


def data_card(data: dict) -> Optional[Path]:
    names = [data.get("prepare"), Path(str(data.get("path", ""))).parts[0] if data.get("path") else None]
    for name in names:
        if name and (DATA_CARDS / str(name) / "README.md").is_file():
            return DATA_CARDS / str(name) / "README.md"
    return None


def training_section(recipe: dict, command: Optional[str]) -> list[str]:
    how = (f"{MADE_BY} `{command}`" if command else
           "Made by: `textdiff train recipe.yaml`, with the recipe below saved as recipe.yaml")
    body = {k: v for k, v in recipe.items() if k != "out_dir"}
    return ["## Training", "", how, "", "The recipe (config.json keeps it whole):", "", "```yaml",
            yaml.safe_dump(body, sort_keys=False).strip(), "```", ""]


def parameter_count(path: Path) -> int:
    """Sum of the tensors' elements, read from the safetensors header (no weights loaded, no torch)."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
    except (OSError, struct.error, ValueError):
        raise TextdiffError(f"{path}: not a readable safetensors file (the run has no weights yet?)") from None
    total = 0
    for name, entry in header.items():
        if name != "__metadata__":
            n = 1
            for d in entry["shape"]:
                n *= d
            total += n
    return total
