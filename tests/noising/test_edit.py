"""The edit back-end (DiffusER-style edit scripts over an Edit-Flows alignment): the oracle script undoes the
corruption exactly, t -> 0 is the identity, edits grow with t, the sampler with an oracle predictor returns x0 (also
when infilling), the length-histogram report, training, and save/load through the pipeline."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tests.conftest import ROOT
from tests.tiny import SPECIAL, B, L, V, batch, make, sample
from tests.test_seq2seq import pair_corpus, seq2seq_recipe  # noqa: F401  (a fixture)
from textdiff.evaluation.lengths import format_histograms, length_histograms
from textdiff.noising import get_backend, options_for
from textdiff.noising.base import Batch
from textdiff.noising.edit import BLANK, DELETE, KEEP, REPLACE, EditDiffusion, apply_script, compact, fill_masks


def backend(**kw) -> EditDiffusion:
    return get_backend(options_for("edit", **kw), SPECIAL, V)


def seq2seq_batch(seed: int = 0, n: int = 64) -> Batch:
    """`source [SEP] target [EOS] [PAD]...` rows of random lengths: only the target and [EOS] count."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((n, 16), SPECIAL.pad)
    keep = torch.zeros_like(ids, dtype=torch.bool)
    for i in range(n):
        src, tgt = torch.randint(1, 6, (2,), generator=g).tolist()
        row = torch.randint(6, V, (src,), generator=g).tolist() + [SPECIAL.sep] + \
            torch.randint(6, V, (tgt,), generator=g).tolist() + [SPECIAL.eos]
        ids[i, :len(row)] = torch.tensor(row)
        keep[i, src + 1:len(row)] = True
    return Batch(ids, keep)


def undo(bk, c):
    """The oracle script applied to x_t: placeholders, then x0's tokens written into them in order."""
    y, *_ = apply_script(c.x_t, c.ops, c.counts, SPECIAL.mask, SPECIAL.pad)
    return fill_masks(y, compact(c.x0, y == SPECIAL.mask, SPECIAL.pad), SPECIAL.mask)


# --- the forward process and its oracle script ------------------------------------------------------------------


@pytest.mark.parametrize("prior", ["random", "empty", "source"])
@pytest.mark.parametrize("t", [0.05, 0.5, 0.95, 1.0])
def test_the_oracle_script_applied_to_x_t_returns_x0(prior, t):
    bk, b = backend(edit_prior=prior), seq2seq_batch()
    c = bk.corrupt_with_script(b.ids, torch.full((len(b.ids),), t), torch.Generator().manual_seed(1), b.loss_mask)
    assert torch.equal(undo(bk, c), c.x0)
    assert torch.equal(c.x0, b.ids)  # the clean layout is the batch itself
    src = b.ids.eq(SPECIAL.sep).long().cumsum(1) == 0
    assert torch.equal(c.x_t[src], b.ids[src])  # the source and [SEP] are never edited
    prefix = src.sum(1) + 1  # the source and [SEP]
    assert (c.ops[src] == KEEP).all() and (c.counts[torch.arange(17) < prefix[:, None]] == 0).all()


def test_the_oracle_script_undoes_packed_rows_and_drops_an_uncounted_tail():
    bk, b = backend(), batch()
    c = bk.corrupt_with_script(b.ids, torch.full((B,), 0.6), torch.Generator().manual_seed(0), b.loss_mask)
    assert torch.equal(undo(bk, c), c.x0)
    assert torch.equal(c.x0[1:], b.ids[1:]) and torch.equal(c.x0[0, :7], b.ids[0, :7])
    assert (c.x0[0, 7:] == SPECIAL.pad).all()


def test_corruption_at_t_zero_is_the_identity_with_an_empty_script():
    bk, b = backend(), seq2seq_batch()
    for t in (0.0, 1e-9):
        c = bk.corrupt_with_script(b.ids, torch.full((len(b.ids),), t), torch.Generator().manual_seed(0), b.loss_mask)
        assert torch.equal(c.x_t, b.ids) and (c.ops == KEEP).all() and c.counts.sum() == 0
        assert torch.equal(bk.corrupt(b.ids, torch.full((len(b.ids),), t), torch.Generator()), b.ids)


