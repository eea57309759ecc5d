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
from textdiff.errors import TextdiffError
from textdiff.pipeline import TextDiffusionPipeline
out = {{}}
for run in sys.argv[1:-1]:
    config = AutoConfig.from_pretrained(run)
    model = AutoModel.from_pretrained(run)
    tok = AutoTokenizer.from_pretrained(run)
    pipe = TextDiffusionPipeline.from_pretrained(run)
    ids = torch.tensor([tok("the old king sees the river", add_special_tokens=False).input_ids])
    with torch.no_grad():
        same = torch.equal(model(ids).logits, pipe.model(ids))
    out[run] = {{"config": type(config).__name__, "model": type(model).__name__, "backend": config.backend,
                "denoiser": type(model.denoiser).__name__, "training": model.training, "same": same,
                "shape": list(model(ids).logits.shape), "tokens": ids.tolist()[0],
                "pipe_tokens": pipe.tokenizer("the old king sees the river", add_special_tokens=False).input_ids,
                "vocab": len(tok)}}
try:
    AutoModel.from_pretrained(sys.argv[-1])
except TextdiffError as e:
    out["error"] = str(e)
print(json.dumps(out))
"""


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120)


def test_import_textdiff_stays_light():
    proc = run_python("import sys, textdiff; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.fixture
def not_a_run(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "textdiff", "type": "something-else"}))
    return tmp_path


@pytest.mark.parametrize("first", ["import textdiff", "import transformers; from transformers import AutoModel; "
                                   "import textdiff"], ids=["textdiff-first", "transformers-first"])
def test_auto_classes_load_runs_in_a_fresh_interpreter(masked_run, ar_run, not_a_run, first):
    """Masked and AR runs load (the same weights and tokens as the pipeline's); a folder whose config.json names
    the model type but is no textdiff run is refused in one line."""
    proc = run_python(LOAD.format(first=first), str(masked_run), str(ar_run), str(not_a_run))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for run, backend in ((masked_run, "masked"), (ar_run, "ar")):
        got = out[str(run)]
        assert got["config"] == "TextdiffConfig" and got["model"] == "TextdiffModel" and got["backend"] == backend
        assert got["denoiser"] == "Transformer" and got["training"] is False and got["same"] is True
        assert got["shape"] == [1, len(got["tokens"]), got["vocab"]] and got["tokens"] == got["pipe_tokens"]
    assert "\n" not in out["error"] and "not a textdiff config" in out["error"] and str(not_a_run) in out["error"]
