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


def test_frontiers_of_other_seeds_are_pooled_before_the_window(tmp_path):
    """A point inside the window at one seed only (a lucky draw of 16 samples) is outside on the pooled ratios:
    judge PPL pooled as the geometric mean of its ratios to each seed's AR, entropy as the mean ratio."""
    lucky = [_point("confidence", 2, 1.0, 380.0, 5.0), _point("confidence", 2, 1.0, 600.0, 5.0)]
    steady = [_point("ancestral", 4, 1.6, 300.0, 5.05), _point("ancestral", 4, 1.4, 330.0, 4.98)]
    first = _frontier(lucky[0], steady[0])
    second = _frontier(lucky[1], steady[1], _point("ancestral", 8, 3.0, 200.0, 5.0))  # the last at this seed only
    second["points"][0] = _point("ar", 128, 2.0, 250.0, 5.4, causal=True)  # this seed's AR
    paths = []
    for i, res in enumerate((first, second)):
        paths.append(tmp_path / f"f{i}.json")
        paths[-1].write_text(json.dumps({**res, "seed": i}))
    assert frontier_target.main([*map(str, paths), "--out", str(tmp_path / "t.md")]) == 0
    text = (tmp_path / "t.md").read_text()
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    lucky_row, steady_row = rows["| confidence"], rows["| ancestral"]
    assert lucky_row.endswith("| no | 1/2 |")  # ratios 1.9 and 2.4: geometric mean 2.14
    assert "| 2.14 |" in lucky_row and "| 0.50 |" in lucky_row
    assert steady_row.endswith("| yes | 2/2 |") and "| 0.75 |" in steady_row  # median of 0.8 and 0.7
    assert "Cheapest in the window: ancestral at 4 steps" in text
    assert "left out: ancestral 8 -" in text and "seeds 0, 1" in text
