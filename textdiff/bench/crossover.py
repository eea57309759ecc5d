"""The data-constrained crossover (Prabhudesai et al. 2025, "Diffusion Beats Autoregressive in Data-Constrained
Settings"; Ni et al. 2025): recipes trained on one shared, optionally subsampled training split for a list of epoch
budgets, with the validation and test bound at each, the best early-stopped value of each recipe, and the epoch
budget where one overtakes the reference (the first causal recipe, the AR baseline, when there is one).

One run per recipe (and grid setting) serves every budget. The learning rate is held constant after warm-up
(train.min_lr_ratio = 1): training to E epochs is then the same computation as stopping a longer run at E epochs,
because the batch order and the noise are pure functions of the step (tests/test_crossover.py checks the weights
are equal). A decaying schedule depends on the budget, so it would need a run per budget; this benchmark does not
do that and its report says so. Each run trains from budget to budget by resuming its own checkpoint, so an
interrupted benchmark resumes without retraining the budgets it has (their results are in crossover.json).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from pathlib import Path
from typing import Optional

from textdiff.errors import TextdiffError

EPOCHS = (1, 4, 16, 64)
LIKE_FOR_LIKE = ("data", "tokenizer", "model.n_layer", "model.n_embd", "model.n_head", "model.mlp_ratio",
                 "model.positions", "model.tie_embeddings", "model.backbone", "train.batch_size")
"""What every run of one crossover shares (their backend, lr and regularisation may differ)."""
OWNED = ("name", "out_dir", "tokenizer.path", "data.train_sequences", "train.steps", "train.min_lr_ratio",
         "train.eval_every", "train.checkpoint_every", "train.keep_checkpoints", "sample.num_samples")
"""Keys the benchmark sets itself (refused in --set and --grid rather than silently overridden)."""
PLAN_KEYS = ("recipes", "overrides", "grid", "runs", "unique_tokens", "train_sequences", "steps_per_epoch",
             "tokenizer_sha", "draws", "eval_sequences")
"""What must match for crossover.json to be resumed (the epoch list may grow)."""
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def parse_epochs(text: str) -> list[float]:
    try:
        epochs = [float(e) for e in text.split(",")]
    except ValueError:
        raise TextdiffError(f"--epochs {text!r}: comma-separated positive numbers of epochs, e.g. 1,4,16,64") from None
    if not epochs or any(not (e > 0 and math.isfinite(e)) for e in epochs) or \
            any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise TextdiffError(f"--epochs {text!r}: the epoch budgets must be positive and increasing, e.g. 1,4,16,64")
    return [int(e) if e == int(e) else e for e in epochs]


def check_overrides(items: list[str], flag: str = "--set") -> None:
    for item in items:
        key = item.partition("=")[0].strip()
        if key in OWNED:
            raise TextdiffError(f"{flag} {key}: the crossover sets {key} itself; allowed are the other recipe keys "
                                f"(the benchmark owns {', '.join(OWNED)})")


def parse_grid(items: list[str]) -> list[dict]:
    """['model.dropout=0,0.1', 'train.weight_decay=0,0.1'] -> every combination, as override dicts."""
    combos: list[dict] = [{}]
    for item in items:
        key, sep, values = item.partition("=")
        key, values = key.strip(), [v.strip() for v in values.split(",")]
        if not sep or not key or not all(values):
            raise TextdiffError(f"--grid {item!r}: expected KEY=V1,V2 (e.g. model.dropout=0,0.1)")
        check_overrides([key], "--grid")
        if key in combos[0]:
            raise TextdiffError(f"--grid {key}: given twice; give its values once, comma-separated")
        if len(set(values)) < len(values):
            raise TextdiffError(f"--grid {item!r}: a value is given twice")
        combos = [{**c, key: v} for c in combos for v in values]
    return combos


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def check_like_for_like(recipes: list, where: list[str]) -> None:
    """Every run's recipe (`where` names each: its file and grid setting) shares LIKE_FOR_LIKE with the first."""
    first = recipes[0].to_dict()
    for recipe, what in zip(recipes[1:], where[1:]):
        other = recipe.to_dict()
        diff = [k for k in LIKE_FOR_LIKE if _get(first, k) != _get(other, k)]
        if diff:
            raise TextdiffError(f"{what} differs from {where[0]} in {', '.join(diff)}: a crossover compares recipes "
                                f"on the same data, tokenizer, model size and batch; make those equal")
    if recipes[0].model.backbone is not None:
        raise TextdiffError(f"{where[0]}: model.backbone is set; the crossover compares models trained from scratch "
                            f"on the repeated data (a pretrained backbone has seen other data)")
    if recipes[0].data.streaming:
        raise TextdiffError(f"{where[0]}: data.streaming=true; the crossover repeats the training split, so it needs "
                            f"it in memory (data.streaming: false)")