def test_every_kind_of_edit_grows_with_t():
    bk, n = backend(), 4000
    ids = torch.randint(6, V, (n, L), generator=torch.Generator().manual_seed(0))
    keep = torch.arange(L) < torch.randint(1, L + 1, (n, 1), generator=torch.Generator().manual_seed(1))
    ids = ids.masked_fill(~keep, SPECIAL.pad)
    rates = []
    for t in (0.1, 0.3, 0.5, 0.7, 0.9):
        c = bk.corrupt_with_script(ids, torch.full((n,), t), torch.Generator().manual_seed(2), keep)
        rates.append([float((c.ops == DELETE).sum()) / n, float((c.ops == REPLACE).sum()) / n,
                      float(c.counts.sum()) / n])
    for kind in range(3):
        per_t = [r[kind] for r in rates]
        assert per_t == sorted(per_t) and per_t[0] < 0.25 * per_t[-1], (kind, per_t)


def test_at_t_one_x_t_is_the_prior():
    n = 4000
    ids = torch.randint(6, V, (n, L), generator=torch.Generator().manual_seed(0))
    one = torch.ones(n)
    assert (backend(edit_prior="empty").corrupt(ids, one, torch.Generator()) == SPECIAL.pad).all()
    lengths = (backend().corrupt(ids, one, torch.Generator().manual_seed(0)) != SPECIAL.pad).sum(1)
    freq = torch.bincount(lengths, minlength=L + 1).double() / n  # uniform over 0..L, whatever x0 was
    assert (freq - 1 / (L + 1)).abs().max() < 0.03
    b = seq2seq_batch()
    src_tgt = backend(edit_prior="source").corrupt(b.ids, torch.ones(len(b.ids)), torch.Generator(), b.loss_mask)
    for row, x_1 in zip(b.ids.tolist(), src_tgt.tolist()):  # the target region holds a copy of the source
        s = row.index(SPECIAL.sep)
        assert x_1[:s + 1] == row[:s + 1] and x_1[s + 1:2 * s + 1] == row[:s]


def test_revision_keeps_what_the_source_and_target_share():
    """edit_prior=source aligns the target with its source by a longest common subsequence: a target equal to its
    source is never edited, and one that differs in a token keeps every other token at every t."""
    bk, b = backend(edit_prior="source"), seq2seq_batch()
    src = b.ids.eq(SPECIAL.sep).long().cumsum(1) == 0
    same = b.ids.clone()
    for r, row in enumerate(b.ids.tolist()):  # target := source [EOS]
        s = row.index(SPECIAL.sep)
        same[r, s + 1:] = SPECIAL.pad
        same[r, s + 1:2 * s + 2] = torch.tensor(row[:s] + [SPECIAL.eos])
    keep = ~src & (same != SPECIAL.pad) & (same != SPECIAL.sep)
    for t in (0.3, 1.0):
        c = bk.corrupt_with_script(same, torch.full((len(same),), t), torch.Generator().manual_seed(0), keep)
        assert torch.equal(c.x_t.masked_fill(c.x_t == SPECIAL.eos, SPECIAL.pad), same.masked_fill(same == SPECIAL.eos,
                                                                                                      SPECIAL.pad))
        assert (c.ops == KEEP).all() and (c.counts.sum(1) <= 1).all()  # at most the [EOS] is still to insert
    changed = same.clone()
    first = src.sum(1) + 1  # the first target token
    changed[torch.arange(len(same)), first] = 5 + (changed[torch.arange(len(same)), first] % 5) + 1
    c = bk.corrupt_with_script(changed, torch.ones(len(same)), torch.Generator().manual_seed(0), keep)
    n_edits = (c.ops != KEEP).sum(1) + c.counts.sum(1)
    assert (n_edits <= 3).all() and torch.equal(undo(bk, c), c.x0)  # [EOS] and the changed token at most


