"""Edit diffusion: corruption by insertions, deletions and replacements, denoising by predicted edit scripts.
DiffusER (Reid et al. 2022) and the Levenshtein Transformer (Gu et al. 2019) in their prediction; the noise is a
continuous-time process over aligned sequences in the manner of Edit Flows (Havasi et al. 2025).

Forward: x0 (the n counted tokens) and a noise sequence z (m tokens: `edit_prior` random, empty or the seq2seq
source) are laid out as C = n + m - k aligned columns (top, bottom) in a uniformly random order: k columns (x0_i, z_j)
pair a data token with a noise token, n - k hold a data token over a blank ε, m - k a noise token under ε. At time t
each column independently shows its top (data) row with probability alpha(t), else its bottom (noise) row, and
x_t is the visible row with the blanks dropped. So x_0 = x0 and x_1 = z; a hidden column is
    (d, z) a replacement of d by z,   (d, ε) a deletion of d,   (ε, z) an insertion of z,
each present w.p. 1 - alpha(t): every kind of edit grows with t. k is uniform over the values that keep
|x_t| <= C within the room (data.max_length less any frozen prefix). With `edit_prior: source` (revision) the
columns instead follow a longest common subsequence of target and source, where it fits the room: shared tokens
share a column and are never edited, so the noise path from the KJV verse to the ASV one edits only where they
differ.

Oracle script: x_t -> x0 is, per token of x_t, keep / delete / replace, and per gap (before each token, and after
the last) the number of tokens to insert; applying it turns x_t into the placeholder sequence y (x0 with [MASK]
where a token is replaced or inserted) and writing x0's tokens into those [MASK]s gives x0 exactly.

Model: the shared transformer with two small heads on its hidden states (in `model.noise`): ops, 3 logits per token,
and inserts, max_insert + 1 logits per gap from the gap's two neighbours (Levenshtein Transformer's placeholder
classifier); the vocab head fills y's [MASK]s (a masked-diffusion denoiser over y). Loss: cross-entropies of the
oracle script on x_t and of x0's tokens at y's [MASK]s; each sequence of a batch trains one of the two passes (a
random half each), so a training step costs one forward over the batch, like an AR step.

Reverse step t -> s: draw a script from the heads, fill its [MASK]s from the vocab head (x0_hat), then apply each
edit of the script w.p. (alpha_s - alpha_t) / (1 - alpha_t), the chance that a column hidden at t shows its data
row at s; at s = 0 every edit applies, so the last step lands on x0_hat.

Why DiffusER-style prediction and not Edit Flows' rates: a predicted insertion count with placeholders inserts any
number of tokens into a gap in one step, so a step from any t to 0 reaches the predicted x0 exactly (tau-leaping
on Edit Flows' rates inserts one token per gap per step), and the token pass is the masked denoiser every other
token back-end already trains. The price: no likelihood bound (`bound` is not offered; evaluate with gen-PPL) and
two model calls per sampling step. Self-conditioning and guidance are not used by this back-end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from textdiff.noising import register
from textdiff.noising.base import Backend, Batch, DiscreteOptions, LossOutput, draw, real_token_mask
from textdiff.noising.uniform import UniformDiffusion
from textdiff.options import check_choice, check_positive
from textdiff.schedules import get_schedule

KEEP, DELETE, REPLACE = 0, 1, 2
BLANK = -1
"""ε in the alignment's rows."""
FREE, GIVEN, SLOT = 0, 1, 2
"""Sampling: a token the sampler wrote in an open span (any edit), a given one (never edited), a [MASK] slot (only
replaced: the hole keeps its length)."""