def setting_overrides(setting: dict) -> list[str]:
    """A grid setting {key: value} as --set overrides."""
    return [f"{k}={v}" for k, v in setting.items()]


def tokenizer_record(recipe) -> dict:
    """What a shared tokenizer is trained from: the recipe's data and tokenizer sections (as JSON reads them back)."""
    return json.loads(json.dumps({k: recipe.to_dict()[k] for k in ("data", "tokenizer")}, default=str))


def damaged(path: Path) -> TextdiffError:
    return TextdiffError(f"{path}: not a crossover.json written by `textdiff bench crossover` (or damaged); move it "
                         f"away or choose another --out-dir")


def read_state(path: Path):
    """crossover.json as JSON (checked against a plan by `resumed`)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise damaged(path) from None


def recipe_sha(recipe) -> str:
    return hashlib.sha256(json.dumps(recipe.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


TOKENIZER_RECORD = "crossover_tokenizer.json"
"""Beside the shared tokenizer: the data and tokenizer settings it was trained from."""


def _shared_tokenizer(recipe, folder: Path, train_texts: list):
    """The tokenizer every run uses and its folder: the recipe's tokenizer.path, else one trained once on the
    training split (saved by `plan` only once every check has passed). A folder's tokenizer is reused only when
    it was trained from the same data and tokenizer settings."""
    from textdiff.data import flat_texts
    from textdiff.tokenization import load_tokenizer, train_tokenizer

    if recipe.tokenizer.path:
        return load_tokenizer(recipe.tokenizer.path), Path(recipe.tokenizer.path)
    if (folder / "tokenizer.json").is_file():
        try:
            had = json.loads((folder / TOKENIZER_RECORD).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            had = None
        if had != tokenizer_record(recipe):
            raise TextdiffError(f"{folder} holds a tokenizer trained from other data or tokenizer settings; use "
                                f"another --runs, or delete {folder} and the runs beside it")
        return load_tokenizer(folder), folder
    return train_tokenizer(recipe.tokenizer, flat_texts(train_texts)), folder


def _runs(recipe_paths: list[str], overrides: list[str], settings: list[dict]) -> tuple[list[dict], list]:
    """One entry per (recipe, grid setting), with its recipe; names, like-for-like and duplicates checked."""
    from textdiff.config import load_recipe
    from textdiff.noising import BACKENDS

    runs, recipes = [], []
    for path in recipe_paths:
        for setting in settings:
            recipe = load_recipe(path, [*overrides, *setting_overrides(setting)])
            sha = recipe_sha(recipe)
            name = recipe.name + "".join(f"_{k.split('.')[-1]}{v}" for k, v in setting.items())
            where = path + "".join(f" --grid {kv}" for kv in setting_overrides(setting))
            if not RUN_NAME.fullmatch(name) or ".." in name or name == "tokenizer":
                raise TextdiffError(f"{where}: the run name {name!r} (the recipe's name and its grid values) is not "
                                    f"a plain folder name; allowed: letters, digits and . _ + - (not 'tokenizer')")
            twin = next((r for r in runs if r["name"] == name or r["recipe_sha"] == sha), None)
            if twin is not None:
                same = "name" if twin["name"] == name else "recipe"
                raise TextdiffError(f"{where}: the same run as {twin['where']} (same {same}); give each recipe its "
                                    f"own name and each grid value once")
            runs.append({"name": name, "recipe": path, "where": where, "label": recipe.name,
                         "backend": recipe.backend.name, "causal": BACKENDS[recipe.backend.name].causal,
                         "setting": setting, "recipe_sha": sha})
            recipes.append(recipe)
    check_like_for_like(recipes, [r["where"] for r in runs])
    return runs, recipes


def plan(recipe_paths: list[str], epochs: list, unique_tokens: Optional[int], overrides: list[str],
         grid: list[str], runs_dir: Path) -> dict:
    """Recipes, data and the step of every epoch budget, checked before anything is trained or written."""
    from textdiff.data import build_sequences, load_texts, source_name
    from textdiff.evaluation.judge import file_hash
    from textdiff.options import LIMITS

    check_overrides(overrides)
    runs, recipes = _runs(recipe_paths, overrides, parse_grid(grid))
    base = recipes[0]
    texts = load_texts(base.data)
    for split in ("validation", "test"):
        if not texts[split]:
            raise TextdiffError(f"{source_name(base.data)} has no {split} split; the crossover early-stops on "
                                f"validation and reports test (set data.holdout or data.splits, docs/data.md)")
    tok, tok_dir = _shared_tokenizer(base, runs_dir / "tokenizer", texts["train"])
    full = len(build_sequences(base.data, tok, texts["train"]))
    L, batch = base.data.max_length, base.train.batch_size
    if full < batch:
        raise TextdiffError(f"the training split of {source_name(base.data)} gives {full:,} sequences of {L} tokens, "
                            f"fewer than train.batch_size={batch}; use a smaller batch or data.max_length")
    n = full
    if unique_tokens is not None:
        n = unique_tokens // L
        allowed = f"allowed: {batch * L:,} to {full * L:,}"
        if unique_tokens > full * L:
            raise TextdiffError(f"--unique-tokens {unique_tokens:,} is more than the training split's {full * L:,} "
                                f"tokens ({full:,} sequences of {L}); {allowed}")
        if n < batch:
            raise TextdiffError(f"--unique-tokens {unique_tokens:,} gives {n} sequences of {L} tokens, fewer than "
                                f"train.batch_size={batch}; {allowed}")
    per_epoch = n // batch
    steps = [max(1, round(e * per_epoch)) for e in epochs]
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise TextdiffError(f"--epochs {','.join(map(str, epochs))}: budgets closer than one step apart "
                            f"({per_epoch} steps per epoch give the steps {steps})")
    if steps[-1] > LIMITS["train_steps"]:
        raise TextdiffError(f"--epochs {epochs[-1]}: {steps[-1]:,} optimizer steps, more than the limit of "
                            f"{LIMITS['train_steps']:,}")
    if not (tok_dir / "tokenizer.json").is_file():
        from textdiff.checkpoint import atomic_write_json
        from textdiff.rundir import make_dir, save_tokenizer

        make_dir(tok_dir, "--runs")  # the record first: a tokenizer.json is never there without it
        atomic_write_json(tok_dir / TOKENIZER_RECORD, tokenizer_record(base))
        save_tokenizer(tok, tok_dir)
    return {"recipes": list(recipe_paths), "overrides": list(overrides), "grid": list(grid),
            "unique_tokens": n * L if unique_tokens is not None else None, "train_sequences": n,
            "full_sequences": full, "max_length": L, "batch_size": batch, "steps_per_epoch": per_epoch,
            "epochs": list(epochs), "steps": steps, "tokenizer": str(tok_dir),
            "tokenizer_sha": file_hash(tok_dir / "tokenizer.json"), "runs": runs, "data": source_name(base.data)}


def run_recipe(res: dict, run: dict, steps: int, runs_dir: Path):
    """The recipe of `run` trained to `steps` (the crossover's own settings last: they are not negotiable)."""
    from textdiff.config import load_recipe

    every = res["steps_per_epoch"] * max(1, math.ceil(250 / res["steps_per_epoch"]))  # about every 250 steps
    own = [f"out_dir={runs_dir / run['name']}", f"tokenizer.path={res['tokenizer']}",
           f"data.train_sequences={res['train_sequences']}", "train.min_lr_ratio=1.0", f"train.steps={steps}",
           "train.eval_every=0", f"train.checkpoint_every={every}", "train.keep_checkpoints=1",
           "sample.num_samples=0"]
    return load_recipe(run["recipe"], [*res["overrides"], *setting_overrides(run["setting"]), *own])


def _done_step(run_dir: Path) -> int:
    from textdiff import checkpoint as ckpt

    found = ckpt.list_checkpoints(run_dir)
    return ckpt.read_state(found[-1])["step"] if found else 0


def _check_run(recipe, run_dir: Path, res: dict) -> None:
    """A run directory already there was trained from this recipe, data and shared tokenizer."""
    from textdiff import rundir
    from textdiff.evaluation.judge import file_hash

    try:
        rundir.check(recipe, run_dir, resume=True)
    except TextdiffError as e:
        raise TextdiffError(f"{run_dir} cannot continue this crossover: {str(e).removeprefix('--resume: ')}; delete "
                            f"it to retrain it, or use another --runs") from None
    if file_hash(run_dir / "tokenizer.json") != res["tokenizer_sha"]:
        raise TextdiffError(f"{run_dir} was trained with another tokenizer than {res['tokenizer']}; delete {run_dir} "
                            f"to retrain it, or use another --runs")


def _bound(result) -> dict:
    return {"nats_per_token": result.nats_per_token, "stderr": result.stderr, "ppl": result.ppl,
            "exact": result.exact, "every_token": result.every_token, "sequences": result.n_sequences}


def crossover(res: dict, runs_dir: Path, save, device: Optional[str] = None, progress: bool = True,
              echo=print) -> dict:
    """Train and evaluate every (run, epoch budget) not yet in res["points"]; `save(res)` after each one."""
    import torch

    from textdiff.evaluation import perplexity
    from textdiff.pipeline import TextDiffusionPipeline
    from textdiff.training import train_recipe

    where = device or ("cuda" if torch.cuda.is_available() else "cpu")
    done = {(p["run"], p["epochs"]) for p in res["points"]}
    for run in res["runs"]:
        run_dir = runs_dir / run["name"]
        for epochs, steps in zip(res["epochs"], res["steps"]):
            if (run["name"], epochs) in done:
                continue
            reached = _done_step(run_dir)
            if reached > steps:
                raise TextdiffError(f"{run_dir} has trained past epoch {epochs} (step {reached:,} > {steps:,}) and "
                                    f"crossover.json lacks that budget; --epochs may only add budgets beyond the last "
                                    f"one done, or delete {run_dir} to retrain it")
            recipe = run_recipe(res, run, steps, runs_dir)
            if (run_dir / "config.json").is_file():
                _check_run(recipe, run_dir, res)
            t0 = time.perf_counter()
            if reached < steps:
                train_recipe(recipe, resume=reached > 0, progress=progress, device=device)
            seconds = time.perf_counter() - t0
            pipe = TextDiffusionPipeline.from_pretrained(run_dir, device=where)
            bounds = {split: _bound(perplexity(pipe, split, res["draws"], max_sequences=res["eval_sequences"],
                                               progress=False)) for split in ("validation", "test")}
            res["points"].append({"run": run["name"], "epochs": epochs, "step": steps,
                                  "tokens_seen": steps * res["batch_size"] * res["max_length"],
                                  "train_seconds": round(seconds, 1), **bounds})
            save(res)
            v, t = bounds["validation"], bounds["test"]
            echo(f"crossover: {run['name']} at {epochs} epochs ({steps:,} steps): validation "
                 f"{v['nats_per_token']:.4f}, test {t['nats_per_token']:.4f} nats/token ({seconds:.0f} s training)")
    return res


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _good_point(p, names: set, epochs: list) -> bool:
    bounds = [p.get(k) for k in ("validation", "test")] if isinstance(p, dict) else [None]
    return (isinstance(p, dict) and p.get("run") in names and p.get("epochs") in epochs and
            all(_number(p.get(k)) for k in ("step", "tokens_seen", "train_seconds")) and
            all(isinstance(b, dict) and _number(b.get("nats_per_token")) and _number(b.get("ppl")) and
                (b.get("stderr") is None or _number(b.get("stderr"))) and isinstance(b.get("every_token"), bool)
                for b in bounds))


def resumed(old, res: dict, path: Path) -> list[dict]:
    """The points of a crossover.json `old` that `res` (a fresh plan) continues; refused when it is damaged or of
    other settings."""
    if not isinstance(old, dict) or not isinstance(old.get("epochs"), list) or not isinstance(old.get("points"), list):
        raise damaged(path)
    diff = [k for k in PLAN_KEYS if old.get(k) != res.get(k)]
    dropped = [e for e in old["epochs"] if e not in res["epochs"]]
    if diff or dropped:
        what = ", ".join(diff + (["epochs (" + ", ".join(map(str, dropped)) + " left out)"] if dropped else []))
        raise TextdiffError(f"{path} holds a crossover with other settings ({what}); resume it with the same "
                            f"settings (--epochs may add budgets), or choose another --out-dir")
    names = {r["name"] for r in res["runs"]}
    if not all(_good_point(p, names, old["epochs"]) for p in old["points"]):
        raise damaged(path)
    return old["points"]


# --- the summary: early stopping, the crossover --------------------------------------------------------------------

def _curve(res: dict, label: str) -> list[dict]:
    """Per epoch budget, the point of recipe `label` whose grid setting has the best validation bound there."""
    names = {r["name"] for r in res["runs"] if r["label"] == label}
    out = []
    for epochs in res["epochs"]:
        pts = [p for p in res["points"] if p["run"] in names and p["epochs"] == epochs]
        if pts:
            out.append(min(pts, key=lambda p: p["validation"]["nats_per_token"]))
    return out


def _err(p: dict) -> float:
    return p["test"]["stderr"] or 0.0


def summary(res: dict) -> dict:
    labels = list(dict.fromkeys(r["label"] for r in res["runs"]))
    causal = {r["label"] for r in res["runs"] if r["causal"]}
    reference = next((lbl for lbl in labels if lbl in causal), labels[0])
    best = {}
    for label in labels:
        curve = _curve(res, label)
        if curve:
            best[label] = min(curve, key=lambda p: p["validation"]["nats_per_token"])
    crossings = {}
    ref = {p["epochs"]: p for p in _curve(res, reference)}
    for label in labels:
        if label == reference:
            continue
        gaps = [(p["epochs"], p["test"]["nats_per_token"] - ref[p["epochs"]]["test"]["nats_per_token"],
                 math.hypot(_err(p), _err(ref[p["epochs"]]))) for p in _curve(res, label) if p["epochs"] in ref]
        ahead = next((g for g in gaps if g[1] < 0), None)
        crossings[label] = {"gaps": gaps, "first_ahead": ahead[0] if ahead else None}
    return {"reference": reference, "best": best, "crossings": crossings}


def markdown(res: dict) -> list[str]:
    from textdiff.evaluation.report import env_lines, markdown_table

    s = summary(res)
    subsample = (f"the first {res['train_sequences']:,} of its {res['full_sequences']:,} training sequences "
                 f"({res['unique_tokens']:,} unique tokens)" if res["unique_tokens"] else
                 f"all {res['train_sequences']:,} training sequences ({res['train_sequences'] * res['max_length']:,} "
                 f"tokens)")
    lines = [f"Data: {res['data']}, {subsample}, packed to {res['max_length']} tokens, batch {res['batch_size']} "
             f"({res['steps_per_epoch']} steps per epoch); one tokenizer for every run. Recipes: "
             f"{', '.join(res['recipes'])}; overrides {res['overrides'] or 'none'}; grid {res['grid'] or 'none'}.",
             "Schedule: the learning rate is constant after warm-up (train.min_lr_ratio = 1), so one run per recipe "
             "and grid setting serves every budget (each budget is that run stopped there); a decaying schedule would "
             "need one run per budget and is not what this measures.",
             f"Bounds: {res['draws']} time draws per sequence, "
             f"{'every' if not res['eval_sequences'] else 'the first ' + str(res['eval_sequences'])} validation and "
             "test sequence(s); ± is the Monte Carlo standard error (AR is exact). Best = the epoch budget and grid "
             "setting with the lowest validation bound (early stopping), its test bound beside it.",
             *env_lines(res), ""]
    rows = []
    for p in res["points"]:
        v, t = p["validation"], p["test"]
        rows.append({"run": p["run"], "epochs": p["epochs"], "steps": p["step"], "tokens seen": f"{p['tokens_seen']:,}",
                     "validation nats/token": f"{v['nats_per_token']:.4f}",
                     "test nats/token": f"{t['nats_per_token']:.4f}" + (f" ± {t['stderr']:.4f}" if t["stderr"] else ""),
                     "test PPL": f"{t['ppl']:.2f}", "train s": p["train_seconds"]})
    lines += markdown_table(rows, list(rows[0])) if rows else ["(no budget evaluated yet)"]
    lines += ["", "Best (early-stopped on validation):", ""]
    best = [{"recipe": label, "run": p["run"], "epochs": p["epochs"],
             "validation nats/token": f"{p['validation']['nats_per_token']:.4f}",
             "test nats/token": f"{p['test']['nats_per_token']:.4f}" + (f" ± {_err(p):.4f}" if _err(p) else ""),
             "test PPL": f"{p['test']['ppl']:.2f}"} for label, p in s["best"].items()]
    lines += markdown_table(best, list(best[0])) if best else ["(none yet)"]
    ref = s["best"].get(s["reference"])
    lines.append("")
    for label, c in s["crossings"].items():
        at = (f"first ahead of {s['reference']} at {c['first_ahead']} epochs" if c["first_ahead"] is not None else
              f"not ahead of {s['reference']} at any budget measured")
        trend = ", ".join(f"{e}: {g:+.3f} ± {u:.3f}" for e, g, u in c["gaps"])
        lines.append(f"- Crossover: {label} is {at} (test nats/token minus {s['reference']}'s, per epoch budget: "
                     f"{trend or 'none yet'}).")
        mine = s["best"].get(label)
        if mine and ref:
            a, b = mine["test"]["ppl"], ref["test"]["ppl"]
            verdict = "below" if a < b else "above" if a > b else "equal to"
            lines.append(f"- Best {label} test PPL {mine['test']['ppl']:.2f} (epoch {mine['epochs']}) is {verdict} the "
                         f"best early-stopped {s['reference']} PPL {ref['test']['ppl']:.2f} (epoch {ref['epochs']}), "
                         f"ratio {mine['test']['ppl'] / ref['test']['ppl']:.3f}.")
    if not s["crossings"]:
        lines.append("- One recipe only: no crossover to report (give an AR recipe beside it).")
    if any(not p["test"]["every_token"] for p in res["points"]):
        lines.append("- Note: some run scores fewer tokens per sequence than the others (an AR run without "
                     "backend.start_token skips the first); set backend.start_token: true for a like-for-like bound.")
    return lines


def plot(res: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from textdiff.checkpoint import atomic_write_figure

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in res["runs"]:
        pts = [p for p in res["points"] if p["run"] == run["name"]]
        if not pts:
            continue
        line = ax.errorbar([p["epochs"] for p in pts], [p["test"]["nats_per_token"] for p in pts],
                           yerr=[_err(p) for p in pts], marker="o", capsize=3, label=f"{run['name']} (test)")
        ax.plot([p["epochs"] for p in pts], [p["validation"]["nats_per_token"] for p in pts], linestyle=":",
                color=line[0].get_color(), alpha=0.7)
    for label, p in summary(res)["best"].items():
        ax.plot([p["epochs"]], [p["test"]["nats_per_token"]], marker="*", markersize=14, color="black", zorder=5)
    ax.set_xscale("log")
    ax.set_xticks(res["epochs"], [str(e) for e in res["epochs"]])
    ax.minorticks_off()
    ax.set_xlabel("epochs over the training data (log scale)")
    ax.set_ylabel("test nats/token (bound; dotted: validation)")
    ax.set_title("Data-constrained crossover (star: best early-stopped)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write_figure(out, fig, dpi=120)
    plt.close(fig)
