"""The server's own cost per request, without the model: server CPU (all threads) per one-sentence request.

The app is the real one (``create_app``: validation, tokenizer-sized work, the batcher, its worker thread,
rendering, metrics), around the test suite's fake encoder, whose "forward" costs microseconds, so what is measured
is the HTTP path: the server (uvicorn, or granian where installed) and the route (the raw-ASGI fast path, or
FastAPI's routing). CPU time per request is what a request costs the server whatever else runs on the machine, so
it compares the levers on a busy box where latencies do not; ``bench_server.py`` gives the latencies and
throughput with the real model.

    python benchmarks/bench_server_overhead.py --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.unit.server_fakes
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_server import _Connection, _cpu_seconds, _run  # noqa: E402

APP_MODULE = """
import os, sys
sys.path.insert(0, {root!r})
from tests.unit.server_fakes import FakeEncoder
from minilm_npu.server import ServerSettings, create_app
app = create_app(FakeEncoder(), ServerSettings(fast_path=os.environ["FAST_PATH"] == "1", max_concurrent_requests=4096))
"""

#: name -> (server command after ``python -m``, fast path)
VARIANTS = {
    "uvicorn + fast path": (["uvicorn", "overhead_app:app", "--no-access-log", "--no-proxy-headers"], True),
    "uvicorn + FastAPI routing": (["uvicorn", "overhead_app:app", "--no-access-log", "--no-proxy-headers"], False),
    "granian + fast path": (["granian", "--interface", "asgi", "--no-ws", "overhead_app:app"], True),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _load(port: int, clients: int, requests: int, body: bytes) -> None:
    connections = [_Connection("127.0.0.1", port, "/v1/embeddings") for _ in range(clients)]
    pending = iter(range(requests))

    async def one(connection: _Connection) -> None:
        for _ in pending:
            await connection.post(body)

    try:
        await asyncio.gather(*(one(c) for c in connections))
    finally:
        for connection in connections:
            connection.close()


def measure(directory: str, command: list[str], fast_path: bool, clients: int, requests: int) -> tuple[float, float]:
    """Server CPU ms and wall ms per request for one variant at one concurrency."""
    port = _free_port()
    env = dict(os.environ, FAST_PATH="1" if fast_path else "0", PYTHONPATH=directory)
    proc = subprocess.Popen(
        [sys.executable, "-m", *command, "--port", str(port), "--log-level", "warning"],
        cwd=directory,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{command[0]} did not start") from None
                time.sleep(0.1)
        body = json.dumps({"input": "the quick brown fox jumps over the lazy dog", "encoding_format": "float"})
        _run(_load(port, 4, 200, body.encode()))  # warm-up
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        pids = [proc.pid, *(int(pid) for pid in children)]
        before = sum(_cpu_seconds(pid) for pid in pids)
        start = time.perf_counter()
        _run(_load(port, clients, requests, body.encode()))
        wall = time.perf_counter() - start
        return (sum(_cpu_seconds(pid) for pid in pids) - before) * 1e3 / requests, wall * 1e3 / requests
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    from minilm_npu.verify.environment import cpu_line

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per measurement")
    parser.add_argument("--levels", default="1,16", help="concurrent clients")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    variants = {name: spec for name, spec in VARIANTS.items() if importlib.util.find_spec(spec[0][0]) is not None}
    rows: dict[tuple[str, int], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as directory:
        Path(directory, "overhead_app.py").write_text(APP_MODULE.format(root=str(ROOT)))
        for _ in range(args.rounds):
            for clients in (int(x) for x in args.levels.split(",")):
                for name, (command, fast_path) in variants.items():
                    result = measure(directory, command, fast_path, clients, args.requests)
                    rows.setdefault((name, clients), []).append(result)
    print(f"\n{cpu_line()}; load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.rounds} rounds\n")
    print("| server | clients | server CPU ms/request (range) | wall ms/request (range) |")
    print("|---|---:|---:|---:|")
    for (name, clients), results in rows.items():
        cpu = [r[0] for r in results]
        wall = [r[1] for r in results]
        print(f"| {name} | {clients} | {min(cpu):.2f}-{max(cpu):.2f} | {min(wall):.2f}-{max(wall):.2f} |")


if __name__ == "__main__":
    main()
