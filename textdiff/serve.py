"""`textdiff serve RUN`: a small HTTP API and a playground page over one loaded run (optional extra `serve`:
Starlette, run by uvicorn; pydantic checks the request bodies; steps stream as server-sent events).

    POST /v1/generate   {"num_samples": 2, "steps": 16, "length": 24, ...}         -> {"texts": [...], "batch": {...}}
    POST /v1/infill     {"template": "The [MASK:3] of the LORD", "num_samples": 1}  -> {"texts": [...], ...}
    POST /v1/translate  {"sources": ["..."], "num_samples": 1, "mbr": 4}            -> {"texts": [...], ...}
    GET  /v1/info       the run: back-end, its samplers, the recipe's sampling defaults, counters
    GET  /              the playground: type a template with [MASK:n] / [...] holes and watch it fill in

Every request takes the sampling options of the CLI (the fields of `SampleConfig`, introspected: sampler, steps,
temperature, top_k, top_p, block_size, threshold, joint_edits, eta, clamp, ...; absent = the run's recipe), `seed`
and `num_samples`; generate and infill also take `"stream": true`, answered as an event stream: one `step` event
per denoising step (each row's cells with their states, as `textdiff.trajectory` records them), then `done`.

Batching: one worker thread runs the model. Requests that arrive while it is busy (or within `window` seconds of
each other) and whose options agree share one sampler call: generate requests of one length, infill requests whose
templates come to one token length, translate requests with one num_samples. The call draws with the first
request's seed, so a batched request's draws depend on its batch-mates (a request alone is reproducible by its
seed). Bad requests get HTTP 400 with {"error": one line}; a full queue 503. It binds to loopback by default.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import queue
import socket
import sys
import threading
import time
import typing
from dataclasses import dataclass
from typing import Any, Optional

from textdiff.errors import TextdiffError

MAX_ROWS = 64
"""Rows (samples) per sampler call, and per request."""
MAX_QUEUE = 256
"""Requests waiting at once; more get 503."""
REQUEST_ONLY = ("num_samples", "infill")
"""SampleConfig fields that are not sampling options of a request (the count is the request's own field)."""
KINDS = ("generate", "infill", "translate")


def require_extra() -> None:
    try:
        import pydantic  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise TextdiffError(f"textdiff serve needs the serve extra ({e.name} is missing): pip install -e \".[serve]\"") \
            from None


# --- requests ------------------------------------------------------------------------------------------------------


def option_fields() -> dict[str, tuple]:
    """The sampling options of a request: SampleConfig's own fields and every sampler's declared options, as
    {name: (Optional[type], None)} (the pipeline refuses an option the chosen sampler does not take)."""
    from textdiff.config import SampleConfig
    from textdiff.sampling import all_options

    hints = typing.get_type_hints(SampleConfig)
    out = {}
    for f in dataclasses.fields(SampleConfig):
        if f.name not in (*REQUEST_ONLY, "options"):
            inner = [a for a in typing.get_args(hints[f.name]) if a is not type(None)]
            out[f.name] = (Optional[inner[0] if inner else hints[f.name]], None)
    out.update({k: (Optional[kind], None) for k, (kind, _, _) in all_options().items()})
    return out


def request_models() -> dict[str, type]:
    """The pydantic models of the three request bodies (strict types, unknown fields refused)."""
    from pydantic import ConfigDict, Field, create_model

    cfg = ConfigDict(extra="forbid", strict=True)
    common = {**option_fields(), "seed": (int, Field(0, ge=0, lt=2 ** 63)),
              "num_samples": (int, Field(1, ge=1, le=MAX_ROWS))}
    return {
        "generate": create_model("GenerateRequest", __config__=cfg, stream=(bool, False), **common),
        "infill": create_model("InfillRequest", __config__=cfg, template=(str, Field(min_length=1, max_length=8000)),
                               stream=(bool, False), **common),
        "translate": create_model("TranslateRequest", __config__=cfg,
                                  sources=(list[str], Field(min_length=1, max_length=MAX_ROWS)), **common),
    }


def parse_body(model, kind: str, raw: bytes) -> dict:
    """A request body as a dict of its fields, or a one-line TextdiffError naming the first bad field."""
    from pydantic import ValidationError

    try:
        return model.model_validate_json(raw or b"{}").model_dump()
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        if err["type"] == "json_invalid":
            raise TextdiffError(f"the body is not valid JSON ({err['msg']})") from None
        hint = " (translate streams no steps)" if kind == "translate" and where == "stream" else ""
        raise TextdiffError(f"{where}: {err['msg']}{hint}") from None


@dataclass
class Job:
    """One request waiting for the model: its kind, options and input, and the event queue of its handler."""

    kind: str
    opts: dict
    """Sampling options given (None: the recipe's)."""
    payload: Any
    """generate: None; infill: the template; translate: the sources."""
    n: int
    seed: int
    stream: bool
    key: tuple
    events: asyncio.Queue
    loop: asyncio.AbstractEventLoop

    def send(self, event: str, data: dict) -> None:
        """Thread-safe: queue an event for the request's handler."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, (event, data))

    @property
    def rows(self) -> int:
        return self.n * (len(self.payload) if self.kind == "translate" else 1)


def make_job(pipe, kind: str, body: dict, loop) -> Job:
    """Validate a parsed body against the run (as the CLI validates its flags) and key it for batching: same kind,
    same resolved options, same length (generate: tokens; infill: the template's tokens; translate: num_samples)."""
    opts = {k: body.get(k) for k in option_fields()}
    try:
        resolved = pipe.options(**{k: v for k, v in opts.items() if k != "length"})
    except ValueError as e:
        raise TextdiffError(str(e).replace("sample.", "")) from None
    payload, size = None, opts["length"] or pipe.recipe.data.max_length
    if kind == "infill":
        payload = body["template"]
        size = len(pipe.template_row(payload))
    elif kind == "translate":
        if not pipe.recipe.data.source_field:
            raise TextdiffError("this run is not seq2seq (its recipe has no data.source_field); use /v1/infill")
        payload, size = body["sources"], body["num_samples"]
    elif opts["length"]:
        pipe.options(length=opts["length"])  # the length's own check
    return Job(kind, opts, payload, body["num_samples"], body["seed"], body.get("stream", False),
               (kind, json.dumps(resolved.flat(), sort_keys=True, default=str), size), asyncio.Queue(), loop)


# --- the worker: one sampler call per group of agreeing requests ---------------------------------------------------


class Worker:
    """Runs every job on one thread, batching the jobs waiting with the same key (up to MAX_ROWS rows a call)."""

    def __init__(self, pipe, window: float = 0.005):
        self.pipe, self.window = pipe, window
        self.jobs: queue.Queue = queue.Queue()
        self.stats = {"requests": 0, "sampler_calls": 0, "rows": 0, "errors": 0}
        self.thread = threading.Thread(target=self.loop, name="textdiff-worker", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.jobs.put(None)

    def full(self) -> bool:
        return self.jobs.qsize() >= MAX_QUEUE

    def loop(self) -> None:
        while True:
            first = self.jobs.get()
            if first is None:
                return
            time.sleep(self.window)  # requests sent together arrive together
            waiting = [first]
            while not self.jobs.empty():
                job = self.jobs.get_nowait()
                if job is None:
                    self.jobs.put(None)
                    break
                waiting.append(job)
            try:
                batches = groups(waiting)
            except Exception as e:  # a bug in the batching itself: every waiting job hears of it, serving goes on
                batches = []
                self.fail(waiting, e)
            for group in batches:
                self.run_safely(group)

    def fail(self, jobs: list[Job], e: Exception) -> None:
        self.stats["errors"] += len(jobs)
        print(f"textdiff serve: {type(e).__name__}: {e}", file=sys.stderr)
        for job in jobs:
            job.send("error", {"error": f"internal error ({type(e).__name__}: {e})", "status": 500})

    def run_safely(self, group: list[Job]) -> None:
        """One sampler call; when it fails on a batch, each job again alone, so that it gets its own error."""
        try:
            self.run(group)
        except TextdiffError as e:
            if len(group) > 1:
                for job in group:
                    self.run_safely([job])
                return
            self.stats["errors"] += 1
            group[0].send("error", {"error": str(e), "status": 400})
        except Exception as e:  # a bug: say so, keep serving
            self.fail(group, e)

    def run(self, group: list[Job]) -> None:
        first, pipe = group[0], self.pipe
        opts = {k: v for k, v in first.opts.items() if v is not None}
        callback = stream_callback(pipe, group) if any(j.stream for j in group) else None
        if first.kind == "generate":
            out = pipe.generate(sum(j.n for j in group), seed=first.seed, callback=callback, **opts)
        elif first.kind == "infill":
            out = pipe.infill([j.payload for j in group for _ in range(j.n)], seed=first.seed, callback=callback,
                              **opts)
        else:
            out = pipe.translate([s for j in group for s in j.payload], num_samples=first.n, seed=first.seed, **opts)
        self.stats["sampler_calls"] += 1
        self.stats["requests"] += len(group)
        self.stats["rows"] += sum(j.rows for j in group)
        per = len(out.texts) // sum(j.rows for j in group)  # translate with mbr: one text per source
        lo = 0
        for job in group:
            hi = lo + job.rows * per
            job.send("done", {"texts": out.texts[lo:hi], "batch": {"requests": len(group),
                                                                  "rows": sum(j.rows for j in group)}})
            lo = hi


def groups(jobs: list[Job]) -> list[list[Job]]:
    """Jobs with one key, in arrival order, cut at MAX_ROWS rows."""
    by_key: dict[tuple, list[list[Job]]] = {}
    for job in jobs:
        runs = by_key.setdefault(job.key, [[]])
        if runs[-1] and sum(j.rows for j in runs[-1]) + job.rows > MAX_ROWS:
            runs.append([])
        runs[-1].append(job)
    return [g for runs in by_key.values() for g in runs]


def stream_callback(pipe, group: list[Job]):
    """The sampler callback of a group: a trajectory recorder that sends each streaming job its rows of every step."""
    from textdiff.trajectory import Trajectory

    templates = [j.payload for j in group for _ in range(j.n)] if group[0].kind == "infill" else None
    spans, lo = [], 0
    for job in group:
        spans.append((lo, lo + job.rows))
        lo += job.rows

    def send(frame) -> None:
        for job, (a, b) in zip(group, spans):
            if job.stream:
                job.send("step", {"step": frame.step, "rows": [[[c.text, c.state] for c in row]
                                                               for row in frame.rows[a:b]]})
    return Trajectory(pipe, template=templates, listeners=[send])


# --- the app -------------------------------------------------------------------------------------------------------


def error(status: int, message: str):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def create_app(pipe, window: float = 0.005, run_name: str = "run"):
    """The Starlette app over a loaded pipeline; its worker starts and stops with the app."""
    import contextlib

    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.routing import Route

    worker, models = Worker(pipe, window), request_models()

    async def handle(kind: str, request):
        try:
            body = parse_body(models[kind], kind, await request.body())
            job = make_job(pipe, kind, body, asyncio.get_running_loop())
        except TextdiffError as e:
            return error(400, str(e))
        if worker.full():
            return error(503, f"server busy: {MAX_QUEUE} requests are waiting; retry later")
        worker.jobs.put(job)
        event, data = await job.events.get()
        if event == "error":
            return error(data["status"], data["error"])
        if not job.stream:
            return JSONResponse(data)
        return StreamingResponse(stream(job, event, data), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def stream(job: Job, event: str, data: dict):
        while True:
            yield sse(event, data)
            if event in ("done", "error"):
                return
            event, data = await job.events.get()

    def route(kind: str):
        async def endpoint(request):
            return await handle(kind, request)
        return Route(f"/v1/{kind}", endpoint, methods=["POST"])

    async def info(request):
        return JSONResponse(run_info(pipe, run_name, worker.stats))

    async def page(request):
        return HTMLResponse(playground_page(pipe, run_name))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        worker.start()
        yield
        worker.stop()

    app = Starlette(routes=[Route("/", page), Route("/v1/info", info), *[route(k) for k in KINDS]], lifespan=lifespan)
    app.state.worker = worker
    return app


def run_info(pipe, run_name: str, stats: dict) -> dict:
    o = pipe.options()
    return {"run": run_name, "backend": pipe.backend.name, "samplers": list(pipe.backend.samplers),
            "defaults": {k: v for k, v in o.flat().items() if k in option_fields()}, "max_length": pipe.recipe.data.max_length,
            "variable_length": pipe.backend.variable_length, "seq2seq": bool(pipe.recipe.data.source_field),
            "example": example_template(pipe), "stats": dict(stats)}


def example_template(pipe) -> str:
    if pipe.recipe.sample.infill:
        return pipe.recipe.sample.infill
    return "[...] and [...]" if pipe.backend.variable_length else "[MASK:4] and [MASK:4]"


PLAYGROUND = """<!doctype html>
<html><head><meta charset="utf-8"><title>textdiff playground: __RUN__</title>
<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:62em;color:#222}
textarea{width:100%;font:16px ui-monospace,monospace;padding:.5em}label{margin-right:1.2em}
input[type=number]{width:5em}#error{color:#b00020;margin:.6em 0}#result{white-space:pre-wrap;font:16px ui-monospace,
monospace;background:#f6f6f6;padding:.6em;min-height:1.5em}#status{color:#666}__CSS__</style></head>
<body><h2>textdiff playground <small style="color:#888">__RUN__ (__BACKEND__)</small></h2>
<p>Write a template with <code>[MASK]</code>, <code>[MASK:n]</code> holes__SPANS__ and press Fill.</p>
<textarea id="template" rows="3"></textarea>
<div style="margin:.8em 0">
<label>sampler <select id="sampler"></select></label>
<label>steps <input id="steps" type="number" min="1" value="__STEPS__"></label>
<label>temperature <input id="temperature" type="number" min="0" step="0.1" value="__TEMP__"></label>
<label>samples <input id="n" type="number" min="1" max="8" value="1"></label>
<label>seed <input id="seed" type="number" min="0" value="0"></label>
<button id="fill">Fill</button> <span id="status"></span></div>
<div id="error"></div><div id="rows"></div>
<h3>Result</h3><div id="result"></div>
<script>__JS__
var info = __INFO__;
var sel = document.getElementById("sampler");
info.samplers.forEach(function (s) { var o = document.createElement("option"); o.textContent = s;
  if (s === info.defaults.sampler) o.selected = true; sel.appendChild(o); });
document.getElementById("template").value = info.example;
function num(id) { return Number(document.getElementById(id).value); }
async function fill() {
  var err = document.getElementById("error"), status = document.getElementById("status");
  err.textContent = ""; document.getElementById("result").textContent = ""; status.textContent = "filling...";
  var body = {template: document.getElementById("template").value, sampler: sel.value, steps: num("steps"),
              temperature: num("temperature"), num_samples: num("n"), seed: num("seed"), stream: true};
  var resp = await fetch("/v1/infill", {method: "POST", headers: {"Content-Type": "application/json"},
                                        body: JSON.stringify(body)});
  if (!resp.ok) { var e = await resp.json(); err.textContent = e.error; status.textContent = ""; return; }
  var reader = resp.body.getReader(), dec = new TextDecoder(), buf = "";
  while (true) {
    var chunk = await reader.read(); if (chunk.done) break;
    buf += dec.decode(chunk.value, {stream: true});
    var parts = buf.split("\\n\\n"); buf = parts.pop();
    parts.forEach(function (part) {
      var ev = /^event: (\\w+)/m.exec(part)[1], data = JSON.parse(/^data: (.*)$/m.exec(part)[1]);
      if (ev === "step") { tdRender(document.getElementById("rows"), data.rows, __SPACED__);
                           status.textContent = "step " + data.step; }
      if (ev === "done") { document.getElementById("result").textContent = data.texts.join("\\n");
                           status.textContent = "done"; }
      if (ev === "error") { err.textContent = data.error; status.textContent = ""; }
    });
  }
}
document.getElementById("fill").onclick = fill;
</script></body></html>
"""


def playground_page(pipe, run_name: str) -> str:
    """The playground: a self-contained page (the trajectory page's renderer) that streams /v1/infill."""
    import html

    from textdiff.trajectory import CSS, RENDER_JS, spaced_tokenizer

    o = pipe.options()
    info = json.dumps(run_info(pipe, run_name, {})).replace("</", "<\\/")
    spans = " and <code>[...]</code> spans of any length" if pipe.backend.variable_length else ""
    return (PLAYGROUND.replace("__CSS__", CSS).replace("__JS__", RENDER_JS).replace("__INFO__", info)
            .replace("__RUN__", html.escape(run_name)).replace("__BACKEND__", html.escape(pipe.backend.name))
            .replace("__SPANS__", spans).replace("__STEPS__", str(o.steps)).replace("__TEMP__", str(o.options.get("temperature", 1.0)))
            .replace("__SPACED__", "true" if spaced_tokenizer(pipe.tokenizer) else "false"))


# --- the command ---------------------------------------------------------------------------------------------------


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve a run over HTTP: a JSON API (/v1/generate, /v1/infill, "
                                            "/v1/translate; streamed steps) and a playground page at /")
    p.add_argument("run", help="run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--window", type=float, default=0.005, metavar="SECONDS",
                   help="how long the worker waits for more requests to batch with the first (default 0.005)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port), or a one-line error (the port is in use, the address is not ours)."""
    if not 0 < port < 65536:
        raise TextdiffError(f"--port {port}: must lie in 1..65535")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(256)
    except OSError as e:
        reason = "is in use (another server?); choose another --port" if getattr(e, "errno", None) == 98 else \
            f"cannot be bound ({e.strerror or e})"
        raise TextdiffError(f"--host {host} --port {port}: the address {reason}") from None
    return sock


def run(args) -> None:
    """`textdiff serve`: bind first (a port in use fails at once), load the run once, serve until Ctrl-C."""
    require_extra()
    import uvicorn

    from textdiff.pipeline import TextDiffusionPipeline

    if not 0 <= args.window <= 1:
        raise TextdiffError(f"--window {args.window}: must lie in [0, 1] seconds")
    sock = bind(args.host, args.port)
    pipe = TextDiffusionPipeline.from_pretrained(args.run, device=args.device)
    app = create_app(pipe, args.window, run_name=str(args.run))
    where = f"http://{args.host}:{args.port}/"
    print(f"textdiff: serving {args.run} ({pipe.backend.name}) at {where} (API under /v1; Ctrl-C stops)", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"textdiff: warning: --host {args.host} lets other machines reach this server", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])
