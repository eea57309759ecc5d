"""Classifier guidance (Dhariwal & Nichol 2021; for text Diffusion-LM's plug-and-play control and SSD-LM): a small
classifier p_phi(c | x_t, t), trained on the back-end's own noisy states of a run's data, steers that run's
unconditional samples toward a class c through the samplers' guidance hook.

What the classifier reads and how its gradient enters is the back-end's (`classifier_input`, `classifier_guided`):

    continuous (embedding):  gradient guidance on the score, grad log p(z_t) += gamma grad_z log p_phi(c | z_t), i.e.
                             by Tweedie x0_hat += gamma sigma_t^2 / alpha_t grad_z log p_phi(c | z_t); the rounding
                             logits move with it (l_v += dx0 . e_v)
    discrete (masked, simplex): logit re-weighting of the x0 distribution at every position i,
                             l_iv += gamma d log p_phi(c | p, t) / d p_iv  at p = the state as a distribution (one-hot
                             of x_t; softmax of the noisy simplex logits): the first-order estimate of
                             log p_phi(c | x with token i := v) - log p_phi(c | x) (Nisonoff et al. 2024), one
                             backward pass per step instead of V forward passes per position

The classifier is the shared transformer (time-conditioned, bidirectional) on the expected token embedding of the
state (or a projection of z_t), mean-pooled over the counted positions, with a linear head over the classes.
Labels come from a data column (`--label FIELD`) or from one slot of a structured column (`--label mr:food` reads
`food[...]` of E2E's meaning representation; rows without the slot are class "none").
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from textdiff import checkpoint as ckpt
from textdiff.config import ModelConfig
from textdiff.errors import TextdiffError
from textdiff.models import Transformer

NONE = "none"
"""The class of rows whose slot is absent."""


@dataclass(frozen=True)
class LabelSpec:
    """`field` or `field:slot`: the class of a row is its `field` value, or the value inside `slot[...]` of it."""

    field: str
    slot: Optional[str] = None

    @classmethod
    def parse(cls, text: str) -> "LabelSpec":
        field, _, slot = text.partition(":")
        if not field or (":" in text and not slot):
            raise TextdiffError(f"--label {text!r}: want FIELD or FIELD:SLOT, e.g. --label mr:food")
        return cls(field, slot or None)

    def __str__(self) -> str:
        return f"{self.field}:{self.slot}" if self.slot else self.field

    def of(self, value) -> str:
        if self.slot is None:
            return str(value).strip()
        found = re.search(rf"(?:^|[\s,]){re.escape(self.slot)}\[([^\]]*)\]", str(value))
        return found.group(1).strip() if found else NONE


class NoisyClassifier(nn.Module):
    """p_phi(c | x_t, t): a time-conditioned transformer over the state as token distributions (B, L, V) or
    vectors (B, L, in_dim), mean-pooled over `keep` (B, L), then a linear head -> (B, C) logits."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, max_len: int, n_classes: int, in_dim: int = 0):
        super().__init__()
        self.cfg = dataclasses.replace(cfg, time_conditioning=True, self_conditioning=False, segments=False)
        self.body = Transformer(self.cfg, vocab_size, max_len, token_input=not in_dim, vocab_head=False)
        self.inp = nn.Linear(in_dim, cfg.n_embd) if in_dim else None
        self.head = nn.Linear(cfg.n_embd, n_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        v = self.inp(x) if self.inp is not None else self.body.embed_probs(x)
        h = self.body.hidden(v, t).float()  # (B, L, D)
        w = torch.ones(h.shape[:2], device=h.device) if keep is None else keep.float()
        return self.head((h * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1.0))


class Classifier:
    """A trained classifier of one run's noisy states, its classes and the label it predicts."""

    def __init__(self, net: NoisyClassifier, classes: list[str], label: LabelSpec, info: dict):
        self.net, self.classes, self.label, self.info = net.eval(), classes, label, info

    def index(self, target: str) -> int:
        if target not in self.classes:
            raise TextdiffError(f"--target {target!r}: not a class of this classifier ({self.label}); "
                                f"classes: {', '.join(self.classes)}")
        return self.classes.index(target)

    def guidance(self, pipe, target: str, scale: float) -> Callable:
        """The samplers' guidance hook for `pipe` (the run this classifier was trained on), steering toward class
        `target` with strength `scale` (0: unchanged)."""
        backend, model = pipe.backend, pipe.model
        vocab = self.info.get("vocab_size")
        if vocab is not None and vocab != pipe.backend.vocab_size:  # None: built in Python, not loaded
            raise TextdiffError(f"--classifier: trained on a run with a {vocab}-token vocabulary, this run has "
                                f"{pipe.backend.vocab_size}; train a classifier on this run (`textdiff classifier RUN "
                                "--label ...`)")
        c = self.index(target)

        def hook(out, x_t, t):
            if scale == 0:
                return out
            with torch.enable_grad():
                x = backend.classifier_input(x_t).detach().float().requires_grad_(True)
                log_p = F.log_softmax(self.net(x, t), dim=-1)[:, c].sum()
                grad, = torch.autograd.grad(log_p, x)
            return backend.classifier_guided(model, out, scale * grad, t)

        return hook

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.save_tensors(out / "classifier.safetensors", ckpt.model_tensors(self.net), {"format": "textdiff-classifier"})
        ckpt.atomic_write_json(out / "classifier.json", {**self.info, "classes": self.classes, "label": str(self.label),
                                                         "model": dataclasses.asdict(self.net.cfg)})

    @classmethod
    def load(cls, path: str | Path, device="cpu") -> "Classifier":
        path = Path(path)
        meta = path / "classifier.json"
        if not meta.is_file() or not (path / "classifier.safetensors").is_file():
            raise TextdiffError(f"--classifier {path}: not a classifier directory (needs classifier.json and "
                                "classifier.safetensors; `textdiff classifier RUN --label ... --out DIR` writes them)")
        try:
            info = json.loads(meta.read_text())
            _check_sizes(info, meta)
            net = NoisyClassifier(ModelConfig(**info["model"]), info["vocab_size"], info["max_len"],
                                  len(info["classes"]), info["in_dim"])
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            raise TextdiffError(f"{meta}: damaged ({type(e).__name__}: {str(e)[:160]})") from None
        ckpt.load_model_tensors(net, ckpt.load_tensors(path / "classifier.safetensors"), path / "classifier.safetensors")
        return cls(net.to(device), info["classes"], LabelSpec.parse(info["label"]), info)


def _check_sizes(info: dict, meta: Path) -> None:
    """classifier.json's sizes are whole numbers within options.LIMITS (checked before anything is allocated)."""
    from textdiff.options import LIMITS

    for key, kind in (("vocab_size", "vocab"), ("max_len", "length"), ("in_dim", "vocab")):
        value = info[key]
        low = 0 if key == "in_dim" else 1  # in_dim 0: the classifier reads token ids
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= LIMITS[kind]:
            raise ValueError(f"'{key}' must be a whole number in [{low}, {LIMITS[kind]:,}], got {str(value)[:40]}")
    if not isinstance(info["classes"], list) or not 2 <= len(info["classes"]) <= LIMITS["samples"]:
        raise ValueError("'classes' must be a list of at least two class names")


# --- training ----------------------------------------------------------------------------------------------------

def labelled_split(pipe, label: LabelSpec, split: str) -> tuple[list[str], list[str]]:
    """(texts, labels) of one split of the run's data file."""
    import datasets

    from textdiff.data import resolve_path

    cfg = pipe.recipe.data
    if cfg.source_field or cfg.mode != "pad":
        raise TextdiffError(f"{pipe.recipe.name}: classifier guidance needs an unconditional run with data.mode: pad "
                            "(one example per sequence, so each has its own label)")
    path = resolve_path(cfg)
    if not isinstance(path, Path):
        raise TextdiffError(f"data.path {cfg.path}: classifier training reads a local file")
    fmt = {".jsonl": "json", ".json": "json", ".csv": "csv"}.get(path.suffix.lower())
    if fmt is None:
        raise TextdiffError(f"data.path {path}: classifier labels need a .jsonl or .csv file")
    datasets.disable_progress_bars()
    ds = datasets.load_dataset(fmt, data_files=str(path), split="train")
    for field in (cfg.text_field, label.field, *([cfg.split_field] if cfg.split_field else [])):
        if field not in ds.column_names:
            raise TextdiffError(f"--label {label}: column '{field}' is not in {path}; columns: {', '.join(ds.column_names)}")
    splits = ds[cfg.split_field] if cfg.split_field else ["train"] * len(ds)
    rows = [(text, label.of(value)) for s, text, value in zip(splits, ds[cfg.text_field], ds[label.field])
            if s == split and isinstance(text, str) and text.strip()]
    return [r[0] for r in rows], [r[1] for r in rows]


def _encode(pipe, texts: list[str]):
    from textdiff.data import pad
    from textdiff.tokenization import encode

    sp, data = pipe.backend.special, pipe.recipe.data
    seqs = pad(encode(pipe.tokenizer, texts), data.max_length, sp.eos, sp.pad, data.pad_in_loss, truncate=True)
    return seqs.ids, seqs.loss_mask


def _noisy(pipe, ids, keep, t, generator):
    x_t = pipe.backend.corrupt(ids, t, generator, noise_mask=keep, model=pipe.model)
    return pipe.backend.classifier_input(x_t).float()


@torch.no_grad()
def accuracy(clf: Classifier, pipe, ids, keep, labels, t: float, seed: int = 0, batch_size: int = 64) -> float:
    g = torch.Generator(pipe.device).manual_seed(seed)
    right = 0
    for lo in range(0, len(ids), batch_size):
        i, k = ids[lo:lo + batch_size].to(pipe.device), keep[lo:lo + batch_size].to(pipe.device)
        tt = torch.full((len(i),), t, device=pipe.device)
        right += int((clf.net(_noisy(pipe, i, k, tt, g), tt, k).argmax(-1).cpu() == labels[lo:lo + batch_size]).sum())
    return right / max(len(ids), 1)


def train_classifier(pipe, label: LabelSpec, *, steps: int = 500, batch_size: int = 32, lr: float = 1e-3,
                     model: Optional[ModelConfig] = None, seed: int = 0, progress: bool = True) -> Classifier:
    """Fit p_phi(c | x_t, t) on the run's training split, t ~ U(0, 1) (antithetic), x_t from the run's own forward
    process; reports held-out accuracy at t = 0.1 / 0.5 / 0.9 in `info`."""
    from tqdm.auto import tqdm

    if pipe.backend.causal:
        raise TextdiffError(f"the {pipe.backend.name} baseline has no noisy states to classify")
    texts, names = labelled_split(pipe, label, "train")
    classes = sorted(set(names))
    if len(classes) < 2:
        raise TextdiffError(f"--label {label}: the training split has {len(classes)} class(es) ({', '.join(classes)}); "
                            "need at least 2")
    ids, keep = _encode(pipe, texts)
    y = torch.tensor([classes.index(n) for n in names])
    model = model or ModelConfig(n_layer=2, n_embd=128, n_head=4)
    in_dim = pipe.backend.classifier_input_dim(pipe.model)
    torch.manual_seed(seed)
    net = NoisyClassifier(model, pipe.backend.vocab_size, pipe.recipe.data.max_length, len(classes), in_dim).to(pipe.device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator(pipe.device).manual_seed(seed)
    order = torch.Generator().manual_seed(seed)
    bar = tqdm(range(steps), desc="classifier", disable=not progress)
    for step in bar:
        b = torch.randint(0, len(ids), (batch_size,), generator=order)
        i, k = ids[b].to(pipe.device), keep[b].to(pipe.device)
        t = pipe.backend.uniforms(batch_size, g, pipe.device)
        with torch.no_grad():
            x = _noisy(pipe, i, k, t, g)
        loss = F.cross_entropy(net.train()(x, t, k), y[b].to(pipe.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    info = {"vocab_size": pipe.backend.vocab_size, "max_len": pipe.recipe.data.max_length, "in_dim": in_dim,
            "backend": pipe.backend.name, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
            "train_counts": {c: names.count(c) for c in classes}}
    clf = Classifier(net, classes, label, info)
    val_texts, val_names = labelled_split(pipe, label, "validation")
    val = [(x, n) for x, n in zip(val_texts, val_names) if n in classes]
    if val:
        v_ids, v_keep = _encode(pipe, [x for x, _ in val])
        v_y = torch.tensor([classes.index(n) for _, n in val])
        info["validation_accuracy"] = {str(t): accuracy(clf, pipe, v_ids, v_keep, v_y, t) for t in (0.1, 0.5, 0.9)}
        info["validation_majority"] = max(val_names.count(c) for c in classes) / len(val)
    return clf


# --- control success ---------------------------------------------------------------------------------------------

def mentions(text: str, value: str) -> bool:
    """The sample states the class value (case-insensitive, whole words): the check of control success, independent
    of the classifier that steered."""
    return re.search(rf"\b{re.escape(value)}\b", text, flags=re.IGNORECASE) is not None


def control_success(pipe, clf: Classifier, scales: list[float], num_samples: int = 32, seed: int = 0,
                    progress: bool = True, **opts) -> dict:
    """For every guidance scale and every class other than "none": `num_samples` samples steered toward it, and
    the share that mention the class value. Scale 0 is plain unconditional sampling (the base rate)."""
    from tqdm.auto import tqdm

    from textdiff.evaluation.diversity import distinct_n, unigram_entropy

    targets = [c for c in clf.classes if c != NONE]
    special = set(dataclasses.astuple(pipe.backend.special))
    rows, bar = [], tqdm(total=len(scales) * len(targets), desc="control", unit="class", disable=not progress)
    for scale in scales:
        per_class, texts, ids = {}, [], []
        for target in targets:
            bar.set_postfix(scale=scale, target=target)
            gen = pipe.generate(num_samples, seed=seed, guidance=clf.guidance(pipe, target, scale), **opts)
            bar.update()
            per_class[target] = sum(mentions(x, target) for x in gen.texts) / num_samples
            texts += gen.texts
            ids += [[i for i in row if i not in special] for row in gen.ids.tolist()]  # text only, no [EOS]/[PAD]
        rows.append({"scale": scale, "success": sum(per_class.values()) / len(per_class), "per_class": per_class,
                     "dist_2": distinct_n(texts, 2), "entropy": unigram_entropy(ids),
                     "examples": {t: texts[i * num_samples] for i, t in enumerate(targets)}})
    bar.close()
    return {"label": str(clf.label), "classes": clf.classes, "num_samples": num_samples, "seed": seed,
            "classifier": clf.info, "rows": rows}
