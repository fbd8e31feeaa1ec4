"""The real server (real model, own process) through bad text and a failing device.

A lone surrogate (valid JSON, not valid Unicode) is a 400 in each route's error shape, never a 500. A forward
pass that fails once costs only the requests in that batch a 500; the next requests succeed. A device that keeps
failing turns ``/health`` to 503 until it works again.
"""

from __future__ import annotations

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")

from .server_process import start_server  # noqa: E402

pytestmark = pytest.mark.slow
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def flaky(tmp_path_factory):
    fail_file = tmp_path_factory.mktemp("flaky") / "fail"
    fail_file.write_text("0")
    server = start_server("--device", "cpu", command=("tests.integration.flaky_server", str(fail_file)))
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            yield server, client, fail_file
    finally:
        server.stop()


def test_invalid_unicode_is_a_400_in_each_routes_shape(flaky):
    server, http, _ = flaky
    # Raw bodies: a JSON "\ud800" escape is valid JSON but decodes to a lone surrogate.
    r = http.post("/v1/embeddings", content='{"input": ["fine", "bad \\ud800 text"]}', headers=JSON)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "input"
    assert error["message"].startswith("input[1] is not valid Unicode")
    r = http.post("/embed", content='{"inputs": "\\udfff"}', headers=JSON)
    assert r.status_code == 400 and r.json()["error_type"] == "validation"
    assert r.json()["error"].startswith("inputs is not valid Unicode")
    r = http.post("/tokenize", content='{"inputs": ["ok", "\\ud800"]}', headers=JSON)
    assert r.status_code == 400 and "inputs[1]" in r.json()["error"]
    assert http.post("/v1/embeddings", json={"input": "fine"}).status_code == 200
    assert not any("TextEncodeInput" in line for line in server.log)


def test_a_failed_batch_fails_only_its_requests_and_health_follows_the_device(flaky, encoder):
    _, http, fail_file = flaky
    fail_file.write_text("1")  # the next forward pass fails, once
    r = http.post("/v1/embeddings", json={"input": ["a", "b"]})
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert "injected device failure" in r.json()["error"]["message"]
    r = http.post("/embed", json={"inputs": ["a", "b"]})  # the very next request is served
    assert r.status_code == 200
    np.testing.assert_allclose(np.array(r.json(), dtype=np.float32), encoder.encode(["a", "b"]), atol=1e-6)
    fail_file.write_text("1")
    r = http.post("/embed", json={"inputs": "a"})
    assert r.status_code == 500 and r.json()["error_type"] == "backend"
    assert http.get("/health").status_code == 200  # one failure: the device still answers

    fail_file.write_text("1000000")  # a device that keeps failing
    assert http.get("/health").status_code == 503
    assert http.post("/v1/embeddings", json={"input": "a"}).status_code == 500
    assert http.get("/health").json()["error_type"] == "unhealthy"
    fail_file.write_text("0")
    assert http.get("/health").status_code == 200
    assert http.post("/v1/embeddings", json={"input": "a"}).status_code == 200
