"""Run directories load from safetensors and JSON only: planted pickles are refused before anything is read, and
nothing on the load path can unpickle (torch.load and pickle are booby-trapped while a run loads and resumes)."""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch

from tests.test_cli_errors import Trap, assert_one_line_error
from textdiff import checkpoint as ckpt
from textdiff import rundir
from textdiff.cli import main
from textdiff.config import recipe_from_dict
from textdiff.errors import TextdiffError
from textdiff.pipeline import TextDiffusionPipeline
from textdiff.training import train_recipe

ROOT = Path(__file__).resolve().parents[1]
PLANTS = ["pytorch_model.bin", "model.pt", "checkpoints/LAST/optimizer.pt", "checkpoints/LAST/rng.pth"]


def _plant(run: Path, where: str, marker: Path) -> Path:
    path = run / where.replace("checkpoints/LAST", str(ckpt.list_checkpoints(run)[-1].relative_to(run)))
    path.write_bytes(pickle.dumps(Trap(marker)))
    return path


@pytest.fixture
def planted(masked_run, tmp_path):
    def plant(where: str) -> tuple[Path, Path, Path]:
        run, marker = tmp_path / "run", tmp_path / "UNPICKLED"
        shutil.copytree(masked_run, run)
        return run, _plant(run, where, marker), marker
    return plant


@pytest.mark.parametrize("where", PLANTS)
def test_planted_pickle_is_refused_by_the_cli(where, planted, capsys):
    run, path, marker = planted(where)
    for argv in (["sample", str(run), "-n", "1"], ["infill", str(run), "the [MASK] king"], ["eval", str(run)]):
        rc = main(argv)
        assert_one_line_error(rc, capsys.readouterr().err, (path.name, "pickle"))
    assert not marker.exists()


@pytest.mark.parametrize("where", PLANTS)
def test_planted_pickle_is_refused_by_from_pretrained_and_resume(where, planted):
    run, path, marker = planted(where)
    with pytest.raises(TextdiffError, match=re.escape(path.name)):
        TextDiffusionPipeline.from_pretrained(run)
    recipe = recipe_from_dict(json.loads((run / "config.json").read_text())["recipe"])
    with pytest.raises(TextdiffError, match="pickle"):
        train_recipe(recipe.__class__(**{**recipe.__dict__, "out_dir": str(run)}), resume=True, progress=False)
    assert not marker.exists()


def test_trap_really_fires_through_torch_load(tmp_path):
    """What would happen without the refusal: torch.load (weights_only=False) runs the payload, in torch's own
    zip format and in a bare pickle alike (there the payload runs before torch checks the magic number)."""
    for name, write in (("model.pt", lambda obj, f: torch.save(obj, f)), ("pytorch_model.bin", pickle.dump)):
        marker = tmp_path / f"fired-{name}"
        with open(tmp_path / name, "wb") as f:
            write(Trap(marker), f)
        with contextlib.suppress(RuntimeError):
            torch.load(tmp_path / name, weights_only=False)
        assert marker.read_text() == "unpickled"


@pytest.fixture
def no_unpickling(monkeypatch):
    """Every way to unpickle raises while the test runs."""
    def refuse(*args, **kwargs):
        raise AssertionError("something on the load path tried to unpickle")

    for module, name in ((torch, "load"), (torch.serialization, "load"), (pickle, "load"), (pickle, "loads"),
                         (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, refuse)


def test_loading_and_resuming_never_unpickle(masked_run, tmp_path, no_unpickling):
    pipe = TextDiffusionPipeline.from_pretrained(masked_run)
    assert len(pipe.generate(1, steps=2).texts) == 1
    run = tmp_path / "run"
    shutil.copytree(masked_run, run)
    raw = json.loads((run / "config.json").read_text())["recipe"]
    raw["out_dir"], raw["train"]["steps"] = str(run), raw["train"]["steps"] + 2
    train_recipe(recipe_from_dict(raw), resume=True, progress=False)
    assert json.loads((ckpt.list_checkpoints(run)[-1] / "state.json").read_text())["step"] == raw["train"]["steps"]


def test_the_package_never_calls_an_unpickler():
    pattern = re.compile(r"torch\.load\b|\bimport pickle\b|pickle\.(load|Unpickler)|weights_only|dill|joblib")
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "textdiff").rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_a_failed_checkpoint_write_leaves_the_previous_one_and_no_temporary(tmp_path, monkeypatch):
    files = {"model": ({"w": torch.ones(3)}, None)}
    ckpt.write_checkpoint(tmp_path, 1, files, {"step": 1}, keep=2)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", fail)
    with pytest.raises(OSError):
        ckpt.write_checkpoint(tmp_path, 2, files, {"step": 2}, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000001"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000001"]
    assert torch.equal(ckpt.load_tensors(tmp_path / "checkpoints/step_00000001/model.safetensors")["w"], torch.ones(3))


# --- properties: any config.json, any bytes named .safetensors: a result or a TextdiffError ----------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=10)
configs = st.one_of(
    json_values,
    st.fixed_dictionaries({"type": st.sampled_from(["textdiff", "other"]) | json_values,
                           "recipe": st.just({"data": {"path": "x.jsonl"}}) | json_values},
                          optional={"vocab_size": st.integers(-2, 70) | json_values, "max_len": st.integers(-2, 70) | json_values,
                                    "backend": st.sampled_from(["masked", "ar"]) | json_values}),
)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(cfg=configs)
def test_random_config_json_gives_a_config_or_textdiff_error(cfg, tmp_path_factory):
    run = tmp_path_factory.getbasetemp() / "fuzz-run"
    run.mkdir(exist_ok=True)
    (run / "config.json").write_text(json.dumps(cfg))
    try:
        out = rundir.read_config(run)
        recipe_from_dict(out["recipe"], "config.json")
    except TextdiffError as e:
        assert "\n" not in str(e)


def _valid_safetensors() -> bytes:
    from safetensors.torch import save

    return save({"a": torch.arange(6.0).view(2, 3), "b": torch.ones(4, dtype=torch.int64)}, metadata={"k": "v"})


@FUZZ
@given(data=st.data())
def test_damaged_safetensors_give_tensors_or_textdiff_error(data, tmp_path_factory):
    raw = bytearray(_valid_safetensors())
    how = data.draw(st.sampled_from(["truncate", "flip", "random", "header"]))
    if how == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    elif how == "random":
        raw = bytearray(data.draw(st.binary(max_size=64)))
    else:  # a header length that lies
        raw[:8] = data.draw(st.integers(0, 2 ** 64 - 1)).to_bytes(8, "little")
    path = tmp_path_factory.getbasetemp() / "fuzz.safetensors"
    path.write_bytes(bytes(raw))
    try:
        tensors = ckpt.load_tensors(path)
        ckpt.tensors_metadata(path)
    except TextdiffError as e:
        assert "\n" not in str(e)
        return
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
