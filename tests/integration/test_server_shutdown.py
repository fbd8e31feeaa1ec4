"""SIGTERM while requests are in flight: they complete, new connections are refused, the process exits."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

httpx = pytest.importorskip("httpx")

from tests.texts import MEDIUM  # noqa: E402

from .server_process import start_server  # noqa: E402

pytestmark = pytest.mark.slow


def _in_flight(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    line = next(x for x in text.splitlines() if x.startswith("minilm_requests_in_flight "))
    return float(line.split()[1])


def test_sigterm_during_load_finishes_in_flight_requests():
    server = start_server("--device", "cpu", "--max-batch-tokens", "2048")
    try:

        def call(i):
            with httpx.Client(base_url=server.url, timeout=120) as client:
                r = client.post("/v1/embeddings", json={"input": [f"{i} {MEDIUM[0]}"] * 16})
                return r.status_code, len(r.json()["data"])

        with ThreadPoolExecutor(8) as executor:
            futures = [executor.submit(call, i) for i in range(8)]
            # Every request must be accepted before SIGTERM: one whose thread had not connected yet would be
            # refused, which is right for a draining server but not what this test is about.
            deadline = time.monotonic() + 60
            while _in_flight(server.url) < len(futures) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert _in_flight(server.url) == len(futures), "not every request was in flight before SIGTERM"
            server.proc.send_signal(signal.SIGTERM)
            results = [f.result(timeout=120) for f in futures]
        assert results == [(200, 16)] * 8
        assert server.proc.wait(60) in (0, -signal.SIGTERM)
        log = "".join(server.log)
        assert "Shutting down" in log and "Application shutdown complete" in log and "Traceback" not in log
    finally:
        server.stop(10)