def test_lcs_align_is_a_longest_common_subsequence():
    """The revision alignment against a plain dynamic programme: its columns spell data over noise in order, the
    columns holding a token in both rows hold the same token, and there are as many of them as the LCS is long,
    also for empty rows and for alignments longer than L (only C is whole then)."""
    def lcs(a, b):
        row = [0] * (len(b) + 1)
        for x in a:
            prev, row = row, [0]
            for j, y in enumerate(b):
                row.append(max(row[-1], prev[j + 1], prev[j] + (x == y)))
        return row[-1]

    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        Bn, Ln, vocab = 4, int(torch.randint(1, 12, (1,), generator=g)), int(torch.randint(1, 4, (1,), generator=g))
        n, m = torch.randint(0, Ln + 1, (Bn,), generator=g), torch.randint(0, Ln + 1, (Bn,), generator=g)
        data, noise = torch.randint(0, vocab, (Bn, Ln), generator=g), torch.randint(0, vocab, (Bn, Ln), generator=g)
        top, bottom, C = backend().lcs_align(data, n, noise, m)
        for r in range(Bn):
            d, z = data[r, :n[r]].tolist(), noise[r, :m[r]].tolist()
            assert C[r] == len(d) + len(z) - lcs(d, z)
            cols = min(int(C[r]), Ln)
            tr, br = top[r, :cols].tolist(), bottom[r, :cols].tolist()
            assert all(a == b for a, b in zip(tr, br) if a != BLANK and b != BLANK)
            assert all(a == BLANK and b == BLANK for a, b in zip(top[r, cols:].tolist(), bottom[r, cols:].tolist()))
            if C[r] <= Ln:
                assert [a for a in tr if a != BLANK] == d and [b for b in br if b != BLANK] == z
                assert sum(a != BLANK and b != BLANK for a, b in zip(tr, br)) == lcs(d, z)


# --- the sampler -------------------------------------------------------------------------------------------------


