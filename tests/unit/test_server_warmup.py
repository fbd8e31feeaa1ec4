"""The warm-up behind an open port (``minilm-npu serve``): 503 "warming up" on /health and the model's routes, in
each route's error shape, until every device is warmed up; then 200. A warm-up held on purpose makes it exact."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from minilm_npu.server import ServerSettings, create_app  # noqa: E402

from .server_fakes import FakeEncoder  # noqa: E402

BACKGROUND = ServerSettings(warm_up_in_background=True, health_timeout_s=5.0)


class HeldWarmup(FakeEncoder):
    """A fake whose warm-up runs until the test releases it (or fails, with ``fail_warmup``)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.release = threading.Event()
        self.fail_warmup = False

    def warmup(self) -> None:
        assert self.release.wait(30), "the test never released the warm-up"
        if self.fail_warmup:
            raise RuntimeError("the card is gone")
        super().warmup()


def _wait_for(client: TestClient, status: int) -> dict:
    deadline = time.monotonic() + 30
    while (r := client.get("/health")).status_code != status:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.02)
    return r.json()


def test_503_while_warming_up_then_200():
    encoder = HeldWarmup(devices=("cpu", "cpu"))
    with TestClient(create_app(encoder, BACKGROUND)) as client:  # startup returns while the warm-up is held
        r = client.get("/health")
        assert r.status_code == 503 and r.json()["error_type"] == "unhealthy"  # TEI's shape
        assert "warming up" in r.json()["error"]
        r = client.post("/v1/embeddings", json={"input": ["a"], "model": "m"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        error = r.json()["error"]  # OpenAI's shape
        assert error["type"] == "server_error" and "warming up" in error["message"]
        r = client.post("/embed", json={"inputs": "a"})
        assert r.status_code == 503 and "warming up" in r.json()["error"]
        assert client.get("/info").status_code == 200  # what it will serve, it may say already
        assert encoder.batches == []  # nothing reached a device
        encoder.release.set()
        assert _wait_for(client, 200) == {"status": "ok"}
        assert encoder.warmed
        assert client.post("/embed", json={"inputs": "a"}).status_code == 200
        assert client.post("/v1/embeddings", json={"input": ["a"], "model": "m"}).status_code == 200


def test_a_failed_warm_up_answers_503_for_good_and_tells_the_owner():
    encoder = HeldWarmup()
    encoder.fail_warmup = True
    failed = threading.Event()
    app = create_app(encoder, BACKGROUND)
    app.state.server.readiness.on_failure = failed.set  # `minilm-npu serve` stops the server here, exit code 1
    with TestClient(app) as client:
        encoder.release.set()
        assert failed.wait(30)
        body = _wait_for(client, 503)
        assert "warm-up failed: RuntimeError: the card is gone" in body["error"]
        assert client.post("/embed", json={"inputs": "a"}).status_code == 503


def test_in_process_startup_still_waits_for_the_warm_up():
    encoder = HeldWarmup()
    encoder.release.set()
    with TestClient(create_app(encoder, ServerSettings())) as client:
        assert encoder.warmed and client.get("/health").status_code == 200
