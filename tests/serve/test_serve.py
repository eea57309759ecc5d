"""`textdiff serve` end to end on a tiny run: a real server process on loopback, its API (plain and streamed), its
batching of concurrent requests, its 400s, a port in use, and the playground page in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("starlette", reason="the serve extra: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="the serve extra: pip install -e '.[serve]'")

from tests.browser import CHROMEDRIVER, CHROMIUM, chromium_flags  # noqa: E402
from tests.conftest import ROOT  # noqa: E402
from tests.test_cli_errors import assert_one_line_error  # noqa: E402

TEMPLATES = ("the old [MASK:3] sees the [MASK]", "the great [MASK:3] keeps the [MASK]")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="module")
def server(masked_run):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "textdiff", "serve", str(masked_run), "--port", str(port)],
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            get(url + "/v1/info")
            break
        except OSError:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
    yield url
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def get(url: str):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def post(url: str, body, raw: bytes | None = None) -> tuple[int, dict | str]:
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            text = r.read().decode()
            return r.status, (json.loads(text) if r.headers.get_content_type() == "application/json" else text)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def fills(template: str, text: str) -> bool:
    """The filled text keeps the template's given words, in order, and fills every hole (an [EOS] a hole drew is
    decoded as a space, so a hole may show fewer words than tokens)."""
    parts = [p.strip() for p in re.split(r"\[MASK(?::\d+)?\]", template)]
    pattern = r"\s*(.*?)\s*".join(re.escape(p) for p in parts)
    return "░" not in text and "[MASK" not in text and re.fullmatch(pattern, text) is not None


def test_generate_and_infill(server):
    status, out = post(server + "/v1/generate", {"num_samples": 3, "steps": 4, "length": 10})
    assert status == 200 and len(out["texts"]) == 3
    status, out = post(server + "/v1/infill", {"template": TEMPLATES[0], "num_samples": 2, "steps": 4, "seed": 3})
    assert status == 200 and len(out["texts"]) == 2 and all(fills(TEMPLATES[0], t) for t in out["texts"])
    again = post(server + "/v1/infill", {"template": TEMPLATES[0], "num_samples": 2, "steps": 4, "seed": 3})[1]
    assert again["texts"] == out["texts"]  # alone, a request is reproducible by its seed


def test_stream_sends_every_step(server):
    status, text = post(server + "/v1/infill", {"template": TEMPLATES[0], "steps": 4, "stream": True})
    assert status == 200
    events = [(part.split("\n")[0][len("event: "):], json.loads(part.split("\n")[1][len("data: "):]))
              for part in text.strip().split("\n\n")]
    assert [e for e, _ in events] == ["step"] * 5 + ["done"]
    assert [d["step"] for _, d in events[:-1]] == [0, 1, 2, 3, 4]
    assert any(c[1] == "masked" for c in events[0][1]["rows"][0])
    last = " ".join(c[0] for c in events[-2][1]["rows"][0])
    assert last == events[-1][1]["texts"][0] and fills(TEMPLATES[0], last)


def test_fifty_concurrent_requests_are_batched(server):
    """50 requests at once (two templates of one length, several seeds): every answer fills its own template, and
    fewer than 50 sampler calls served them (the wall-time ratio is measured in benchmarks/serve_batching.py)."""
    before = get(server + "/v1/info")["stats"]
    bodies = [{"template": TEMPLATES[i % 2], "steps": 4, "seed": i} for i in range(50)]
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda b: post(server + "/v1/infill", b), bodies))
    assert all(status == 200 for status, _ in answers)
    assert all(len(out["texts"]) == 1 and fills(b["template"], out["texts"][0]) for b, (_, out) in zip(bodies, answers))
    after = get(server + "/v1/info")["stats"]
    assert after["requests"] - before["requests"] == 50
    calls = after["sampler_calls"] - before["sampler_calls"]
    assert calls < 25, calls
    assert max(out["batch"]["requests"] for _, out in answers) > 1


BAD = [
    ("generate", {"steps": 0}, "steps=0"),
    ("generate", {"steps": "8"}, "steps"),
    ("generate", {"sampler": "ddim"}, "sampler 'ddim'"),
    ("generate", {"sampler": "nope"}, "sampler"),
    ("generate", {"temperature": -1}, "temperature"),
    ("generate", {"top_p": 0}, "top_p"),
    ("generate", {"num_samples": 0}, "num_samples"),
    ("generate", {"num_samples": 10000}, "num_samples"),
    ("generate", {"length": 100000}, "length"),
    ("generate", {"seed": -1}, "seed"),
    ("generate", {"bogus": 1}, "bogus"),
    ("generate", [1, 2], "body"),
    ("infill", {}, "template"),
    ("infill", {"template": "no holes here"}, "no hole"),
    ("infill", {"template": "a [MASK:x] b"}, "[MASK:x]"),
    ("infill", {"template": "a [...] b"}, "[...]"),
    ("infill", {"template": "a [MASK:2]", "sampler": "confidence", "steps": 5}, "steps=5"),
    ("infill", {"template": "the [MASK]", "threshold": 0.5}, "threshold"),
    ("translate", {"sources": ["a"]}, "not seq2seq"),
    ("generate", None, "not valid JSON"),
]


def test_malformed_requests_get_400_and_the_server_keeps_serving(server):
    assert len(BAD) == 20
    for kind, body, needle in BAD:
        raw = b"{not json" if body is None else None
        status, out = post(f"{server}/v1/{kind}", body, raw)
        assert status == 400, (kind, body, status, out)
        assert needle in out["error"] and "\n" not in out["error"], (needle, out)
    status, out = post(server + "/v1/infill", {"template": TEMPLATES[1], "steps": 2})
    assert status == 200 and fills(TEMPLATES[1], out["texts"][0])


def test_port_in_use(masked_run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "textdiff", "serve", str(masked_run), "--port", str(port)],
                              env=cli_env(), capture_output=True, text=True, timeout=60)
    assert_one_line_error(proc.returncode, proc.stderr, (f"--port {port}", "in use"))


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
def test_playground_in_chromium(server, tmp_path):
    """The page loads, a typed template is filled step by step, and the filled text appears."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the test extra)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in chromium_flags(tmp_path / "profile"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.get(server + "/")
        assert "textdiff playground" in driver.title
        box = driver.find_element(By.ID, "template")
        box.clear()
        box.send_keys(TEMPLATES[1])
        steps = driver.find_element(By.ID, "steps")
        steps.clear()
        steps.send_keys("4")
        driver.find_element(By.ID, "fill").click()
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "result").text.strip())
        result = driver.find_element(By.ID, "result").text.strip()
        assert fills(TEMPLATES[1], result), result
        assert driver.find_element(By.ID, "status").text == "done"
        shown = driver.find_elements(By.CSS_SELECTOR, "#rows .td-cell")
        assert [c.text for c in shown][:2] == ["the", "great"]  # the last step's cells, drawn as streamed
    finally:
        driver.quit()


def test_a_full_queue_answers_503_and_recovers(masked_run, monkeypatch):
    """In-process: the app on a uvicorn thread; with no room in the queue every request gets 503, then it serves."""
    import threading

    import uvicorn

    from textdiff import serve
    from textdiff.pipeline import TextDiffusionPipeline

    app = serve.create_app(TextDiffusionPipeline.from_pretrained(masked_run), run_name="tiny")
    port = free_port()
    sock = serve.bind("127.0.0.1", port)
    url = f"http://127.0.0.1:{port}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            try:
                get(url + "/v1/info")
                break
            except OSError:
                time.sleep(0.1)
        monkeypatch.setattr(serve, "MAX_QUEUE", 0)
        status, out = post(url + "/v1/generate", {"steps": 2})
        assert status == 503 and "busy" in out["error"]
        monkeypatch.setattr(serve, "MAX_QUEUE", 256)
        status, out = post(url + "/v1/generate", {"steps": 2, "num_samples": 2})
        assert status == 200 and len(out["texts"]) == 2
    finally:
        server.should_exit = True
        thread.join(timeout=10)
