"""Headless Chromium (Debian's `chromium`) and tmux for the tests that look at pages and terminals as a person would.
Each test that needs one skips, naming the missing binary, when it is absent; .ci/run installs both."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
TMUX = shutil.which("tmux")

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
needs_tmux = pytest.mark.skipif(TMUX is None, reason="needs tmux (apt-get install tmux)")


def chromium_flags(profile: Path) -> list[str]:
    """Headless, offline, no first-run work, a throw-away profile."""
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}"]


def screenshot(url: str, out: Path, profile: Path, size: str = "900,420") -> Path:
    subprocess.run([CHROMIUM, *chromium_flags(profile), f"--window-size={size}", f"--screenshot={out}", url],
                   capture_output=True, timeout=60, check=True)
    return out


def dump_dom(url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran."""
    return subprocess.run([CHROMIUM, *chromium_flags(profile), "--dump-dom", url], capture_output=True, text=True,
                          timeout=60, check=True).stdout