class EditHeads(nn.Module):
    """The edit back-end's heads on the shared transformer's hidden states (B, L, D)."""

    def __init__(self, cfg, model_cfg, vocab_size: int):
        super().__init__()
        D = model_cfg.n_embd
        self.ops = nn.Linear(D, 3)
        self.inserts = nn.Linear(2 * D, cfg.max_insert + 1)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, 3) op logits per token and (B, L + 1, K + 1) insertion-count logits per gap; gap g lies between
        tokens g - 1 and g and reads both hidden states (zeros past the ends)."""
        hp = F.pad(h, (0, 0, 1, 1))  # (B, L + 2, D)
        return self.ops(h), self.inserts(torch.cat([hp[:, :-1], hp[:, 1:]], dim=-1))


# --- batched edits on padded rows -------------------------------------------------------------------------------


def compact(x: torch.Tensor, keep: torch.Tensor, fill: int) -> torch.Tensor:
    """Left-pack the kept entries of each row of x (B, W), `fill` after them: (B, W)."""
    B, W = x.shape
    pos = torch.where(keep, keep.long().cumsum(1) - 1, W)  # dropped entries go to a spare column
    return x.new_full((B, W + 1), fill).scatter_(1, pos, x)[:, :W]


def shift_right(x: torch.Tensor, by: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """Row b of x (B, W) moved right by by[b], the first by[b] entries taken from head (B, W)."""
    col = torch.arange(x.shape[1], device=x.device)
    return torch.where(col < by[:, None], head, x.gather(1, (col - by[:, None]).clamp_min(0)))


def interleave(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Where the W tokens of a row land when counts (B, W + 1) new entries go into each gap (gap g before token g):
    pos (B, W), is_new (B, W2) and the merged width W2. Tokens past a row's end land after all its new entries."""
    B, W1 = counts.shape
    pos = torch.arange(W1 - 1, device=counts.device) + counts[:, :-1].cumsum(1)  # (B, W)
    total = counts.sum(1)
    width = W1 - 1 + int(total.max())
    is_tok = torch.zeros(B, width, dtype=torch.bool, device=counts.device).scatter_(1, pos, True)
    inside = torch.arange(width, device=counts.device) < (W1 - 1 + total)[:, None]
    return pos, ~is_tok & inside, width


def clip_counts(counts: torch.Tensor, room: torch.Tensor) -> torch.Tensor:
    """counts (B, G) cut from the left so that each row inserts at most room (B,) tokens in all."""
    return counts.cumsum(1).clamp(max=room.clamp_min(0)[:, None]).diff(dim=1, prepend=counts[:, :1] * 0)


def apply_script(ids: torch.Tensor, ops: torch.Tensor, counts: torch.Tensor, mask_id: int, pad_id: int):
    """The placeholder sequence y (B, L): ids (B, L) with DELETE tokens dropped, REPLACE tokens and counts (B, L + 1)
    inserted tokens as [MASK]. Also returns pos, is_new, kept (B, W2), for mapping y back onto the merged layout."""
    B, L = ids.shape
    pos, is_new, width = interleave(counts)
    real = ids != pad_id
    merged = ids.new_full((B, width), mask_id).scatter_(1, pos, torch.where(ops == REPLACE, mask_id, ids))
    kept = is_new.clone().scatter_(1, pos, real & (ops != DELETE))
    return compact(merged, kept, pad_id)[:, :L], pos, is_new, kept


def fill_masks(y: torch.Tensor, tokens: torch.Tensor, mask_id: int) -> torch.Tensor:
    """y (B, L) with its [MASK]s, in order, replaced by tokens (B, L) (entry j of a row fills its j-th [MASK])."""
    masked = y == mask_id
    return torch.where(masked, tokens.gather(1, (masked.long().cumsum(1) - 1).clamp_min(0)), y)


@dataclass
class Corruption:
    """x0 -> x_t with its oracle script; all (B, L) but counts (B, L + 1)."""

    x_t: torch.Tensor
    ops: torch.Tensor
    """KEEP / DELETE / REPLACE per token of x_t."""
    counts: torch.Tensor
    """Tokens to insert per gap of x_t (gap g before token g)."""
    y: torch.Tensor
    """The placeholder sequence: x0 with [MASK] where the script writes a token."""
    x0: torch.Tensor
    """The clean sequence (frozen prefix, counted tokens, [PAD])."""
    prefix: torch.Tensor
    """(B,) length of the frozen prefix (a seq2seq source and [SEP])."""


