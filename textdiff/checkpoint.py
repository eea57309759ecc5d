"""Safetensors files and training checkpoints: written atomically, never unpickled.

A checkpoint is checkpoints/step_00000200/{model,ema,trainer}.safetensors + state.json inside a run directory
(textdiff/rundir.py describes the rest). Every file is written to a temporary name and renamed into place; a
checkpoint is a directory renamed into place only once complete, so a kill at any moment leaves the previous
checkpoint readable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from textdiff.errors import TextdiffError

BACKEND_KEY = "textdiff.backend"
"""safetensors metadata key naming the back-end that trained the weights."""


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain open() would give a new file (0o666 less the umask): temporary files (mkstemp: 0600) are
    given it before their rename, so every file of a run has the same permissions."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    return 0o777 & ~_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """`data` to a unique temporary name beside `path`, flushed, then renamed over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_figure(path: Path, fig, dpi: int) -> None:
    """A matplotlib figure as a PNG, written atomically (a unique temporary name: two writers never collide)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """safetensors to a temporary file, then an atomic rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except SafetensorError as e:
        Path(tmp).unlink(missing_ok=True)
        raise_os_error(e, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def raise_os_error(e: Exception, path: Path) -> None:
    """Rust writers (safetensors, tokenizers) report a full disk as "... (os error 28)" in an exception of their own:
    raise it as the OSError it is (the CLI prints those in one line), else re-raise `e`."""
    code = re.search(r"os error (\d+)", str(e))
    if code is None:
        raise e
    raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise TextdiffError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise TextdiffError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:120]})") from None


def tensors_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file (empty when it has none); read from the header only."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise TextdiffError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:120]})") from None


def check_backend(path: Path, backend: str) -> None:
    """Weights record the back-end that trained them; loading them under another back-end's config is refused
    (an AR model and a masked denoiser have the same tensors, so the shapes alone cannot tell)."""
    saved = tensors_metadata(path).get(BACKEND_KEY)
    if saved is not None and saved != backend:
        raise TextdiffError(f"{path}: these weights were trained with the {saved} back-end, but config.json says "
                            f"{backend}; the files come from different runs")


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers, each shared tensor once (tied embeddings)."""
    seen, out = set(), {}
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        out[name] = t
    return out


def load_model_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor], where: Path) -> None:
    expected = model_tensors(model)
    check_fits(expected, tensors, where)
    with torch.no_grad():
        for name, t in tensors.items():
            expected[name].copy_(t)


def check_fits(expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], where: Path) -> None:
    """The same names and shapes as `expected`, and finite values; else a TextdiffError naming the first misfit."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise TextdiffError(f"{where}: weights do not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, t in tensors.items():
        if t.shape != expected[name].shape:
            raise TextdiffError(f"{where}: shape mismatch for '{name}': file {tuple(t.shape)}, model "
                                f"{tuple(expected[name].shape)} (is config.json from another run?)")
        if t.dtype != expected[name].dtype:  # copy_ would cast silently: int64 or float16 weights are not ours
            raise TextdiffError(f"{where}: tensor '{name}' is {str(t.dtype).replace('torch.', '')}, the model's is "
                                f"{str(expected[name].dtype).replace('torch.', '')}; these weights were re-saved or "
                                "come from elsewhere")
    check_finite(tensors, where)


def check_finite(tensors: dict[str, torch.Tensor], where: Path) -> None:
    """Weights holding NaN or inf are refused on load: they come from a diverged run and sample garbage."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise TextdiffError(f"{where}: tensor '{name}' holds NaN or inf values (a diverged run?); "
                                "load an earlier checkpoint or retrain with a lower train.lr")


# --- training checkpoints ------------------------------------------------------------------------------------


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and (p / "state.json").is_file())


def write_checkpoint(run_dir: Path, step: int, files: dict[str, tuple[dict, dict | None]], state: dict, keep: int) -> Path:
    """Write {name: (tensors, metadata)} and state.json into checkpoints/step_N atomically; keep the newest `keep`."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp_step_{step:08d}_"))
    try:
        for name, (tensors, meta) in files.items():
            save_tensors(tmp / f"{name}.safetensors", tensors, meta)
        atomic_write_json(tmp / "state.json", state)
        os.chmod(tmp, dir_mode())
        if final.exists():
            _discard(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        _discard(old)
    for stale in root.glob(".tmp_step_*"):  # left by a killed writer
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _discard(checkpoint: Path) -> None:
    """Rename a checkpoint out of the listing first, then delete it: a kill halfway through the deletion leaves
    a stale temporary directory (removed by the next write), never a half-deleted checkpoint."""
    doomed = checkpoint.with_name(f".tmp_step_del_{checkpoint.name}")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(checkpoint, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    return optimizer_state_tensors(opt.state_dict())


def optimizer_state_tensors(sd: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """An optimizer state dict (parameters numbered 0..n-1) as safetensors tensors + metadata."""
    tensors = {f"state.{i}.{k}": (v if torch.is_tensor(v) else torch.tensor(v))
               for i, st in sd["state"].items() for k, v in st.items()}
    return tensors, {"param_groups": json.dumps(sd["param_groups"])}


def load_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    sd = read_optimizer_state(path)
    try:
        params = [p for group in opt.param_groups for p in group["params"]]
        for i, st in sd["state"].items():  # load_state_dict checks the group sizes, not the moments' shapes
            for name, v in st.items():
                if v.dim() and v.shape != params[i].shape:
                    raise ValueError(f"state {i}.{name} has shape {tuple(v.shape)}, parameter {tuple(params[i].shape)}")
        opt.load_state_dict(sd)
    except (KeyError, ValueError, TypeError, IndexError) as e:
        raise TextdiffError(f"{path}: not an optimizer state written by this model's training "
                            f"({type(e).__name__}: {str(e)[:100]})") from None


def read_optimizer_state(path: Path) -> dict:
    """The optimizer state dict written by `optimizer_state_tensors`."""
    tensors = load_tensors(path)
    try:
        groups = json.loads(tensors_metadata(path)["param_groups"])
        state: dict[int, dict] = {}
        for key, v in tensors.items():
            if not key.startswith("state."):
                continue  # e.g. rng.torch, stored beside the optimizer
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    except (KeyError, ValueError, TypeError, RecursionError) as e:
        raise TextdiffError(f"{path}: not an optimizer state written by this model's training "
                            f"({type(e).__name__}: {str(e)[:100]})") from None
    return {"state": state, "param_groups": groups}


def read_state(checkpoint: Path) -> dict:
    """A checkpoint's state.json: {"step": int, ...}."""
    path = Path(checkpoint) / "state.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise TextdiffError(f"{path}: not readable JSON") from None
    step = state.get("step") if isinstance(state, dict) else None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise TextdiffError(f"{path}: 'step' must be a whole number >= 0, got {step!r}")
    return state
