"""benchmarks/frontier_target.py on a fixed frontier: the ratios to the AR point, the window (judge PPL <= 2 x AR's,
entropy within 2 % of real text's) and the cheapest point in it; an unjudged frontier is refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import frontier_target  # noqa: E402


def _point(sampler, steps, wall, ppl, entropy, causal=False, options=""):
    return {"sampler": sampler, "steps": steps, "wall_s": wall, "genppl": ppl, "entropy": entropy, "causal": causal,
            "options": options, "nfe": steps * 32}


def _frontier(*points):
    return {"points": [_point("ar", 128, 2.0, 200.0, 5.4, causal=True), *points],
            "references": {"kjv": {"entropy": 5.0}}}


def test_the_cheapest_point_inside_the_window_is_named(tmp_path, capsys):
    res = _frontier(_point("confidence", 1, 1.0, 900.0, 5.0),        # cheap, PPL too high
                    _point("ancestral", 2, 1.8, 390.0, 4.95, options="top_p=0.9"),  # in: 1.95 x, 1 % low
                    _point("confidence", 4, 3.0, 90.0, 4.5),         # entropy 10 % low
                    _point("ancestral", 4, 2.5, 300.0, 5.05))        # in, dearer
    path = tmp_path / "frontier.json"
    path.write_text(json.dumps(res))
    assert frontier_target.main([str(path), "--out", str(tmp_path / "t.md")]) == 0
    text = (tmp_path / "t.md").read_text()
    assert "Cheapest in the window: ancestral at 2 steps per block (top_p=0.9), 0.90 x AR's wall time." in text
    rows = [line for line in text.splitlines() if line.startswith("| confidence") or line.startswith("| ancestral")]
    assert [r.split(" | ")[-1] for r in rows] == ["no |", "yes |", "yes |", "no |"]  # cheapest first
    assert "| 0.50 | 900.0 | 4.50 |" in rows[0]


def test_no_point_in_the_window_is_said_and_an_unjudged_frontier_refused(tmp_path, capsys):
    path = tmp_path / "frontier.json"
    path.write_text(json.dumps(_frontier(_point("confidence", 2, 1.0, 500.0, 5.0))))
    assert frontier_target.main([str(path)]) == 0
    assert "No point lies in the window." in capsys.readouterr().out
    res = _frontier(_point("confidence", 2, 1.0, None, None))
    path.write_text(json.dumps(res))
    assert frontier_target.main([str(path)]) == 2
    assert "not judged yet" in capsys.readouterr().err
    assert frontier_target.main([str(tmp_path / "missing.json")]) == 2