@dataclass
class EditState:
    """A sampling state: ids (B, L) left-packed, [PAD] after; kind (B, L) FREE / GIVEN / SLOT per token; span_open
    (B, L + 1) whether the segment between the k-th and (k+1)-th non-FREE token is a span of unknown length."""

    ids: torch.Tensor
    kind: torch.Tensor
    span_open: torch.Tensor


@dataclass
class Script:
    ops: torch.Tensor
    """(B, L) KEEP / DELETE / REPLACE."""
    counts: torch.Tensor
    """(B, L + 1) insertions per gap."""


@dataclass(frozen=True)
class EditOptions(DiscreteOptions):
    """The edit back-end's keys."""

    edit_prior: str = "random"
    """The sequence x_1 that noise edits toward and sampling starts from. `random`: real tokens of a length drawn
    uniformly up to the room left; `empty`: nothing (generation only inserts); `source` (seq2seq): a copy of the
    source, so sampling revises the source into the target."""
    max_insert: int = 128
    """Most tokens one step inserts into one gap (the insertion-count head has max_insert + 1 classes)."""

    def __post_init__(self):
        super().__post_init__()
        check_choice("backend.edit_prior", self.edit_prior, ("random", "empty", "source"))
        check_positive("backend.max_insert", self.max_insert)


