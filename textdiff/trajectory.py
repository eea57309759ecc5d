"""Watching a sampler denoise: one recorder on the samplers' per-step callback, and its views.

    rec = Trajectory(pipe, template="The [MASK:3] of the LORD")      # or Trajectory(pipe) for pipe.generate
    pipe.infill("The [MASK:3] of the LORD", callback=rec)
    write_trajectory(rec, "out.html")                                # also .gif (animated) and .png (a strip)

Every back-end's sampler calls `callback(step, ids (B, L), x0_probs (B, L, V) or None)` after each step (design.md:
views sit on the callback and never reach into a sampler). A frame is one step: per row, one `Cell` per shown token
with its state: `given` (fixed from the start: an infill template's text), `new` (changed by this step), `kept`,
`masked` ([MASK], a [SPAN] of unknown length, or a not yet started block) or `noisy` (a token that the model's x0
distribution at this step would not pick: the noise still to be removed by uniform, embedding and simplex
back-ends). [PAD] is not shown, so edit runs, whose lengths change, are aligned step to step by their tokens
(difflib), not by position.

Views: `TerminalView` redraws the rows in place on a terminal (ANSI escapes only: works over ssh) and prints one
plain line per row and step when stdout is not a terminal; `html_page` is one self-contained page with a step slider
and a play button (no network); `gif_bytes` / `strip_bytes` render the frames with Pillow (matplotlib's dependency).
"""

from __future__ import annotations

import difflib
import html
import inspect
import io
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, TextIO

from textdiff.errors import TextdiffError

STATES = ("given", "new", "kept", "masked", "noisy")
SUFFIXES = (".html", ".gif", ".png")
MASK_TEXT = "░░░"
"""How a position still to be decided is drawn (terminal, page and pictures alike)."""


@dataclass(frozen=True)
class Cell:
    text: str
    state: str
    """One of STATES."""


@dataclass(frozen=True)
class Frame:
    step: int
    rows: tuple[tuple[Cell, ...], ...]
    """Per sample row, its shown tokens in order."""


