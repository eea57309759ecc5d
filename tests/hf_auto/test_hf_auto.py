"""transformers' AutoConfig / AutoModel / AutoTokenizer load run directories after `import textdiff`, in a fresh
interpreter, whatever was imported first; `import textdiff` itself imports neither torch nor transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

LOAD = """
import json, sys
{first}
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer
from textdiff.pipeline import TextDiffusionPipeline
run = sys.argv[1]
config = AutoConfig.from_pretrained(run)
model = AutoModel.from_pretrained(run)
tok = AutoTokenizer.from_pretrained(run)
pipe = TextDiffusionPipeline.from_pretrained(run)
ids = torch.tensor([tok("the old king sees the river", add_special_tokens=False).input_ids])
with torch.no_grad():
    same = torch.equal(model(ids).logits, pipe.model(ids))
print(json.dumps({{"config": type(config).__name__, "model": type(model).__name__, "backend": config.backend,
                  "denoiser": type(model.denoiser).__name__, "training": model.training, "same": same,
                  "shape": list(model(ids).logits.shape), "tokens": ids.tolist()[0],
                  "pipe_tokens": pipe.tokenizer("the old king sees the river", add_special_tokens=False).input_ids,
                  "vocab": len(tok)}}))
"""


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120)


def test_import_textdiff_stays_light():
    proc = run_python("import sys, textdiff; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("first", ["import textdiff", "import transformers; from transformers import AutoModel; "
                                   "import textdiff"], ids=["textdiff-first", "transformers-first"])
def test_auto_classes_load_a_masked_run(masked_run, first):
    proc = run_python(LOAD.format(first=first), str(masked_run))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["config"] == "TextdiffConfig" and out["model"] == "TextdiffModel" and out["backend"] == "masked"
    assert out["denoiser"] == "Transformer" and out["training"] is False and out["same"] is True
    assert out["shape"] == [1, len(out["tokens"]), out["vocab"]] and out["tokens"] == out["pipe_tokens"]


def test_auto_classes_load_an_ar_run(ar_run):
    proc = run_python(LOAD.format(first="import textdiff"), str(ar_run))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["backend"] == "ar" and out["same"] is True


def test_not_a_textdiff_run_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "textdiff", "type": "something-else"}))
    code = ("import sys, textdiff\nfrom transformers import AutoModel\nfrom textdiff.errors import TextdiffError\n"
            "try:\n    AutoModel.from_pretrained(sys.argv[1])\nexcept TextdiffError as e:\n    print(e)\n")
    proc = run_python(code, str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert "\n" not in line and "not a textdiff config" in line and str(tmp_path) in line
