"""docs/trajectory.png: the HTML trajectory page (`textdiff infill RUN TEMPLATE --trajectory out.html`) at a middle
step, as headless Chromium draws it.

    python benchmarks/trajectory_screenshot.py [--out docs/trajectory.png]

It trains the tests' tiny masked recipe on their synthetic corpus (no third-party text) for 400 steps, fills a
template in 8 steps with three samples, writes the page and screenshots it at step 4 (`#step=4`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser import CHROMIUM, chromium_flags  # noqa: E402
from tests.conftest import make_sentences, tiny_recipe_dict  # noqa: E402

TEMPLATE = "the old [MASK:4] and the [MASK:5]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "trajectory.png"))
    args = ap.parse_args()
    if CHROMIUM is None:
        raise SystemExit("needs Debian's chromium (apt-get install chromium)")
    from textdiff.cli import main as cli
    from textdiff.config import recipe_from_dict
    from textdiff.training import train_recipe

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "toy.jsonl"
        rows = [{"text": t, "split": s} for s, n, seed in (("train", 1200, 0), ("validation", 80, 1))
                for t in make_sentences(n, seed)]
        corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
        raw = tiny_recipe_dict(corpus, tmp / "run")
        raw["train"].update(steps=400, threads=1, eval_every=200, checkpoint_every=400)
        run = train_recipe(recipe_from_dict(raw), progress=False)
        page = tmp / "trajectory.html"
        assert cli(["infill", str(run), TEMPLATE, "-n", "3", "--steps", "8", "--seed", "1",
                    "--trajectory", str(page)]) == 0
        shot = tmp / "shot.png"
        subprocess.run([CHROMIUM, *chromium_flags(tmp / "profile"), "--window-size=900,330", f"--screenshot={shot}",
                        f"file://{page}#step=4"], capture_output=True, check=True, timeout=60)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
