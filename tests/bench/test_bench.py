"""`textdiff bench`: throughput covers every registered back-end beside GPT-2; the frontier covers every
sampler of a run's back-end and writes JSON, markdown and a PNG."""

from __future__ import annotations

import json

from textdiff.cli import main
from textdiff.noising import BACKENDS

TINY = ["--layers", "1", "--width", "16", "--heads", "2", "--vocab", "32", "--batch", "2", "--length", "8",
        "--steps", "1", "--rounds", "1"]


def test_throughput_times_every_backend_beside_gpt2(tmp_path, capsys):
    out = tmp_path / "tp.json"
    assert main(["bench", "throughput", *TINY, "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    for precision in ("fp32", "bf16"):
        rows = res["results"][precision]
        assert set(rows) == {f"textdiff {n}" for n in BACKENDS} | {"GPT2LMHeadModel"}
        assert rows["GPT2LMHeadModel"]["vs_gpt2"] == 1.0 and all(r["tok_per_s"] > 0 for r in rows.values())
        assert rows["textdiff ar"]["vs_ar"] == 1.0
    md = out.with_suffix(".md").read_text()
    assert "vs GPT-2" in md and "Machine" in md and "| textdiff masked |" in md


def test_frontier_covers_every_sampler_and_the_ar_line(masked_run, ar_run, tmp_path, capsys):
    out = tmp_path / "frontier"
    assert main(["bench", "frontier", str(masked_run), str(ar_run), "--steps", "2,4,64", "--num-samples", "2",
                 "--judge", str(ar_run), "--out-dir", str(out)]) == 0
    res = json.loads((out / "frontier.json").read_text())
    diffusion = [p for p in res["points"] if p["run"] == str(masked_run)]
    assert {p["sampler"] for p in diffusion} == set(BACKENDS["masked"].samplers)
    assert {p["steps"] for p in diffusion if p["sampler"] == "ancestral"} == {2, 4, 64}
    assert any(s["sampler"] == "confidence" and s["steps"] == 64 for s in res["skipped"])  # more steps than tokens
    ar = [p for p in res["points"] if p["run"] == str(ar_run)]
    assert len(ar) == 1 and ar[0]["causal"] and ar[0]["steps"] == 24
    assert all(p["genppl"] > 1 and p["wall_s"] > 0 and p["tokens_per_s"] > 0 for p in res["points"])
    assert (out / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert "| run | backend | sampler |" in (out / "frontier.md").read_text()


def test_frontier_drawn_without_a_judge_is_scored_later_like_a_judged_one(masked_run, ar_run, tmp_path, capsys):
    """--judge none keeps texts and ids (no scores, no plot); `bench judge` then gives exactly the scores a judged
    frontier has, and refuses to judge twice."""
    args = [str(masked_run), "--steps", "2,4", "--samplers", "ancestral", "--num-samples", "3"]
    judged, deferred = tmp_path / "judged", tmp_path / "deferred"
    assert main(["bench", "frontier", *args, "--judge", str(ar_run), "--out-dir", str(judged)]) == 0
    assert main(["bench", "frontier", *args, "--judge", "none", "--out-dir", str(deferred)]) == 0
    raw = json.loads((deferred / "frontier.json").read_text())
    assert raw["judge"] == "none" and not (deferred / "frontier.png").exists()
    assert all(p["genppl"] is None and len(p["texts"]) == len(p["ids"]) == 3 for p in raw["points"])
    assert "bench judge" in (deferred / "frontier.md").read_text()
    assert main(["bench", "judge", str(deferred / "frontier.json"), "--judge", str(ar_run)]) == 0
    a, b = (json.loads((d / "frontier.json").read_text()) for d in (judged, deferred))
    keys = ("sampler", "steps", "genppl", "entropy", "dist_2", "self_bleu", "judge_tokens")
    assert [[p[k] for k in keys] for p in a["points"]] == [[p[k] for k in keys] for p in b["points"]]
    assert a["references"] == b["references"] and b["judge"] == a["judge"]
    assert all("texts" not in p for p in b["points"]) and (deferred / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["bench", "judge", str(deferred / "frontier.json"), "--judge", str(ar_run)]) == 2  # already scored
    assert main(["bench", "judge", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert "already scored" in err and "missing.json" in err


def test_a_run_named_with_at_steps_is_sampled_at_those_steps_only(masked_run, tmp_path, capsys):
    out = tmp_path / "frontier"
    assert main(["bench", "frontier", str(masked_run), f"{masked_run}@3", "--steps", "2,4", "--samplers", "ancestral",
                 "--num-samples", "2", "--judge", "none", "--out-dir", str(out)]) == 0
    res = json.loads((out / "frontier.json").read_text())
    assert res["runs"] == [str(masked_run)] * 2 and res["steps"] == [2, 3, 4]
    assert [p["steps"] for p in res["points"]] == [2, 4, 3]
    assert main(["bench", "frontier", f"{masked_run}@0", "--judge", "none", "--out-dir", str(out)]) == 2
    assert "step counts must be > 0" in capsys.readouterr().err


def test_repeats_time_each_point_again_and_report_the_median(masked_run, ar_run, tmp_path, monkeypatch, capsys):
    """--repeats 3: every point drawn three times (its samples those of the first draw), its wall time the median."""
    from textdiff.evaluation import genppl

    seconds = iter([5.0, 1.0, 3.0] * 4)
    real = genppl.timed_generate
    monkeypatch.setattr(genppl, "timed_generate", lambda *a, **k: (real(*a, **k)[0], next(seconds)))
    out = tmp_path / "frontier"
    assert main(["bench", "frontier", f"{masked_run}@2", str(ar_run), "--samplers", "ancestral,ar", "--repeats", "3",
                 "--num-samples", "2", "--judge", "none", "--out-dir", str(out)]) == 0
    res = json.loads((out / "frontier.json").read_text())
    assert res["repeats"] == 3 and len(res["points"]) == 2
    assert all(p["wall_runs"] == [5.0, 1.0, 3.0] and p["wall_s"] == 3.0 for p in res["points"])
    assert "median of 3 draws" in (out / "frontier.md").read_text()
    assert main(["bench", "frontier", str(masked_run), "--repeats", "0"]) == 2
    assert main(["bench", "frontier", str(masked_run), "--repeats", "1.5"]) == 2
    assert "'1.5' is not a whole number" in capsys.readouterr().err


def test_bad_run_specs_are_refused_before_anything_is_sampled(masked_run, tmp_path, capsys):
    out = tmp_path / "frontier"
    for spec, message in [(f"{masked_run}#remasking=foo@2", "remasking='foo' is not allowed"),
                          (f"{masked_run}#temperature=abc@2", "temperature='abc' must be a float"),
                          (f"{masked_run}#temperature=-1@2", "temperature=-1"),
                          (f"{masked_run}#nope=1@2", "nope is not a sampling option"),
                          (f"{masked_run}#remasking=3@2", "choose one of low_confidence, random"),
                          (f"{masked_run}@abc", "step counts after @")]:
        assert main(["bench", "frontier", str(masked_run), spec, "--judge", "none", "--out-dir", str(out)]) == 2, spec
        assert message in capsys.readouterr().err, spec
    assert not out.exists()


def test_a_frontier_file_name_taken_by_a_folder_is_refused_before_sampling(masked_run, tmp_path, capsys):
    out = tmp_path / "frontier"
    (out / "frontier.md").mkdir(parents=True)
    (out / "frontier.json").write_text("{}")
    assert main(["bench", "frontier", f"{masked_run}@2", "--judge", "none", "--out-dir", str(out)]) == 2
    assert "frontier.md exists and is not a file" in capsys.readouterr().err
    assert (out / "frontier.json").read_text() == "{}"


def test_bench_refuses_bad_flags(masked_run, capsys):
    assert main(["bench", "throughput", "--backends", "nope"]) == 2
    assert main(["bench", "frontier", str(masked_run), "--steps", "4,x"]) == 2
    assert main(["bench", "frontier", str(masked_run), "--samplers", "nope"]) == 2


def test_a_run_spec_takes_each_step_count_once_and_a_directory_named_with_a_hash_whole(tmp_path):
    """RUN@2,2 samples the point once; a run directory whose name holds '#' is read whole, with or without
    options after it."""
    from textdiff.bench.frontier import run_spec

    assert run_spec("runs/x@2,2,4,2", (8,)) == ("runs/x", (2, 4), {})
    odd = tmp_path / "run#1"
    odd.mkdir()
    assert run_spec(str(odd), (8,)) == (str(odd), (8,), {})
    assert run_spec(f"{odd}#temperature=0.5@2", (8,)) == (str(odd), (2,), {"temperature": 0.5})
    assert run_spec(f"{tmp_path / 'plain'}#temperature=0.5", (8,)) == (str(tmp_path / "plain"), (8,),
                                                                      {"temperature": 0.5})