@dataclass
class Trajectory:
    """The per-step callback that records every step as a `Frame` and hands each to `listeners` as it comes.

    `template`: the infill template the sampler starts from (its text shows as `given`), or one per row; without it
    the start is the back-end's prior, every position to be decided (pipe.generate). Frame 0 is that start."""

    pipe: object
    template: Optional[str | list[str]] = None
    listeners: list[Callable[["Frame"], None]] = field(default_factory=list)
    frames: list[Frame] = field(default_factory=list)

    def __post_init__(self):
        tok, sp = self.pipe.tokenizer, self.pipe.backend.special
        self.hidden = {sp.pad}
        self.unknown = {sp.mask} | {i for i in self.pipe.backend.open_hole(1) if i != sp.pad}
        self.pieces: dict[int, str] = {}
        self.spaced = spaced_tokenizer(tok)
        self.prev: Optional[list[list[int]]] = None
        templates = [self.template] if isinstance(self.template, str) else self.template
        self.starts = [self.pipe.template_row(t) for t in templates] if templates is not None else None
        self.given: list[set[int]] = []
        self.first: list[list[int]] = []

    def __call__(self, step: int, ids, x0_probs=None) -> None:
        rows = ids.tolist()
        if self.prev is None:
            self._start(rows)
        guess = _argmax_rows(x0_probs, ids)
        frame = Frame(step, tuple(self._cells(self.prev[b], row, guess[b] if guess else None, b)
                                  for b, row in enumerate(rows)))
        self.prev = rows
        self._emit(frame)

    def _start(self, rows: list[list[int]]) -> None:
        """Frame 0: each row's start (its template, or the prior); template text is `given` from then on."""
        starts = self.starts or [self.pipe.backend.prior((1, len(rows[0])))[0].tolist()]
        if len(starts) not in (1, len(rows)) or len(rows) % len(starts):
            raise TextdiffError(f"trajectory: {len(starts)} templates for {len(rows)} rows")
        per = len(rows) // len(starts)
        self.first = [list(starts[b // per]) for b in range(len(rows))]
        self.given = [{i for i, t in enumerate(f) if t not in self.unknown | self.hidden} if self.starts else set()
                      for f in self.first]
        self.prev = [list(f) for f in self.first]
        self._emit(Frame(0, tuple(self._cells(r, r, None, b) for b, r in enumerate(self.prev))))

    def _emit(self, frame: Frame) -> None:
        self.frames.append(frame)
        for listener in self.listeners:
            listener(frame)

    def _cells(self, before: list[int], after: list[int], guess: Optional[list[int]], b: int) -> tuple[Cell, ...]:
        """The shown tokens of one row and their states against the row's previous frame."""
        aligned = not self.pipe.backend.variable_length
        changed = [x != y for x, y in zip(before, after)] if aligned else _changed(before, after, self.hidden)
        cells = []
        for i, tok in enumerate(after):
            if tok in self.hidden:
                continue
            if tok in self.unknown:
                state = "masked"
            elif aligned and i in self.given[b] and tok == self.first[b][i]:
                state = "given"
            elif changed[i]:
                state = "new"
            elif guess is not None and guess[i] != tok:
                state = "noisy"
            else:
                state = "kept"
            cells.append(Cell(MASK_TEXT if state == "masked" else self.piece(tok), state))
        return tuple(cells)

    def piece(self, tok: int) -> str:
        if tok not in self.pieces:
            sp = self.pipe.backend.special
            text = "|" if tok == sp.eos else self.pipe.tokenizer.decode([tok])
            self.pieces[tok] = text.strip() if self.spaced else text
        return self.pieces[tok]

    def texts(self, frame: Frame) -> list[str]:
        """Each row of a frame as one line of text (holes drawn as MASK_TEXT)."""
        return [row_text(row, self.spaced) for row in frame.rows]


def row_text(row: tuple[Cell, ...], spaced: bool) -> str:
    return (" " if spaced else "").join(c.text for c in row).strip()


def spaced_tokenizer(tokenizer) -> bool:
    """True when the tokenizer's pieces carry no spaces of their own (word-level, WordPiece): cells are joined with
    one; byte-level BPE and unigram pieces spell their leading space."""
    vocab = [i for t, i in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]) if t.isalpha()][:2]
    if len(vocab) < 2:
        return True
    a, b = vocab
    return tokenizer.decode([a, b]) == tokenizer.decode([a]).strip() + " " + tokenizer.decode([b]).strip()


def _argmax_rows(x0_probs, ids) -> Optional[list[list[int]]]:
    """The x0 distribution's most likely token per position (B, L), when the sampler gave one shaped like ids."""
    if x0_probs is None or x0_probs.dim() != 3 or tuple(x0_probs.shape[:2]) != tuple(ids.shape):
        return None
    return x0_probs.argmax(-1).tolist()


def _changed(before: list[int], after: list[int], hidden: set[int]) -> list[bool]:
    """Per position of `after`: whether its token is new, aligning the shown tokens of both (lengths differ)."""
    keep_b = [t for t in before if t not in hidden]
    pos_a = [i for i, t in enumerate(after) if t not in hidden]
    changed = [False] * len(after)
    matcher = difflib.SequenceMatcher(a=keep_b, b=[after[i] for i in pos_a], autojunk=False)
    for op, _, _, j1, j2 in matcher.get_opcodes():
        if op in ("replace", "insert"):
            for j in range(j1, j2):
                changed[pos_a[j]] = True
    return changed


# --- terminal ----------------------------------------------------------------------------------------------------

ANSI = {"given": "", "kept": "", "new": "\x1b[1;32m", "masked": "\x1b[2m", "noisy": "\x1b[2m"}
RESET = "\x1b[0m"


class TerminalView:
    """Redraws every frame in place on a terminal (new tokens bold green, masked and noisy ones dim); on anything
    else (a pipe, a file) prints one plain line per row and step. `delay` seconds pass after each frame."""

    def __init__(self, spaced: bool, total: Optional[int] = None, stream: TextIO = sys.stdout, delay: float = 0.0):
        self.spaced, self.total, self.stream, self.delay = spaced, total, stream, delay
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.drawn = 0  # lines on screen from the last frame

    def __call__(self, frame: Frame) -> None:
        if self.tty:
            self._redraw(frame)
        else:
            of = f"/{self.total}" if self.total else ""
            for b, row in enumerate(frame.rows):
                self.stream.write(f"step {frame.step}{of} [{b}] {row_text(row, self.spaced)}\n")
        self.stream.flush()
        if self.delay:
            time.sleep(self.delay)

    def _redraw(self, frame: Frame) -> None:
        width = max(20, shutil.get_terminal_size((80, 24)).columns - 1)
        lines = [f"step {frame.step}" + (f"/{self.total}" if self.total else "")]
        for b, row in enumerate(frame.rows):
            lines += _wrap(f"[{b}]", row, width, self.spaced)
        up = f"\x1b[{self.drawn}F" if self.drawn else ""
        self.stream.write(up + "\x1b[J" + "\n".join(lines) + "\n")
        self.drawn = len(lines)


def _wrap(label: str, row: tuple[Cell, ...], width: int, spaced: bool) -> list[str]:
    """A row as coloured lines of at most `width` visible characters (wrapped between cells)."""
    lines, line, used = [], label, len(label)
    for cell in row:
        text = (" " + cell.text) if spaced or used == len(label) else cell.text
        if used + len(text) > width and used > len(label):
            lines.append(line)
            line, used, text = " " * len(label), len(label), " " + cell.text.lstrip()
        line += f"{ANSI[cell.state]}{text}{RESET}" if ANSI[cell.state] else text
        used += len(text)
    return lines + [line]


# --- the HTML page -----------------------------------------------------------------------------------------------

CSS = """
.td-row{font:17px/1.9 ui-monospace,DejaVu Sans Mono,monospace;margin:.4em 0;white-space:normal}
.td-row .lbl{color:#888;margin-right:.6em}
.td-cell{padding:1px 3px;margin:0 1px;border-radius:3px}
.td-given{color:#1a1a1a;font-weight:600}.td-kept{color:#1a1a1a}
.td-new{background:#b7f0c0;color:#0a5a1a;font-weight:600}
.td-masked{background:#e4e4e4;color:#b0b0b0}.td-noisy{color:#aaa;font-style:italic}
"""

RENDER_JS = """
function tdRender(el, rows, spaced) {
  el.innerHTML = "";
  rows.forEach(function (row, b) {
    var div = document.createElement("div"); div.className = "td-row";
    var lbl = document.createElement("span"); lbl.className = "lbl"; lbl.textContent = "[" + b + "]";
    div.appendChild(lbl);
    row.forEach(function (cell) {
      var s = document.createElement("span"); s.className = "td-cell td-" + cell[1]; s.textContent = cell[0];
      div.appendChild(s); if (spaced) div.appendChild(document.createTextNode(" "));
    });
    el.appendChild(div);
  });
}
"""

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>textdiff trajectory: __TITLE__</title>
<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:60em;color:#222}
#bar{display:flex;gap:1em;align-items:center;margin:1em 0}#slider{flex:1}
.legend span{margin-right:1em}__CSS__</style></head>
<body><h2>__TITLE__</h2>
<div class="legend"><span class="td-cell td-given">given</span><span class="td-cell td-new">new this step</span>
<span class="td-cell td-kept">decided</span><span class="td-cell td-masked">__MASK__</span>
<span class="td-cell td-noisy">noisy</span></div>
<div id="bar"><button id="play">play</button><input id="slider" type="range" min="0" value="0">
<span id="label"></span></div>
<div id="rows"></div>
<script id="data" type="application/json">__DATA__</script>
<script>__JS__
var data = JSON.parse(document.getElementById("data").textContent);
var slider = document.getElementById("slider"), timer = null;
slider.max = data.frames.length - 1;
function show(i) {
  slider.value = i; var f = data.frames[i];
  document.getElementById("label").textContent = "step " + f.step + " / " + data.frames[data.frames.length - 1].step;
  tdRender(document.getElementById("rows"), f.rows, data.spaced);
}
slider.oninput = function () { show(+slider.value); };
document.getElementById("play").onclick = function () {
  if (timer) { clearInterval(timer); timer = null; this.textContent = "play"; return; }
  if (+slider.value >= data.frames.length - 1) show(0);
  this.textContent = "pause"; var btn = this;
  timer = setInterval(function () {
    var i = +slider.value + 1; show(i);
    if (i >= data.frames.length - 1) { clearInterval(timer); timer = null; btn.textContent = "play"; }
  }, 350);
};
var m = /step=(\\d+)/.exec(location.hash);
show(m ? Math.min(+m[1], data.frames.length - 1) : data.frames.length - 1);
</script></body></html>
"""


def frames_json(traj: Trajectory) -> dict:
    """The frames as plain JSON: {"spaced": bool, "frames": [{"step": k, "rows": [[[text, state], ...], ...]}]}."""
    return {"spaced": traj.spaced, "frames": [{"step": f.step, "rows": [[[c.text, c.state] for c in row]
                                                                       for row in f.rows]} for f in traj.frames]}


def html_page(traj: Trajectory, title: str = "") -> str:
    """One self-contained page (inline CSS, JS and data): a step slider, a play button; `#step=N` opens step N."""
    data = json.dumps(frames_json(traj)).replace("</", "<\\/")
    title = html.escape(title or f"{traj.pipe.backend.name} run, {len(traj.frames) - 1} steps")
    return (PAGE.replace("__CSS__", CSS).replace("__JS__", RENDER_JS).replace("__MASK__", MASK_TEXT + " to decide")
            .replace("__TITLE__", title).replace("__DATA__", data))


# --- pictures ----------------------------------------------------------------------------------------------------

COLOURS = {"given": ((26, 26, 26), None), "kept": ((26, 26, 26), None), "new": ((10, 90, 26), (183, 240, 192)),
           "masked": ((176, 176, 176), (228, 228, 228)), "noisy": ((170, 170, 170), None)}
"""(text, background) per state, as on the page."""


def _font(size: int):
    from PIL import ImageFont

    for name in ("DejaVuSansMono.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def _layout(frame: Frame, spaced: bool, font, width: int) -> list[list[tuple[int, int, Cell]]]:
    """Cells placed at (x, line) in pixels and line numbers, wrapped at `width`; a blank line between rows."""
    placed, line, gap = [], 0, font.getlength(" ") if spaced else 1
    for b, row in enumerate(frame.rows):
        x = font.getlength(f"[{b}] ")
        for cell in row:
            w = font.getlength(cell.text)
            if x + w > width - 8 and x > font.getlength(f"[{b}] "):
                line, x = line + 1, font.getlength(f"[{b}] ")
            placed.append((int(x), line, cell, b))
            x += w + gap
        line += 2
    return placed


def render_frame(frame: Frame, spaced: bool, width: int = 760, lines: Optional[int] = None):
    """One frame as a Pillow image: a header line, then the rows, coloured by state."""
    from PIL import Image, ImageDraw

    font, size = _font(16), 16
    step = int(size * 1.6)
    placed = _layout(frame, spaced, font, width)
    n_lines = lines or (max((p[1] for p in placed), default=0) + 2)
    img = Image.new("RGB", (width, step * (n_lines + 1) + 10), "white")
    draw = ImageDraw.Draw(img)
    draw.text((8, 6), f"step {frame.step}", fill=(120, 120, 120), font=font)
    labelled = set()
    for x, line, cell, b in placed:
        y = 6 + step * (line + 1)
        if b not in labelled:
            draw.text((8, y), f"[{b}]", fill=(150, 150, 150), font=font)
            labelled.add(b)
        fg, bg = COLOURS[cell.state]
        if bg is not None:
            draw.rectangle((8 + x - 2, y - 1, 8 + x + font.getlength(cell.text) + 2, y + size + 3), fill=bg)
        draw.text((8 + x, y), cell.text, fill=fg, font=font)
    return img


def _line_count(traj: Trajectory, width: int) -> int:
    font = _font(16)
    return max(max((p[1] for p in _layout(f, traj.spaced, font, width)), default=0) + 2 for f in traj.frames)


def gif_bytes(traj: Trajectory, width: int = 760, ms: int = 300) -> bytes:
    """An animated GIF of every frame (the last one held for two seconds)."""
    lines = _line_count(traj, width)
    images = [render_frame(f, traj.spaced, width, lines) for f in traj.frames]
    buf = io.BytesIO()
    durations = [ms] * (len(images) - 1) + [2000]
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    return buf.getvalue()


def strip_bytes(traj: Trajectory, width: int = 760, panels: int = 5) -> bytes:
    """A PNG strip: `panels` frames evenly spaced from the start to the end, stacked top to bottom."""
    from PIL import Image

    n = len(traj.frames)
    picks = sorted({round(k * (n - 1) / max(panels - 1, 1)) for k in range(min(panels, n))})
    lines = _line_count(traj, width)
    images = [render_frame(traj.frames[i], traj.spaced, width, lines) for i in picks]
    strip = Image.new("RGB", (width, sum(im.height for im in images) + 2 * len(images)), (210, 210, 210))
    y = 0
    for im in images:
        strip.paste(im, (0, y))
        y += im.height + 2
    buf = io.BytesIO()
    strip.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def write_trajectory(traj: Trajectory, path: str | Path, title: str = "") -> Path:
    """The recorded frames to `path`, by its suffix: .html (the page), .gif (animated), .png (a strip); atomic."""
    from textdiff.checkpoint import atomic_write_bytes

    path = check_path(path)
    if not traj.frames:
        raise TextdiffError(f"--trajectory {path}: the sampler reported no steps, so there is nothing to draw")
    suffix = path.suffix.lower()
    data = (html_page(traj, title).encode() if suffix == ".html" else
            gif_bytes(traj) if suffix == ".gif" else strip_bytes(traj))
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise TextdiffError(f"--trajectory {path}: cannot be written ({e.strerror or type(e).__name__})") from None
    return path


def check_path(path: str | Path) -> Path:
    """A trajectory path that can be written: a known suffix, an existing folder where a file can be made (tried:
    permissions alone do not tell on read-only or virtual file systems), not a folder itself."""
    import tempfile

    path = Path(path)
    if path.is_dir():
        raise TextdiffError(f"--trajectory {path}: is a directory; give a file path")
    if path.suffix.lower() not in SUFFIXES:
        raise TextdiffError(f"--trajectory {path}: unknown kind of file; end it in {', '.join(SUFFIXES)}")
    if not path.parent.is_dir():
        raise TextdiffError(f"--trajectory {path}: the folder {path.parent} does not exist")
    try:
        with tempfile.TemporaryFile(dir=path.parent):
            pass
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(path)
    except OSError as e:
        raise TextdiffError(f"--trajectory {path}: cannot be written here ({e.strerror or 'permission denied'})") from None
    return path


# --- the CLI: --show, --trajectory and the progress bar of sample / infill -----------------------------------------


def add_flags(parser) -> None:
    """`--show`, `--show-delay` and `--trajectory` for `textdiff sample` / `infill`."""
    parser.add_argument("--show", action="store_true",
                        help="redraw the samples in the terminal as they denoise (new tokens highlighted, masked and "
                             "noisy ones dimmed; plain lines when stdout is not a terminal)")
    parser.add_argument("--show-delay", type=float, default=0.0, dest="show_delay", metavar="SECONDS",
                        help="--show: pause this long after each step, to watch a fast sampler (default 0)")
    parser.add_argument("--trajectory", metavar="PATH",
                        help="write the denoising trajectory: PATH.html (a page with a step slider), PATH.gif "
                             "(animated) or PATH.png (a strip of steps)")


def check_flags(args) -> None:
    """The checks that need no model: run before loading one."""
    if args.trajectory:
        check_path(args.trajectory)
    if args.show_delay < 0 or args.show_delay > 10:
        raise TextdiffError(f"--show-delay {args.show_delay}: must lie in [0, 10] seconds")
    if args.show and getattr(args, "json", False):
        raise TextdiffError("--show and --json both write stdout; choose one")


class SamplingWatch:
    """The callback a sampling command passes: a tqdm bar over the steps (with ETA; on a terminal only, made at the
    first step so that an error before it prints one line), or the live view under --show; the recorder when
    --trajectory is given. `finish()` closes the bar and writes the trajectory."""

    def __init__(self, args, pipe, total: Optional[int], template: Optional[str] = None):
        self.path, self.traj, self.total, self.show, self.bar = args.trajectory, None, total, args.show, None
        listeners = [TerminalView(spaced_tokenizer(pipe.tokenizer), total, delay=args.show_delay)] if args.show else []
        if args.show or args.trajectory:
            self.traj = Trajectory(pipe, template=template, listeners=listeners)

    def __call__(self, step: int, ids, x0_probs=None) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc="sampling", unit="step", leave=False,
                            disable=True if self.show else None)  # None: off unless stderr is a terminal
        self.bar.update(1)
        if self.traj is not None:
            self.traj(step, ids, x0_probs)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.path:
            print(f"trajectory: {write_trajectory(self.traj, self.path)}", file=sys.stderr)


def watch(args, pipe, opts: dict, template: Optional[str] = None, length: Optional[int] = None) -> SamplingWatch:
    """The SamplingWatch of a `sample` / `infill` command, after checking that its sampler has steps to show."""
    o = pipe.options(**{k: v for k, v in opts.items() if k != "length"})
    from textdiff.sampling import SAMPLERS

    if (args.show or args.trajectory) and "callback" not in inspect.signature(SAMPLERS[o.sampler]).parameters:
        raise TextdiffError(f"--show / --trajectory: sampler '{o.sampler}' reports no steps (it takes no callback)")
    if args.show and o.steps < 2 and not pipe.backend.causal:
        raise TextdiffError(f"--show: {o.steps} step leaves no intermediate state to show; use --steps 2 or more")
    if pipe.backend.causal:  # one step per generated token
        total = (length or pipe.recipe.data.max_length) if template is None else \
            Trajectory(pipe, template=template).starts[0].count(pipe.backend.special.mask)
    else:
        total = o.steps
    return SamplingWatch(args, pipe, total, template)
