"""The run directory: its format in one place. Training, streaming, distillation and the pipeline read and write
runs only through here.

    config.json            {"type": "textdiff", "backend": ..., "recipe": {...}, "vocab_size": ..., "max_len": ...}
                           (+ "distillation": {...} for a distilled student; + "backbone": {"config": the
                           transformers config, "kind", "roles": {pad, mask, ...: token}} for a backbone run)
    model.safetensors      weights used for sampling and evaluation (EMA weights when EMA is on)
    tokenizer.json, tokenizer_config.json
    checkpoints/step_00000200/{model,ema,trainer}.safetensors + state.json   (last K kept; textdiff.checkpoint)
    metrics.jsonl, loss.png
    .textdiff.lock         held (flock) by the one process writing the run; it names that process's pid

Every file is written to a temporary name and renamed into place, so a kill at any moment leaves the previous
version readable; loading reads JSON and safetensors only and refuses a directory holding pickle files.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from textdiff import checkpoint as ckpt
from textdiff.errors import TextdiffError
from textdiff.options import LIMITS

LIMIT_OF = {"vocab_size": "vocab", "max_len": "length"}

CONFIG_TYPE = "textdiff"
LOCK_NAME = ".textdiff.lock"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

RESUME_MAY_CHANGE = ("steps", "grad_accum", "threads", "strategy", "compile", "activation_checkpointing",
                     "log_every", "checkpoint_every", "keep_checkpoints", "eval_every", "eval_batches", "log_to")
"""train.* keys that --resume may change: how long a run trains, how it is executed (not what it computes, up to
float order) and how often it logs, validates and checkpoints (validation draws its noise from its own seeded
generators and runs in eval mode, so it leaves the training stream alone); grad_accum too, so that a run resumes
on a world size that does not divide the old value."""


# --- reading -------------------------------------------------------------------------------------------------------


def refuse_pickles(run_dir: Path) -> None:
    """A run directory holding pickle files (beside the config or in a checkpoint) is refused before anything
    is loaded: pickles can run code."""
    run_dir = Path(run_dir)
    dirs = [run_dir, *ckpt.list_checkpoints(run_dir)]
    found = [str(p.relative_to(run_dir)) for d in dirs for p in d.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
    if found:
        raise TextdiffError(f"{run_dir}: refusing to load a directory with pickle files ({', '.join(sorted(found))}); "
                            "textdiff reads safetensors only: delete them or convert the weights")


def read_config(run_dir: Path) -> dict:
    """config.json of a run directory, checked for its type and sizes."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TextdiffError(f"{run_dir}: run directory not found")
    refuse_pickles(run_dir)
    path = run_dir / "config.json"
    if not path.is_file():
        raise TextdiffError(f"{run_dir}: no config.json (not a textdiff run directory, or training never started)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TextdiffError(f"{path}: not valid JSON") from None
    except RecursionError:
        raise TextdiffError(f"{path}: nested too deeply to be a textdiff config") from None
    if not isinstance(cfg, dict) or cfg.get("type") != CONFIG_TYPE or "recipe" not in cfg:
        raise TextdiffError(f"{path}: not a textdiff config (expected \"type\": \"{CONFIG_TYPE}\" and a recipe)")
    for key in ("vocab_size", "max_len"):
        value = cfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise TextdiffError(f"{path}: '{key}' must be a positive integer, got {str(value)[:40]!r}")
        if value > LIMITS[LIMIT_OF[key]]:
            raise TextdiffError(f"{path}: '{key}'={value:,} is more than the limit of {LIMITS[LIMIT_OF[key]]:,}")
    return cfg


def is_run(path: Path) -> bool:
    """The directory holds a textdiff config.json (a quick look; `read_config` checks it)."""
    try:
        return json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get("type") == CONFIG_TYPE
    except (OSError, ValueError, AttributeError, RecursionError):
        return False


def read_recipe(run_dir: Path, cfg: Optional[dict] = None):
    """The Recipe a run was trained with (its config.json), checked against the config's own "backend"."""
    from textdiff.config import recipe_from_dict

    cfg = cfg if cfg is not None else read_config(run_dir)
    where = Path(run_dir) / "config.json"
    recipe = recipe_from_dict(cfg["recipe"], str(where), legacy=True)
    if cfg.get("backend", recipe.backend.name) != recipe.backend.name:
        raise TextdiffError(f"{where}: \"backend\": {cfg['backend']!r} disagrees with the recipe's "
                            f"backend.name={recipe.backend.name!r}; the file was edited or mixed from two runs")
    return recipe


def read_tokenizer(run_dir: Path, cfg: dict):
    """The run's tokenizer, checked against config.json's vocabulary size."""
    from textdiff.tokenization import load_tokenizer

    tokenizer = load_tokenizer(run_dir)
    if len(tokenizer) != cfg.get("vocab_size"):
        raise TextdiffError(f"{run_dir}: tokenizer has {len(tokenizer)} tokens, config.json says {cfg.get('vocab_size')}; "
                            "the tokenizer files come from another run: copy this run's tokenizer.json back")
    roles = backbone_record(run_dir, cfg).get("roles", {}) if "backbone" in cfg else {}
    wrong = [r for r, token in roles.items() if str(getattr(tokenizer, f"{r}_token", None)) != token]
    if wrong:
        raise TextdiffError(f"{run_dir}: the tokenizer's {', '.join(wrong)} token disagrees with config.json's backbone "
                            "roles; the tokenizer files come from another run: copy this run's tokenizer files back")
    return tokenizer


def backbone_record(run_dir: Path, cfg: dict) -> dict:
    """config.json's "backbone": the transformers config, kind and role tokens of a backbone run ({} without one)."""
    record = cfg.get("backbone")
    if record is None:
        return {}
    if not (isinstance(record, dict) and isinstance(record.get("config"), dict) and isinstance(record.get("roles"), dict)):
        raise TextdiffError(f"{Path(run_dir) / 'config.json'}: \"backbone\" must hold a transformers \"config\" and "
                            "the \"roles\" of its tokens")
    return record


# --- checking a recipe against a directory ---------------------------------------------------------------------------


def recipe_changes(saved: dict, recipe: dict) -> list[str]:
    """The keys of `recipe` (a Recipe.to_dict()) that a run trained with `saved` could not resume under: all but
    where the run lives and RESUME_MAY_CHANGE."""
    saved, mine = json.loads(json.dumps(saved)), json.loads(json.dumps(recipe))
    for raw in (saved, mine):
        for key in RESUME_MAY_CHANGE:
            raw.get("train", {}).pop(key, None)
        raw.pop("out_dir", None)
        raw.pop("name", None)
    if saved == mine:
        return []
    diff = sorted(f"{s}.{k}" for s in mine if isinstance(mine[s], dict)
                  for k in mine[s] if saved.get(s, {}).get(k) != mine[s][k])
    return diff or ["top-level keys"]


def same_recipe(run_dir: Path, recipe) -> bool:
    """The run in run_dir was trained with `recipe` (up to what --resume may change)."""
    return not recipe_changes(read_recipe(run_dir).to_dict(), recipe.to_dict())


def check(recipe, run_dir: Path, resume: bool) -> None:
    """A new run needs an empty directory; --resume needs the run's own recipe (up to RESUME_MAY_CHANGE)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise TextdiffError(f"{run_dir}: the run directory (out_dir) exists and is not a directory")
    if not resume:
        if (run_dir / "config.json").exists() or ckpt.list_checkpoints(run_dir):
            raise TextdiffError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another "
                                f"directory with --set out_dir=PATH")
        return
    cfg = read_config(run_dir)
    diff = recipe_changes(read_recipe(run_dir, cfg).to_dict(), recipe.to_dict())
    if diff:
        raise TextdiffError(f"--resume: the recipe differs from the one {run_dir} was trained with "
                            f"({', '.join(diff)}); only "
                            f"{', '.join('train.' + k for k in RESUME_MAY_CHANGE)} may change")
    saved, now = cfg.get("data_fingerprint"), data_fingerprint(recipe.data)
    if saved is not None and saved != now:
        raise TextdiffError(f"--resume: data.path={recipe.data.path} is not the data {run_dir} was trained on "
                            f"({_fingerprint_diff(saved, now)}); restore that file, or train a new run")


# --- the data a run was trained on ------------------------------------------------------------------------------

HASHED_WHOLE = 1 << 30
"""Files up to 1 GiB are hashed whole; larger ones by their size and first and last 64 MiB."""


def data_fingerprint(data) -> dict:
    """What identifies the training data (a DataConfig): a local file's size and SHA-256, or the hub id."""
    from textdiff.data import resolve_path

    source = resolve_path(data)
    if not isinstance(source, Path) or not source.is_file():
        return {"hub": str(source), "config": data.hub_config}
    stat = source.stat()
    return dict(_file_fingerprint(str(source.resolve()), stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=8)
def _file_fingerprint(path: str, size: int, mtime_ns: int) -> tuple:
    """(("bytes", size), ("sha256", hex)) of a file, hashed once per (path, size, mtime) in a process."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= HASHED_WHOLE:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        else:
            digest.update(f.read(1 << 26))
            f.seek(size - (1 << 26))
            digest.update(f.read())
    return ("bytes", size), ("sha256", digest.hexdigest())


def _fingerprint_diff(saved: dict, now: dict) -> str:
    if "bytes" in saved and "bytes" in now and saved["bytes"] != now["bytes"]:
        return f"{saved['bytes']:,} bytes then, {now['bytes']:,} now"
    return "its content changed" if "sha256" in saved and "sha256" in now else "another source"


# --- one writer per run directory ------------------------------------------------------------------------------


class RunLock:
    """An exclusive flock on RUN/.textdiff.lock, held while one process writes the run. The kernel drops it when
    that process exits in any way (SIGKILL included), so a lock left by a killed process is never stale: the next
    writer simply gets it. The file is never deleted while held (a waiting process would lock a dead inode)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        for _ in range(3):  # the directory (and its lock file) may be removed by the holder as it fails
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                raise TextdiffError(f"{self.path.parent} is being written by another textdiff process (pid "
                                    f"{holder}); wait for it to finish, or choose another directory with "
                                    f"--set out_dir=PATH") from None
            if _same_file(fd, self.path):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self.fd = fd
                return
            os.close(fd)
        raise TextdiffError(f"{self.path.parent}: the run directory keeps disappearing; is another process removing it?")

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode().strip() or "unknown"
    except (OSError, UnicodeDecodeError):
        return "unknown"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except OSError:
        return False


def make_dir(run_dir: Path, what: str = "out_dir", create: bool = True) -> None:
    """Create the directory (its parents too; or with `create` False, require it), probing that it can be written
    before any work is done."""
    try:
        if create:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=run_dir, prefix=".probe_")
        probe.close()
    except OSError as e:
        hint = "choose another directory with --set out_dir=PATH" if what == "out_dir" else "give another path"
        raise TextdiffError(f"{what} {run_dir}: cannot be written ({e.strerror or type(e).__name__}); {hint}") from None


@contextlib.contextmanager
def claim(recipe, run_dir: Path, resume: bool):
    """The run directory, checked, created and locked for this process while the block runs. A new run that
    fails before its first checkpoint leaves the directory as it found it (what it wrote is removed, and the
    directory itself when it created it), so the corrected command can run at once."""
    run_dir = Path(run_dir)
    check(recipe, run_dir, resume)
    created = not run_dir.exists()
    before = set(os.listdir(run_dir)) if run_dir.is_dir() else set()
    make_dir(run_dir)
    lock = RunLock(run_dir)
    lock.acquire()
    try:
        check(recipe, run_dir, resume)  # again, under the lock: another writer may have finished meanwhile
        yield run_dir
    except BaseException:
        if not resume and not ckpt.list_checkpoints(run_dir):
            _remove_new(run_dir, before, created)
        raise
    finally:
        lock.release()


def _remove_new(run_dir: Path, before: set, created: bool) -> None:
    """Remove what a failed new run wrote (everything, with the directory, when it created the directory)."""
    if created:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for name in set(os.listdir(run_dir)) - before - {LOCK_NAME}:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


# --- writing -------------------------------------------------------------------------------------------------------


def config_record(recipe, vocab_size: int, max_len: int, **extra) -> dict:
    """config.json's content for a run of `recipe`."""
    return {"type": CONFIG_TYPE, "model_type": CONFIG_TYPE, "backend": recipe.backend.name, "recipe": recipe.to_dict(),
            "vocab_size": vocab_size, "max_len": max_len, **extra}


def save_tokenizer(tokenizer, run_dir: Path) -> None:
    """The tokenizer files, each renamed into place from a temporary directory (never a half-written file)."""
    run_dir = Path(run_dir)
    tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=".tmp_tokenizer_"))
    try:
        try:
            tokenizer.save_pretrained(str(tmp))
        except OSError:
            raise
        except Exception as e:  # tokenizers' Rust writer: "No space left on device (os error 28)"
            ckpt.raise_os_error(e, run_dir / "tokenizer.json")
        for f in tmp.iterdir():
            os.replace(f, run_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_new(run_dir: Path, recipe, tokenizer, max_len: int, **extra) -> None:
    """The tokenizer and config.json of a new run (config.json last: it is what marks a run)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tokenizer, run_dir)
    ckpt.atomic_write_json(run_dir / "config.json", config_record(recipe, len(tokenizer), max_len, **extra))


def update_config(run_dir: Path, **fields) -> None:
    """config.json with top-level `fields` set (e.g. a distilled student's lineage once it is known)."""
    cfg = read_config(run_dir)
    ckpt.atomic_write_json(Path(run_dir) / "config.json", {**cfg, **fields})


def update_recipe(run_dir: Path, recipe) -> None:
    """config.json with `recipe` (a resumed run whose train.steps or cadence changed)."""
    cfg = read_config(run_dir)
    if cfg["recipe"] != recipe.to_dict():
        ckpt.atomic_write_json(Path(run_dir) / "config.json", {**cfg, "recipe": recipe.to_dict()})


def tokenizer_for(recipe, run_dir: Path, texts: list[str], resume: bool):
    """The run's tokenizer: its own on resume, the recipe's tokenizer.path when given, a backbone's own (checked,
    with everything else about the backbone, before anything is written), else one trained on texts."""
    from textdiff.tokenization import load_tokenizer, train_tokenizer

    if recipe.model.backbone is not None and not resume:
        from textdiff.models import backbones

        backbones.check_backbone(recipe)
        return backbones.load_tokenizer(recipe.model.backbone)
    if resume or recipe.tokenizer.path:
        return load_tokenizer(run_dir if resume else Path(recipe.tokenizer.path))
    print(f"textdiff: training a {recipe.tokenizer.kind} tokenizer ({recipe.tokenizer.vocab_size} tokens) "
          f"on {len(texts):,} training texts")
    return train_tokenizer(recipe.tokenizer, texts)


def write_run_files(recipe, run_dir: Path, tokenizer, resume: bool) -> None:
    """A new run's tokenizer and config.json (with the data's fingerprint); nothing on resume (`update_recipe`
    runs once the checkpoint has loaded, so a failing --resume changes nothing)."""
    if resume:
        return
    extra = {"data_fingerprint": data_fingerprint(recipe.data)}
    if recipe.model.backbone is not None:
        from textdiff.models import backbones

        extra["backbone"] = backbones.record(recipe, tokenizer)
    write_new(run_dir, recipe, tokenizer, recipe.data.max_length, **extra)
