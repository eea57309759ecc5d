"""The tiny backbone directories (tests/models/tiny_backbones.py), built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.models.tiny_backbones import save_backbone


@pytest.fixture(scope="session")
def backbone_dir(tmp_path_factory):
    """backbone_dir(arch) -> a saved tiny model directory of `arch`."""
    root, made = tmp_path_factory.mktemp("backbones"), {}

    def get(arch: str) -> Path:
        if arch not in made:
            made[arch] = save_backbone(arch, root / arch)
        return made[arch]
    return get
