"""``minilm-npu serve`` as a real process: the port opens first, the warm-up runs behind it (503 "warming up" to
probes and to a real openai client), then it serves; a warm-up that fails stops the server with a non-zero exit."""

from __future__ import annotations

import signal

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from .server_process import start_server  # noqa: E402

pytestmark = pytest.mark.slow
HELD = ("tests.integration.held_server",)


def test_serve_answers_503_while_warming_up_then_serves(tmp_path, encoder):
    gate = tmp_path / "gate"
    server = start_server("--device", "cpu", command=(*HELD, str(gate)), ready=False)
    try:
        r = httpx.get(server.url + "/health", timeout=30)
        assert r.status_code == 503 and "warming up" in r.json()["error"]
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.InternalServerError) as refused:
            client.embeddings.create(model="m", input=["a cold server says so"])
        assert refused.value.status_code == 503 and "warming up" in str(refused.value)
        gate.write_text("go")
        while not server.ready():
            assert server.proc.poll() is None, "".join(server.log)
        vectors = client.embeddings.create(model="m", input=["a warm server answers"]).data
        np.testing.assert_allclose(vectors[0].embedding, encoder.encode("a warm server answers"), atol=1e-5)
        log = "".join(server.log)
        assert "warm-up cpu float32: gear 1/1" in log and "warmed up on cpu" in log  # progress: gear and time
    finally:
        assert server.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it stopped for


def test_a_failed_warm_up_stops_serve_with_a_non_zero_exit(tmp_path):
    gate = tmp_path / "gate"
    server = start_server("--device", "cpu", command=(*HELD, str(gate)), ready=False)
    try:
        gate.write_text("fail")
        assert server.proc.wait(60) == 1
    finally:
        server.stop()
    log = "".join(server.log)
    assert "warm-up failed: RuntimeError: injected warm-up failure" in log
