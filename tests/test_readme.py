"""The README's two set-up commands stay true: CI runs the test one verbatim, and the main job's recipe exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    block = re.search(r"## Set up \(two commands\).*?```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.startswith("#")]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    main_job, tests = setup_commands()
    assert "textdiff train recipes/quickstart.yaml" in main_job and (ROOT / "recipes/quickstart.yaml").is_file()
    assert "pytest" in tests
    assert tests.replace("pip install -q", "pip install") in (ROOT / ".ci/run").read_text().replace(
        "pip install -q", "pip install")
    for cmd in (main_job, tests):
        assert "-c constraints-cpu.txt" in cmd  # never an unpinned, CUDA-sized torch
    assert "torch==" in (ROOT / "constraints-cpu.txt").read_text()