@register("edit")
class EditDiffusion(Backend):
    Options = EditOptions
    default_sampler = "edit"
    samplers = ("edit",)
    has_bound = False
    variable_length = True
    self_conditioning = False

    def __init__(self, cfg, special, vocab_size):
        super().__init__(cfg, special, vocab_size)
        self.schedule = get_schedule(cfg.schedule_name())
        self.real = real_token_mask(special, vocab_size)
        self.real_ids = self.real.nonzero()[:, 0]
        self.n_real = len(self.real_ids)
        self.span_id = special.bos
        """Sampler inputs: a span of unknown length (the `[...]` of an infill template)."""

    noise_tokens = UniformDiffusion.noise_tokens

    @classmethod
    def check_recipe(cls, recipe) -> None:
        super().check_recipe(recipe)
        if recipe.backend.edit_prior == "source" and recipe.data.source_field is None:
            raise ValueError("backend.edit_prior=source revises the source into the target: it needs a seq2seq recipe "
                             "(data.source_field); use random or empty")

    @classmethod
    def modules(cls, cfg, model_cfg, vocab_size):
        return EditHeads(cfg, model_cfg, vocab_size)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self.schedule.alpha(t.double()).clamp(0.0, 1.0)

    # --- the forward process -----------------------------------------------------------------------------------

    def _layout(self, ids: torch.Tensor, keep: torch.Tensor):
        """The frozen prefix length P (B,): the uncounted positions before the first counted one; the content (B, L):
        the counted non-[PAD] tokens, left-packed; and its length n (B,)."""
        prefix = (~keep).long().cumprod(1).sum(1)
        content_mask = keep & (ids != self.special.pad)
        return prefix, compact(ids, content_mask, self.special.pad), content_mask.sum(1)

    def _noise(self, ids, prefix, room, generator):
        """The noise sequence z (B, L) left-packed and its length m (B,), per `edit_prior`."""
        B, L = ids.shape
        if self.cfg.edit_prior == "source":
            col = torch.arange(L, device=ids.device)
            src = (col < prefix[:, None]) & (ids != self.special.pad) & (ids != self.special.sep)
            return compact(ids, src, self.special.pad), src.sum(1).minimum(room)
        z = self.noise_tokens((B, L), generator, ids.device)
        if self.cfg.edit_prior == "empty":
            return z, torch.zeros_like(room)
        return z, (torch.rand(B, generator=generator, device=ids.device) * (room + 1)).long().minimum(room)

    def align(self, data, n, noise, m, room, generator):
        """A random alignment: rows top, bottom (B, L) of data (or BLANK) over noise (or BLANK), C = n + m - k columns
        in a uniformly random order, k uniform in [max(0, n + m - room), min(n, m)]."""
        B, L = data.shape
        lo = (n + m - room).clamp_min(0)
        k = lo + (torch.rand(B, generator=generator, device=data.device) * (torch.minimum(n, m) - lo + 1)).long()
        k = torch.minimum(k, torch.minimum(n, m))
        col = torch.arange(L, device=data.device)
        C = n + m - k
        role = torch.where(col < k[:, None], 0, torch.where(col < n[:, None], 1, 2))  # 0 pair, 1 data, 2 noise
        scores = torch.rand(B, L, generator=generator, device=data.device).masked_fill(col >= C[:, None], 2.0)
        role = role.gather(1, scores.argsort(1)).masked_fill(col >= C[:, None], -1)  # shuffled within the C columns
        has_d, has_z = (role == 0) | (role == 1), (role == 0) | (role == 2)
        top = torch.where(has_d, data.gather(1, (has_d.long().cumsum(1) - 1).clamp_min(0)), BLANK)
        bottom = torch.where(has_z, noise.gather(1, (has_z.long().cumsum(1) - 1).clamp_min(0)), BLANK)
        return top, bottom

    @staticmethod
    def lcs_table(data, n, noise, m) -> torch.Tensor:
        """D (B, N + 1, M + 1): D[i, j] the longest common subsequence of data[:i] and noise[:j]. Row by row, each
        row one cummax: D[i, j] = max_{j' <= j} max(D[i-1, j'], D[i-1, j'-1] + [data_i = noise_j'])."""
        B, N = data.shape
        M = noise.shape[1]
        eq = (data[:, :, None] == noise[:, None, :]) & (torch.arange(M, device=data.device) < m[:, None])[:, None]
        rows = [torch.zeros(B, M + 1, dtype=torch.long, device=data.device)]
        for i in range(int(n.max())):
            prev = rows[-1]
            a = torch.maximum(prev[:, 1:], prev[:, :-1] + eq[:, i].long())
            rows.append(F.pad(a, (1, 0)).cummax(1).values)
        return torch.stack(rows, 1)  # (B, max n + 1, M + 1)

    def lcs_align(self, data, n, noise, m):
        """The alignment of a longest common subsequence: matched tokens share a column (never edited), the others
        get a column of their own over or under a blank, in sequence order (C = n + m - LCS columns; the first L are
        returned). The backtrack through D is a pointer per cell (diagonal on a match, else up or left), and the
        path from (n, m) to (0, 0) is read off by pointer doubling: log2(n + m) gathers over the table, not one
        iteration per column (each a dozen small kernels, which dominated a GPU training step)."""
        B, L = data.shape
        D = self.lcs_table(data, n, noise, m)  # (B, N + 1, M + 1)
        N1, M1 = D.shape[1], D.shape[2]
        i = torch.arange(N1, device=data.device)[:, None]
        j = torch.arange(M1, device=data.device)
        d_prev = data[:, (i - 1).clamp_min(0)[:, 0]][:, :, None]  # data[i - 1] per row i (B, N + 1, 1)
        z_prev = noise[:, (j - 1).clamp_min(0)][:, None, :]  # noise[j - 1] per column j (B, 1, M + 1)
        diag = (i > 0) & (j > 0) & (d_prev == z_prev)  # equal last tokens always extend an LCS of the rest
        up = ~diag & (i > 0) & ((j == 0) | (F.pad(D[:, :-1], (0, 0, 1, 0)) == D))
        step_i, step_j = diag | up, diag | (~up & (j > 0))  # the move back from each cell: a row, a column or both
        nxt = (i * M1 + j - step_i.long() * M1 - step_j.long()).flatten(1)  # (0, 0) points to itself
        C = n + m - D[torch.arange(B, device=data.device), n, m]
        path = (n * M1 + m)[:, None]  # path[:, k]: the cell after k moves back from (n, m)
        jump = nxt
        while path.shape[1] < int(C.max()):
            path = torch.cat([path, jump.gather(1, path)], 1)
            jump = jump.gather(1, jump)
        col = torch.arange(L, device=data.device)
        here = path.gather(1, (C[:, None] - 1 - col).clamp(0, path.shape[1] - 1))  # column c is move C - 1 - c
        moved_i, moved_j = step_i.flatten(1).gather(1, here), step_j.flatten(1).gather(1, here)
        used = col < C[:, None]
        top = torch.where(used & moved_i, data.gather(1, (here // M1 - 1).clamp_min(0)), BLANK)
        bottom = torch.where(used & moved_j, noise.gather(1, (here % M1 - 1).clamp(0, L - 1)), BLANK)
        return top, bottom, C

    def corrupt_with_script(self, x0, t, generator, noise_mask=None) -> Corruption:
        """x_t ~ q(x_t | x0) at times t (B,) and the oracle script x_t -> x0; noise_mask (B, L) marks the counted
        positions (default: every non-[PAD] one); the uncounted ones before the first counted one stay as a prefix."""
        sp, (B, L) = self.special, x0.shape
        keep = (x0 != sp.pad) if noise_mask is None else noise_mask
        prefix, data, n = self._layout(x0, keep)
        room = L - prefix
        noise, m = self._noise(x0, prefix, room, generator)
        top, bottom = self.align(data, n, noise, m, room, generator)
        if self.cfg.edit_prior == "source":  # revision: align the target with its source where it fits the room
            lcs_top, lcs_bottom, C = self.lcs_align(data, n, noise, m)
            fits = (C <= room)[:, None]
            top, bottom = torch.where(fits, lcs_top, top), torch.where(fits, lcs_bottom, bottom)
        shown = torch.rand(B, L, generator=generator, device=x0.device) < self.alpha(t)[:, None]  # (B, L) per column
        value = torch.where(shown, top, bottom)
        visible = value != BLANK
        pending = ~shown & (top != bottom)
        ops = torch.where(pending & (top == BLANK), DELETE, torch.where(pending & (bottom != BLANK), REPLACE, KEEP))
        insert = pending & (bottom == BLANK)
        gap = visible.long().cumsum(1) - visible.long()  # visible columns before each column
        counts = torch.zeros(B, L + 1, dtype=torch.long, device=x0.device).scatter_add_(1, gap, insert.long())
        y = compact(torch.where(insert | (ops == REPLACE), sp.mask, top), top != BLANK, sp.pad)
        x_t = shift_right(compact(value.masked_fill(~visible, sp.pad), visible, sp.pad), prefix, x0)
        zeros = torch.zeros(B, L + 1, dtype=torch.long, device=x0.device)
        return Corruption(x_t, shift_right(compact(ops, visible, KEEP), prefix, zeros[:, :L]),
                          shift_right(counts, prefix, zeros), shift_right(y, prefix, x0), shift_right(data, prefix, x0),
                          prefix)

    def corrupt(self, x0, t, generator, noise_mask=None, model=None):
        """x_t (B, L) for x0 (B, L) at times t (B,), left-packed with [PAD] after its end."""
        return self.corrupt_with_script(x0, t, generator, noise_mask).x_t

    # --- the model -----------------------------------------------------------------------------------------------

    def script_logits(self, model, x_t, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 op logits (B, L, 3) and insertion-count logits (B, L + 1, K + 1) of x_t (B, L)."""
        ops, counts = model.noise(model.hidden(x_t, t))
        return ops.float(), counts.float()

    def token_logits(self, model, y, t) -> torch.Tensor:
        """Float32 x0 logits (B, L, V) of the placeholder sequence y, only the real tokens allowed."""
        logits = model(y, t).float()
        return logits.masked_fill(~self.real.to(y.device), float("-inf"))

    # --- training ------------------------------------------------------------------------------------------------

    def loss(self, model, batch: Batch, generator) -> LossOutput:
        """Cross-entropy of the oracle script on x_t (ops per token, counts per gap, clipped to max_insert) for a
        random half of the sequences, of x0's tokens at y's [MASK]s for the other half; per counted token."""
        ids, B, L = batch.ids, *batch.ids.shape
        t = self.cfg.eps + (1.0 - self.cfg.eps) * self.uniforms(B, generator, ids.device)
        c = self.corrupt_with_script(ids, t, generator, batch.loss_mask)
        first = (torch.arange(B, device=ids.device) + int(torch.randint(2, (1,), generator=generator,
                                                                          device=generator.device))) % 2 == 0
        h = model.hidden(torch.where(first[:, None], c.x_t, c.y), t.float())
        ops, counts = model.noise(h)
        length = (c.x_t != self.special.pad).sum(1)
        col = torch.arange(L + 1, device=ids.device)
        tok = first[:, None] & (col[:L] >= c.prefix[:, None]) & (col[:L] < length[:, None])
        gap = first[:, None] & (col >= c.prefix[:, None]) & (col <= length[:, None])
        fill = ~first[:, None] & (c.y == self.special.mask)
        total = (F.cross_entropy(ops[tok].float(), c.ops[tok], reduction="sum")
                 + F.cross_entropy(counts[gap].float(), c.counts[gap].clamp(max=self.cfg.max_insert), reduction="sum")
                 + F.cross_entropy(model.head(h[fill]).float(), c.x0[fill], reduction="sum"))
        n = int(batch.loss_mask.sum())
        return LossOutput(loss=total / max(n, 1), n_tokens=n)

    # --- sampling ------------------------------------------------------------------------------------------------

    def prior(self, shape, device=None) -> torch.Tensor:
        """One span of unknown length: [SPAN] then room ([PAD]) for shape[1] tokens."""
        x = torch.full(shape, self.special.pad, dtype=torch.long, device=device)
        x[:, 0] = self.span_id
        return x

    def open_hole(self, width: int) -> list[int]:
        """A span of unknown length with room for `width` tokens."""
        return [self.span_id] + [self.special.pad] * (width - 1)

    def start(self, model, x: torch.Tensor, generator) -> EditState:
        """The state a sampler input x (B, L) describes: tokens given, [MASK] slots (drawn uniformly, then only
        replaced), [SPAN]s of unknown length filled from `edit_prior` (random: a uniform length up to the room
        shared by the spans; source: the source before the first [SEP]), [PAD] room."""
        sp, (B, L) = self.special, x.shape
        tokens = (x != sp.pad) & (x != self.span_id)
        is_span = x == self.span_id
        seg = tokens.long().cumsum(1) - tokens.long()  # tokens before each position
        span_open = torch.zeros(B, L + 1, dtype=torch.long, device=x.device).scatter_add_(1, seg, is_span.long()) > 0
        slot = torch.where(x == sp.mask, self.noise_tokens(x.shape, generator, x.device), x)
        ids = compact(slot, tokens, sp.pad)
        kind = compact(torch.where(x == sp.mask, SLOT, GIVEN), tokens, GIVEN)
        room = L - tokens.sum(1)
        noise, m = self._prior_tokens(x, span_open, room, generator)
        return self._insert(EditState(ids, kind, span_open), clip_counts(torch.where(span_open, m, 0), room), noise)

    def _prior_tokens(self, x, span_open, room, generator):
        """The tokens (B, L) that open spans start with, in order, and how many per span (B, L + 1)."""
        B, L = x.shape
        if self.cfg.edit_prior == "source":  # the source: the tokens before the first [SEP]
            src = ((x != self.special.sep).long().cumprod(1) > 0) & (x != self.special.pad) & (x != self.span_id)
            return compact(x, src, self.special.pad), src.sum(1)[:, None].expand(B, L + 1)
        z = self.noise_tokens((B, L), generator, x.device)
        if self.cfg.edit_prior == "empty":
            return z, torch.zeros(B, L + 1, dtype=torch.long, device=x.device)
        share = room // span_open.sum(1).clamp_min(1)  # the spans share the room
        return z, (torch.rand(B, L + 1, generator=generator, device=x.device) * (share + 1)[:, None]).long()

    def _insert(self, state: EditState, counts, tokens) -> EditState:
        """counts (B, L + 1) FREE tokens, drawn in order from tokens (B, L), inserted into the gaps of state."""
        ids, L = state.ids, state.ids.shape[1]
        pos, is_new, _ = interleave(counts)
        merged = ids.new_full(is_new.shape, self.special.pad).scatter_(1, pos, ids)
        rank = (is_new.long().cumsum(1) - 1).clamp(0, L - 1)
        merged = torch.where(is_new, tokens.gather(1, rank), merged)
        kind = torch.full_like(merged, FREE).scatter_(1, pos, state.kind)
        return EditState(merged[:, :L], kind[:, :L], state.span_open)

    def gap_open(self, state: EditState) -> torch.Tensor:
        """(B, L + 1) gaps where a token may be inserted: inside an open span and not past the row's end."""
        ids, L = state.ids, state.ids.shape[1]
        fixed = (state.kind != FREE) & (ids != self.special.pad)
        seg = F.pad(fixed.long().cumsum(1), (1, 0))  # (B, L + 1) non-FREE tokens before each gap
        length = (ids != self.special.pad).sum(1)
        return state.span_open.gather(1, seg) & (torch.arange(L + 1, device=ids.device) <= length[:, None])

    def draw_script(self, op_logits, count_logits, state: EditState, temperature: float, generator) -> Script:
        """A script drawn from the heads' logits (temperature 0: argmax): GIVEN tokens kept, SLOTs never deleted,
        insertions only into open gaps, and cut so that the result fits in L whichever of its edits apply by s (a
        deletion may not apply yet, so only the room left now counts: a span at its maximum stops growing instead
        of pushing the given text after it out of the row)."""
        from textdiff.sampling import filter_probs

        ids, (B, L) = state.ids, state.ids.shape
        real = ids != self.special.pad
        op_logits = op_logits.clone()
        op_logits[..., DELETE].masked_fill_(state.kind != FREE, float("-inf"))
        op_logits[..., REPLACE].masked_fill_(state.kind == GIVEN, float("-inf"))
        ops = draw(filter_probs(op_logits, temperature), generator).masked_fill(~real, KEEP)
        counts = draw(filter_probs(count_logits, temperature), generator).masked_fill(~self.gap_open(state), 0)
        return Script(ops, clip_counts(counts, L - real.sum(1)))

    def placeholders(self, state: EditState, script: Script) -> torch.Tensor:
        """y (B, L): the script applied with [MASK] at every token it writes."""
        return apply_script(state.ids, script.ops, script.counts, self.special.mask, self.special.pad)[0]

    def tokens(self, state: EditState) -> torch.Tensor:
        return state.ids

    def apply(self, state: EditState, script: Script, x0: torch.Tensor, t: float, s: float, generator,
              joint: bool = False) -> EditState:
        """Step t -> s toward x0 (B, L), the placeholders filled: each edit of the script applies w.p.
        (alpha_s - alpha_t) / (1 - alpha_t) (1 at s = 0, so the last step returns x0). With `joint`, each run of
        adjacent edits (deleted, replaced and inserted tokens with no kept token between them: "the LORD" ->
        "Jehovah" is two deletions and an insertion) shares one coin, so a rewritten phrase lands whole or not yet."""
        sp, (B, L) = self.special, state.ids.shape
        a_t, a_s = (float(self.alpha(torch.tensor(v))) for v in (t, s))
        p = 1.0 if s <= 0 else (a_s - a_t) / max(1.0 - a_t, 1e-12)
        _, pos, is_new, kept = apply_script(state.ids, script.ops, script.counts, sp.mask, sp.pad)
        width = is_new.shape[1]
        new_val = x0.gather(1, (kept.long().cumsum(1) - 1).clamp(0, L - 1))  # (B, W2) x0's token at each kept entry
        old = state.ids.new_full((B, width), sp.pad).scatter_(1, pos, state.ids)
        op = torch.full_like(old, KEEP).scatter_(1, pos, script.ops)
        rev = torch.rand(B, width, generator=generator, device=x0.device) < p
        if joint:  # every entry of a run of edits takes the coin of the run's first entry
            edited = is_new | (op != KEEP)
            first = edited & ~F.pad(edited[:, :-1], (1, 0))
            rev = rev.gather(1, torch.where(first, torch.arange(width, device=x0.device), 0).cummax(1).values)
        kind = torch.full_like(old, FREE).scatter_(1, pos, state.kind)
        value = torch.where(rev & (is_new | (op == REPLACE)), new_val, old)
        include = (is_new & rev) | (~is_new & (old != sp.pad) & ~(rev & (op == DELETE)))
        return EditState(compact(value, include, sp.pad)[:, :L], compact(kind, include, GIVEN)[:, :L],
                         state.span_open)