def levenshtein_script(a: list[int], b: list[int]) -> tuple[list[int], list[int]]:
    """A shortest edit script a -> b: an op per token of a and an insertion count per gap (len(a) + 1)."""
    n, m = len(a), len(b)
    D = [[i + j if i * j == 0 else 0 for j in range(m + 1)] for i in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            D[i][j] = min(D[i - 1][j] + 1, D[i][j - 1] + 1, D[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    ops, counts, i, j = [KEEP] * n, [0] * (n + 1), n, m
    while i or j:
        if i and j and D[i][j] == D[i - 1][j - 1] + (a[i - 1] != b[j - 1]):
            ops[i - 1] = KEEP if a[i - 1] == b[j - 1] else REPLACE
            i, j = i - 1, j - 1
        elif i and D[i][j] == D[i - 1][j] + 1:
            ops[i - 1], i = DELETE, i - 1
        else:
            counts[i], j = counts[i] + 1, j - 1
    return ops, counts


class OracleEdit(EditDiffusion):
    """The edit back-end with the model replaced by the truth: a shortest script from the state to x0, and x0's
    tokens for the placeholders."""

    def __init__(self, x0: torch.Tensor, **kw):
        bk = backend(**kw)
        super().__init__(bk.cfg, bk.special, bk.vocab_size)
        self.x0 = x0

    def script_logits(self, model, x_t, t):
        ops = torch.zeros(*x_t.shape, 3)
        counts = torch.zeros(x_t.shape[0], x_t.shape[1] + 1, self.cfg.max_insert + 1)
        for r, (a, b) in enumerate(zip(x_t.tolist(), self.x0.tolist())):
            o, c = levenshtein_script([v for v in a if v != SPECIAL.pad], [v for v in b if v != SPECIAL.pad])
            ops[r, torch.arange(len(o)), o] = 50.0
            counts[r, torch.arange(len(c)), c] = 50.0
        return ops, counts

    def token_logits(self, model, y, t):
        return 50.0 * torch.nn.functional.one_hot(self.x0, V).float()


def targets(seed: int = 0) -> torch.Tensor:
    """(B, L) clean rows of different lengths, [PAD] after."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, V, (B, L), generator=g)
    return ids.masked_fill(torch.arange(L) >= torch.tensor([[L], [3], [7], [1]]), SPECIAL.pad)


@pytest.mark.parametrize("opts", [{}, {"steps": 1}, {"top_p": 0.5}, {"temperature": 0.0}, {"top_k": 2},
                                  {"joint_edits": True}])
@pytest.mark.parametrize("prior", ["random", "empty"])
def test_sampler_with_an_oracle_returns_x0(opts, prior):
    x0 = targets()
    bk = OracleEdit(x0, edit_prior=prior)
    lengths = []
    out = sample("edit", None, bk, bk.prior((B, L)), callback=lambda i, xs, p: lengths.append((xs != 0).sum(1)),
                 **{"steps": 6, **opts})
    assert torch.equal(out, x0)
    assert len({tuple(n.tolist()) for n in lengths}) > 1 or opts.get("steps") == 1  # lengths change on the way


def test_joint_edits_apply_each_run_of_adjacent_edits_whole_or_not_at_all():
    """State 7 8 9 10 11: delete 8 and 9 and insert one token after them (one run), keep 10, replace 11 (a second
    run). Independent coins split the first run; joint ones never do, and the runs still go apart."""
    from textdiff.noising.edit import FREE, EditState, Script

    bk, n = backend(), 400
    ids = torch.tensor([[7, 8, 9, 10, 11] + [SPECIAL.pad] * (L - 5)] * n)
    state = EditState(ids, torch.full_like(ids, FREE), torch.ones(n, L + 1, dtype=torch.bool))
    ops = torch.zeros_like(ids)
    ops[:, 1:3], ops[:, 4] = DELETE, REPLACE
    counts = torch.zeros(n, L + 1, dtype=torch.long)
    counts[:, 3] = 1  # before 10
    x0 = torch.tensor([[7, 20, 10, 21] + [SPECIAL.pad] * (L - 4)] * n)
    for joint in (False, True):
        out = bk.apply(state, Script(ops, counts), x0, 0.5, 0.25, torch.Generator().manual_seed(0), joint=joint)
        rows = {tuple(v for v in r if v != SPECIAL.pad) for r in out.ids.tolist()}
        whole = {(7, 8, 9, 10, 11), (7, 20, 10, 11), (7, 8, 9, 10, 21), (7, 20, 10, 21)}
        assert rows == whole if joint else rows > whole


def test_sampler_infills_a_span_of_unknown_length_and_fixed_slots_with_an_oracle():
    """Template `7 8 [MASK] 9 [...]`: the given tokens stay, the slot stays one token, the span grows to fit."""
    x0 = torch.tensor([[7, 8, 20, 9, 11, 12, 13, 14, 0, 0], [7, 8, 21, 9, 0, 0, 0, 0, 0, 0],
                       [7, 8, 22, 9, 15, 0, 0, 0, 0, 0], [7, 8, 23, 9, 16, 17, 18, 19, 20, 21]])
    bk = OracleEdit(x0)
    x = torch.tensor([[7, 8, SPECIAL.mask, 9] + bk.open_hole(6)] * B)
    seen = []
    out = sample("edit", None, bk, x, steps=5, callback=lambda i, xs, p: seen.append(xs.clone()))
    assert torch.equal(out, x0)
    assert all(torch.equal(s[:, [0, 1, 3]], x[:, [0, 1, 3]]) for s in seen)


def test_sampler_refuses_blocks_and_guidance():
    model, bk = make("edit")
    with pytest.raises(ValueError, match="block_size"):
        sample("edit", model, bk, bk.prior((B, L)), steps=4, block_size=4)
    with pytest.raises(ValueError, match="guidance"):
        sample("edit", model, bk, bk.prior((B, L)), steps=4, guidance=lambda out, x, t: out)


def test_untrained_samples_are_packed_rows_of_real_tokens():
    model, bk = make("edit")
    out = sample("edit", model, bk, bk.prior((8, L)), steps=4)
    lengths = (out != SPECIAL.pad).sum(1)
    assert all((row[n:] == SPECIAL.pad).all() and (row[:n] != SPECIAL.pad).all() for row, n in zip(out, lengths))
    assert not torch.isin(out, torch.tensor([SPECIAL.mask, SPECIAL.bos, SPECIAL.sep])).any()


# --- length report, recipes, training and the pipeline -----------------------------------------------------------


def test_a_span_of_unknown_length_is_refused_by_a_fixed_length_back_end():
    from textdiff.config import DataConfig, Recipe
    from textdiff.errors import TextdiffError
    from textdiff.pipeline import TextDiffusionPipeline

    model, bk = make("masked")
    pipe = TextDiffusionPipeline(Recipe(data=DataConfig(path="unused.jsonl")), model, bk, tokenizer=None)
    with pytest.raises(TextdiffError, match=r"^infill template: \[\.\.\.\] .* the masked back-end .* \[MASK:n\]$"):
        pipe.infill("In the beginning [...] the earth.")


def test_a_recipe_whose_infill_has_a_span_needs_a_variable_length_back_end():
    from textdiff.config import recipe_from_dict
    from textdiff.errors import TextdiffError

    raw = {"data": {"path": "x.jsonl"}, "sample": {"infill": "In the beginning [...] the earth."}}
    with pytest.raises(TextdiffError, match=r"sample.infill: \[\.\.\.\] .* the masked back-end"):
        recipe_from_dict(raw)
    assert recipe_from_dict({**raw, "backend": {"name": "edit"}}).sample.infill.endswith("earth.")


def test_length_histograms_report_both_distributions_on_shared_bins():
    rep = length_histograms([3, 3, 4, 9], [3, 4, 4, 4], bin_width=2)
    assert rep["bins"] == [0, 2, 4, 6, 8]
    assert rep["data"] == [0, 0.5, 0.25, 0, 0.25] and rep["samples"] == [0, 0.25, 0.75, 0, 0]
    assert rep["tv"] == pytest.approx(0.5) and rep["mean_data"] == 4.75 and rep["mean_samples"] == 3.75
    text = format_histograms(rep)
    assert "TV 0.500" in text and len(text.splitlines()) == 4


def tiny_edit_recipe(corpus, out_dir) -> dict:
    """recipes/tiny/edit.yaml on the synthetic corpus."""
    raw = yaml.safe_load((ROOT / "recipes/tiny/edit.yaml").read_text())
    raw["data"] = {"path": str(corpus), "text_field": "text", "split_field": "split", "max_length": 24, "mode": "pad"}
    raw["tokenizer"] = {"kind": "wordlevel", "vocab_size": 64, "min_frequency": 1}
    raw["out_dir"] = str(out_dir)
    return raw


@pytest.fixture(scope="module")
def edit_run(tmp_path_factory, corpus):
    from textdiff.config import recipe_from_dict
    from textdiff.training import train_recipe

    raw = tiny_edit_recipe(corpus, tmp_path_factory.mktemp("runs") / "edit")
    raw["train"].update(steps=120, eval_every=40, log_every=10, checkpoint_every=60)
    return train_recipe(recipe_from_dict(raw), progress=False)


def test_training_lowers_the_loss(edit_run):
    rows = [json.loads(ln) for ln in (edit_run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) >= 6 and sum(losses[-3:]) / 3 < 0.7 * losses[0], losses  # 2.6 -> 1.3 nats per token


def test_pipeline_round_trip_samples_infill_and_length_report(edit_run):
    from textdiff.evaluation.lengths import length_report
    from textdiff.pipeline import TextDiffusionPipeline

    pipe = TextDiffusionPipeline.from_pretrained(edit_run)
    again = TextDiffusionPipeline.from_pretrained(edit_run)
    a, b = (p.generate(4, steps=8, seed=3) for p in (pipe, again))
    assert torch.equal(a.ids, b.ids) and a.texts == b.texts
    assert pipe.backend.name == "edit" and len(set((a.ids != 0).sum(1).tolist())) >= 1
    filled = pipe.infill("the old [...] the river.", num_samples=3, steps=8).texts
    assert all(t.startswith("the old") and t.endswith("the river.") for t in filled), filled
    fixed = pipe.infill("the [MASK:2] sees the river.", num_samples=2, steps=8)
    assert all(len(t.split()) == 6 for t in fixed.texts), fixed.texts
    rep = length_report(pipe, num_samples=16, steps=8)
    assert rep["n_samples"] == 16 and rep["n_data"] == 80 and 0 <= rep["tv"] <= 1
    assert abs(rep["mean_samples"] - rep["mean_data"]) < 0.5 * rep["mean_data"], rep


def test_joint_edits_default_from_the_recipe_and_either_flag_overrides_it(edit_run):
    import dataclasses

    from textdiff.cli import _sample_opts, build_parser
    from textdiff.pipeline import TextDiffusionPipeline

    pipe = TextDiffusionPipeline.from_pretrained(edit_run)
    sample = pipe.recipe.sample
    pipe.recipe = dataclasses.replace(pipe.recipe, sample=dataclasses.replace(sample, options={"joint_edits": True}))
    for flags, want in (([], True), (["--joint-edits"], True), (["--no-joint-edits"], False)):
        opts = _sample_opts(build_parser().parse_args(["sample", str(edit_run), *flags]))
        assert pipe.options(**opts).options["joint_edits"] is want, flags


# --- revision (seq2seq, the target starts as the source) ---------------------------------------------------------


def test_revision_starts_from_a_copy_of_the_source():
    bk = backend(edit_prior="source")
    x = torch.tensor([[7, 8, 9, SPECIAL.sep] + bk.open_hole(6), [10, SPECIAL.sep] + bk.open_hole(8)])
    state = bk.start(None, x, torch.Generator().manual_seed(0))
    assert state.ids.tolist() == [[7, 8, 9, SPECIAL.sep, 7, 8, 9, 0, 0, 0], [10, SPECIAL.sep, 10] + [0] * 7]
    assert bk.gap_open(state)[0].tolist() == [False] * 4 + [True] * 4 + [False] * 3


def test_a_revision_run_trains_and_translates(tmp_path, pair_corpus):
    from textdiff.config import recipe_from_dict
    from textdiff.pipeline import TextDiffusionPipeline
    from textdiff.training import train_recipe

    raw = seq2seq_recipe(pair_corpus, tmp_path / "run", "edit", steps=40)
    raw["backend"].update(edit_prior="source", max_insert=16)
    raw["data"]["pad_in_loss"] = False
    raw["model"]["time_conditioning"] = True
    raw["train"]["cond_dropout"] = 0.0
    raw["sample"] = {"sampler": "edit", "steps": 4, "temperature": 0.0}
    pipe = TextDiffusionPipeline.from_pretrained(train_recipe(recipe_from_dict(raw), progress=False))
    out = pipe.translate(["king sees river", "stone keeps city"], steps=4)
    assert len(out.texts) == 2 and out.ids.shape == (2, 16)
    assert out.ids[0, :4].tolist() == pipe.tokenizer.convert_tokens_to_ids(["king", "sees", "river", "[SEP]"])
    with pytest.raises(Exception, match="guidance"):
        pipe.translate(["king sees river"], guidance_scale=1.0)


def test_eval_reports_the_length_histograms_through_the_cli(edit_run, tmp_path, capsys):
    from textdiff.cli import main

    out = tmp_path / "eval.json"
    assert main(["eval", str(edit_run), "--metrics", "ppl,lengths", "--num-samples", "8", "--steps", "4",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ppl: n/a" in printed and "TV " in printed and "samples" in printed
    res = json.loads(out.read_text())
    assert res["lengths"]["n_samples"] == 8 and len(res["lengths"]["data"]) == len(res["lengths"]["samples"])
    assert "| length TV (data vs samples) |" in out.with_suffix(".md").read_text()
