"""benchmarks/run_all.py's own logic on fixed inputs: variant parsing, the headline table, the README block."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import run_all  # noqa: E402


def _result(backend, causal, ppl, points):
    return {"backend": backend, "causal": causal, "tok_per_s": 1000.0, "ppl": ppl,
            "frontier": {"points": points, "references": {"kjv": {"ppl": 30.0, "entropy": 5.3}}}}


def _point(sampler, steps, genppl):
    return {"sampler": sampler, "steps": steps, "genppl": genppl, "entropy": 5.0, "wall_s": steps / 10}


def test_variants_name_a_recipe_and_overrides():
    args = SimpleNamespace(variant=["nosc=simplex:model.self_conditioning=false,train.lr=1e-3"])
    todo = run_all.entries(args)
    assert todo["nosc"] == ("simplex", ["model.self_conditioning=false", "train.lr=1e-3"])
    assert todo["masked"] == ("masked", [])
    for bad in ("nosc=nothing:a=b", "nosc=simplex", "=simplex:a=b"):
        with pytest.raises(SystemExit, match="NAME=RECIPE"):
            run_all.entries(SimpleNamespace(variant=[bad]))


def test_headline_reads_ratios_and_the_frontier_points():
    results = {
        "masked": _result("masked", False, {"ppl": 150.0, "exact": False, "stderr": 0.01, "time_draws": 32},
                          [_point("ancestral", s, 600.0 - s) for s in (4, 16, 64, 256)]),
        "ar": _result("ar", True, {"ppl": 50.0, "exact": True}, [_point("ar", 128, 160.0)]),
        "simplex": _result("simplex", False, None, [_point("simplex", s, 900.0) for s in (16, 64)]),
    }
    lines = run_all.headline(results, [16, 64, 256])
    masked = next(ln for ln in lines if ln.startswith("| masked"))
    assert "| 150.0 (± 0.0100 nats/token, 32 draws) | 3.00 | 1.00 |" in masked
    assert "584.0 / 5.00 (1.6 s)" in masked and "344.0 / 5.00 (25.6 s)" in masked
    ar = next(ln for ln in lines if ln.startswith("| ar"))
    assert ar.count("160.0 / 5.00") == 3  # the one KV-cache point in every column
    simplex = next(ln for ln in lines if ln.startswith("| simplex"))
    assert "no bound" in simplex and simplex.endswith("| 1,000 |") and "|  | 1,000 |" in simplex  # no 256 point
    assert lines[-1].startswith("| real test text") and "30.0 / 5.30" in lines[-1]


def test_readme_block_is_replaced_and_nothing_else(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# t\n\n<!-- run_all:start -->\nold\n<!-- run_all:end -->\ntail\n")
    run_all.update_readme(readme, "new table")
    assert readme.read_text() == "# t\n\n<!-- run_all:start -->\nnew table\n<!-- run_all:end -->\ntail\n"
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="run_all markers|needs one"):
        run_all.update_readme(readme, "x")
    assert readme.read_text() == "no markers\n"


import json  # noqa: E402

import paths  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_paths_are_written_relative(monkeypatch, tmp_path):
    monkeypatch.setenv("TEXTDIFF_DATA_DIR", str(tmp_path / "data"))
    assert paths.shown(ROOT / "recipes/kjv") == "recipes/kjv"
    assert paths.shown(tmp_path / "data/bible/kjv_asv.jsonl") == "$TEXTDIFF_DATA_DIR/bible/kjv_asv.jsonl"
    assert paths.shown(ROOT.parent / "runs-bench/masked-800") == "runs-bench/masked-800"  # beside the clone
    assert paths.shown("runs/x") == "runs/x" and paths.shown("/nowhere/known/run") == "run"
    assert paths.shown_argv(["--runs", str(ROOT / "runs/b"), f"--out={ROOT}/o.md", f"out_dir={ROOT}/r", "-n"]) == [
        "--runs", "runs/b", "--out=o.md", "out_dir=r", "-n"]
    res = paths.shown_frontier({"runs": [str(ROOT / "runs/a")], "points": [{"run": str(ROOT / "runs/a"), "x": 1}],
                                "skipped": [], "judge": str(ROOT / "x.gguf")})
    assert res == {"runs": ["runs/a"], "points": [{"run": "runs/a", "x": 1}], "skipped": [], "judge": "x.gguf"}


def cache_from_results(runs: Path) -> None:
    """run_all's cache for masked and AR, rebuilt from the committed results/kjv.md and its frontier."""
    merged = json.loads((ROOT / "benchmarks/results/kjv_frontier/frontier.json").read_text())
    res = runs / "results" / "800"
    for name, ppl, tok in (("masked", {"ppl": 163.3, "exact": False, "stderr": 0.0054, "time_draws": 32}, 4006),
                           ("ar", {"ppl": 53.5, "exact": True}, 3110)):
        run = runs / f"{name}-800"
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text(json.dumps({"tok_per_s": tok}) + "\n")
        points = [dict(p, run=str(run)) for p in merged["points"] if p["run"] == f"runs-bench/{name}-800"]
        (res / f"{name}-frontier").mkdir(parents=True)
        (res / f"{name}-frontier/frontier.json").write_text(json.dumps(dict(merged, runs=[str(run)], points=points)))
        (res / f"{name}-ppl.json").write_text(json.dumps({"ppl": ppl}))


def test_from_cache_reproduces_the_committed_rows_and_writes_no_absolute_path(tmp_path, monkeypatch):
    runs, out = tmp_path / "runs-bench", tmp_path / "out" / "kjv.md"
    cache_from_results(runs)
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--runs", str(runs), "--from-cache", "--only", "masked", "ar",
                                      "--variant", "none", "--skip", "throughput", "--out", str(out)])
    run_all.main()
    text, committed = out.read_text(), (ROOT / "benchmarks/results/kjv.md").read_text().splitlines()
    for name in ("| masked (", "| ar ("):
        assert next(ln for ln in text.splitlines() if ln.startswith(name)) in committed
    written = text + (out.parent / "kjv_frontier/frontier.md").read_text() + (out.parent / "kjv_frontier/frontier.json").read_text()
    assert str(tmp_path) not in written and str(ROOT) not in written and "/work/" not in written
    assert f"--runs {paths.shown(runs)} --from-cache" in text and not paths.shown(runs).startswith("/")
    assert f"| {paths.shown(runs)}/masked-800 | masked | ancestral | 16 |" in written
