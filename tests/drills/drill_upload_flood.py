"""Drill: hostile uploads to the search page (``anet serve``) on loopback cannot make it eat the machine.

The page runs in a process of its own (the real ``serve_page`` with its default limits) over a smoke
index. A 9000 x 9000 PNG (258 KB on the wire, 243 MB decoded) and a body over the size cap are refused
with 413 and one line; then 50 uploads at once -- such PNGs, over-long bodies and images just under the
pixel cap that must be decoded -- get 200, 413 or 503 with Retry-After (never a 500), the page keeps
answering meanwhile and afterwards, and the server's peak RSS (VmHWM) stays under its idle RSS plus
:data:`RSS_BOUND`. A watchdog kills the server at :data:`RSS_KILL` above idle so that a regression fails
the drill instead of exhausting the shared machine. Every loop is bounded in count and time.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mlflow_server import free_port
from test_search import build_setup

ROOT = Path(__file__).resolve().parents[2]
FLOOD = 50
RSS_BOUND = 512 << 20  # peak RSS above the idle server's, bytes
RSS_KILL = 3 << 30  # the watchdog's line
SERVE = ("import sys; from anet.search.index import GalleryIndex; from anet.search.predictor import ReidPredictor; "
         "from anet.search.web import serve_page; serve_page(GalleryIndex.open(sys.argv[1]), '127.0.0.1', "
         "int(sys.argv[2]), ReidPredictor.from_dir(sys.argv[3]))")

pytestmark = pytest.mark.integration


def flat_png(width: int, height: int) -> bytes:
    """A one-colour RGB PNG of any size, written row by row (the test never holds its pixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row, parts = zlib.compressobj(9), b"\0" + b"\x50" * (3 * width), []
    for _ in range(height):
        parts.append(packer.compress(row))
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def _rss(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) << 10
    raise AssertionError(f"no {field} for pid {pid}")


def _post(port: int, body: bytes, timeout: float = 60) -> tuple[int, dict, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/api/search", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        raw = response.read()
        return response.status, dict(response.getheaders()), json.loads(raw or b"{}")
    finally:
        conn.close()


def _get(port: int, path: str, timeout: float = 10) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _answers(port: int) -> int:
    try:
        return _get(port, "/api/info", 30)
    except OSError:
        return -1


def _upload(png: bytes) -> bytes:
    return json.dumps({"image": base64.b64encode(png).decode(), "k": 5}).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[int, int, dict]]:
    """(port, pid, watchdog state) of ``serve_page`` in its own process over a smoke index."""
    root = tmp_path_factory.mktemp("flood")
    build_setup(root)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(root / "index"), str(port), str(root / "artifacts")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if _get(port, "/api/info", 2) == 200:
                break
        except OSError:
            time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    state = {"idle": _rss(proc.pid), "killed": False, "stop": False}

    def watchdog() -> None:
        while not state["stop"] and proc.poll() is None:
            if _rss(proc.pid) > state["idle"] + RSS_KILL:
                state["killed"] = True
                proc.send_signal(signal.SIGKILL)
            time.sleep(0.05)

    guard = threading.Thread(target=watchdog, daemon=True)
    guard.start()
    try:
        yield port, proc.pid, state
    finally:
        state["stop"] = True
        proc.kill()
        proc.wait(30)


def test_a_huge_png_and_a_huge_body_are_refused_with_413(server, drill):
    drill("upload a 9000 x 9000 PNG (258 KB) / a 12 MB body to the search page",
          "413 with one line naming the limit, before decoding / reading it")
    port, _pid, _state = server
    huge = flat_png(9000, 9000)
    status, _headers, body = _post(port, _upload(huge))
    assert status == 413 and "9000 x 9000" in body["error"] and "\n" not in body["error"], (status, body)
    status, _headers, body = _post(port, b'{"image": "' + b"A" * (12 << 20) + b'"}')
    assert status == 413 and "body" in body["error"], (status, body)
    assert _get(port, "/api/info") == 200


def test_fifty_concurrent_hostile_uploads(server, drill):
    drill(f"{FLOOD} concurrent hostile uploads (huge PNGs, 12 MB bodies, 16 MP images)",
          f"200/413/503 + Retry-After only; page answers; peak RSS < idle + {RSS_BOUND >> 20} MiB")
    port, pid, state = server
    kinds = {"huge": _upload(flat_png(9000, 9000)), "long": b'{"image": "' + b"A" * (12 << 20) + b'"}',
             "at_cap": _upload(flat_png(4000, 4000))}
    plan = [list(kinds)[i % len(kinds)] for i in range(FLOOD)]
    start = threading.Barrier(FLOOD, timeout=60)

    def send(kind: str) -> tuple[str, int, dict, dict]:
        start.wait()
        try:
            return (kind, *_post(port, kinds[kind], timeout=90))
        except OSError as exc:
            return kind, -1, {}, {"error": repr(exc)}

    with ThreadPoolExecutor(FLOOD) as pool:
        futures = [pool.submit(send, kind) for kind in plan]
        time.sleep(0.5)
        answering = [_answers(port) for _ in range(3)]  # meanwhile
        results = [f.result(timeout=180) for f in futures]
    assert not state["killed"], f"the server passed idle + {RSS_KILL >> 20} MiB and was killed"
    allowed = {"huge": {413, 503}, "long": {413}, "at_cap": {200, 503}}
    wrong = [(k, s, b) for k, s, _h, b in results if s not in allowed[k]]
    assert not wrong, wrong[:5]
    busy = [h for _k, s, h, _b in results if s == 503]
    assert busy and all(int(h.get("retry-after", "0")) >= 1 for h in busy), "the search bound was never reached"
    assert answering == [200, 200, 200]
    assert _post(port, _upload(flat_png(256, 256)))[0] == 200  # afterwards
    peak = _rss(pid, "VmHWM")
    counts = sorted(Counter(f"{k} {s}" for k, s, _h, _b in results).items())
    print(f"server RSS: idle {state['idle'] >> 20} MiB, peak {peak >> 20} MiB over {FLOOD} hostile uploads {counts}")
    assert peak < state["idle"] + RSS_BOUND, f"peak RSS {peak >> 20} MiB, idle {state['idle'] >> 20} MiB"
