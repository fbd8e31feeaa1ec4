"""Server throughput and latency vs in-process ``encode``, at 1, 8 and 64 concurrent clients.

The server runs as users run it — ``minilm-npu serve`` in its own process on 127.0.0.1 (a free port) — and the
clients are asyncio tasks in this process, each on its own keep-alive connection speaking minimal HTTP/1.1 (a few
bytes written, a Content-Length read: what a C load generator such as wrk does), so the load generator neither
shares the server's interpreter lock nor takes much of the CPU the server needs. Each client sends
``--texts-per-request`` texts of ``--words`` words per request; every level is bounded by ``--requests`` and
``--max-seconds``. The in-process baseline encodes the same texts with ``MiniLMEncoder.encode(batch_size=32)`` in
one call, and times one request's worth of texts per call (its p50 is the in-process latency), before the server
starts. Targets: one client's p50 <= in-process p50 + 1.0 ms; at 64 clients >= 90 % of in-process throughput
(``--texts-per-request 1 --words 6-10`` is the one-short-sentence case). ``--variants fast,fastapi`` runs the
server as users run it beside one whose embedding routes go through FastAPI's routing, measured in turn at every
level (``--rounds`` repeats them, for a range on a shared machine); each row also gives the server's CPU time per
request (all its threads), which other load on the machine disturbs less than latency. On a small CPU box the
clients and the server share the cores, which the in-process baseline does not pay; on an accelerator the model's
work leaves the CPU.

    python benchmarks/bench_server.py --device cpu --requests 256
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.integration.server_process


def _texts(n: int, shortest: int = 4, longest: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocabulary = "the a model vector search embedding device batch token server client latency quick brown fox".split()
    return [" ".join(rng.choice(vocabulary) for _ in range(rng.randint(shortest, longest))) for _ in range(n)]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class _Connection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and returns the response body.

    The load generator shares the cores with the server on a small box, so it must cost as little as possible per
    request: a request is a few bytes written and a Content-Length read, as a C load generator (wrk) does, instead
    of httpx's ~0.4 ms of Python per request that the server's measurement would pay for.
    """

    def __init__(self, host: str, port: int, path: str):
        self.host, self.port, self.path = host, port, path
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes) -> bytes:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        header = await self.reader.readuntil(b"\r\n\r\n")
        status = int(header.split(b" ", 2)[1])
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in header.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            None,
        )
        if length is None:
            raise RuntimeError(f"HTTP {status} answer without Content-Length: {header[:300]!r}")
        payload = await self.reader.readexactly(length)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {payload[:300]!r}")
        return payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _check(payload: bytes, expected: int, encoding: str) -> None:
    """A response must hold one 384-float vector per input text, whatever the encoding."""
    data = json.loads(payload)["data"]
    first = data[0]["embedding"]
    size = len(base64.b64decode(first)) // 4 if encoding == "base64" else len(first)
    if len(data) != expected or size != 384:
        raise RuntimeError(f"expected {expected} vectors of 384 floats, got {len(data)} of {size}")


async def _level(
    url: str,
    texts: list[str],
    clients: int,
    requests: int,
    per_request: int,
    max_seconds: float,
    encoding: str = "base64",
) -> tuple[int, float, list[float]]:
    parts = urlsplit(url)
    bodies = [
        json.dumps(
            {"input": texts[i * per_request : (i + 1) * per_request], "encoding_format": encoding}, ensure_ascii=False
        ).encode()
        for i in range(requests)
    ]
    deadline = time.perf_counter() + max_seconds
    latencies: list[float] = []
    next_request = iter(range(requests))
    connections = [_Connection(parts.hostname, parts.port, parts.path) for _ in range(clients)]

    async def one_client(connection: _Connection) -> None:
        for i in next_request:
            if time.perf_counter() > deadline:
                return
            t0 = time.perf_counter()
            payload = await connection.post(bodies[i])
            latencies.append(time.perf_counter() - t0)
            if i % 16 == 0:  # spot-check the answers off the clock
                _check(payload, len(texts[i * per_request : (i + 1) * per_request]), encoding)

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(one_client(c) for c in connections))
    finally:
        for connection in connections:
            connection.close()
    elapsed = time.perf_counter() - t0
    return len(latencies), elapsed, latencies


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far; NaN where /proc is not there. Less
    sensitive to other load on the machine than latency: what a request costs the server, not how long it waits."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run(coroutine):
    """uvloop when installed (the server's extra brings it): the cheaper loop leaves more CPU to the server."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


#: Server variants a run can compare (``--variants``): extra ``minilm-npu serve`` arguments each.
VARIANTS = {
    "fast": [],  # as users run it: the embedding routes on the raw-ASGI fast path
    "fastapi": ["--no-fast-path"],  # the same routes through FastAPI's routing and request handling
}


def _in_process(args: argparse.Namespace, texts: list[str]) -> tuple[float, float, str]:
    """In-process ``encode``: texts/s at batch 32, the p50 of one request's texts per call, and the device line.
    A function of its own so that the model is freed before the servers start."""
    from minilm_npu import MiniLMEncoder
    from minilm_npu.devices import synchronize
    from minilm_npu.verify.bench import time_each

    encoder = MiniLMEncoder(device=args.device, backend=args.backend, dtype=args.dtype)
    encoder.encode(texts[:64])  # warm-up
    start = time.perf_counter()
    encoder.encode(texts, batch_size=32)
    baseline = len(texts) / (time.perf_counter() - start)
    # verify's timing protocol, over one request's worth of texts per call (the first few calls untimed).
    per = args.texts_per_request
    chunks = [texts[i * per : (i + 1) * per] for i in range(min(args.requests, 200))]
    p50 = time_each(
        lambda batch, _size: encoder.encode(batch),
        lambda: synchronize(encoder.device),
        chunks,
        warmup=min(5, len(chunks) - 1),
    )["p50_ms"]
    return baseline, p50, f"{encoder.device}, backend {encoder.backend_name}, dtype {encoder.dtype}"


def main() -> None:
    from minilm_npu.verify.environment import cpu_line
    from tests.integration.server_process import start_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backend", default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--requests", type=int, default=256, help="requests per concurrency level")
    parser.add_argument("--texts-per-request", type=int, default=4)
    parser.add_argument("--levels", default="1,8,64")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="cap per level")
    parser.add_argument(
        "--words", default="4-60", help="words per text, MIN-MAX (e.g. 6-10 for the one-short-sentence latency case)"
    )
    parser.add_argument(
        "--encoding-format",
        default="base64",
        choices=("base64", "float"),
        help="what clients ask for (the official openai client asks for base64 by default)",
    )
    parser.add_argument(
        "--variants",
        default="fast",
        help=f"comma-separated server variants, all running at once and measured in turn at each level "
        f"(of {', '.join(VARIANTS)}; default fast)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat every level this many times (a range)")
    args = parser.parse_args()
    try:
        shortest, longest = (int(w) for w in args.words.split("-"))
        if not 1 <= shortest <= longest:
            raise ValueError
    except ValueError:
        parser.error(f"--words must be MIN-MAX with 1 <= MIN <= MAX, not {args.words!r}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        parser.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")

    texts = _texts(args.requests * args.texts_per_request, shortest, longest)
    baseline, in_process_p50, description = _in_process(args, texts)

    # info level: start_server waits for uvicorn's "running on" line (access logs are off in serve).
    serve_args = ["--device", args.device, "--dtype", args.dtype, "--max-concurrent-requests", "4096"]
    if args.backend:
        serve_args += ["--backend", args.backend]
    servers = {}
    rows = []
    try:
        for variant in variants:
            servers[variant] = start_server(*serve_args, *VARIANTS[variant])
            url = f"{servers[variant].url}/v1/embeddings"
            _run(_level(url, texts, 4, 8, args.texts_per_request, 30))  # connections and first batches
        for round_ in range(args.rounds):
            for level in (int(x) for x in args.levels.split(",")):
                for variant, server in servers.items():
                    cpu_before = _cpu_seconds(server.proc.pid)
                    done, elapsed, latencies = _run(
                        _level(
                            f"{server.url}/v1/embeddings",
                            texts,
                            level,
                            args.requests,
                            args.texts_per_request,
                            args.max_seconds,
                            args.encoding_format,
                        )
                    )
                    cpu_ms = (_cpu_seconds(server.proc.pid) - cpu_before) * 1e3 / max(done, 1)
                    throughput = done * args.texts_per_request / elapsed
                    p50 = statistics.median(latencies) * 1e3
                    p99 = _percentile(latencies, 0.99) * 1e3
                    rows.append((round_ + 1, variant, level, done, throughput, p50, p99, throughput / baseline, cpu_ms))
    finally:
        for server in servers.values():
            server.stop()

    print(
        f"\nDevice {description}; {args.texts_per_request} texts/request, encoding_format "
        f"{args.encoding_format}; {args.words} words per text; server in its own process; "
        f"in-process encode: {baseline:.1f} texts/s, p50 {in_process_p50:.2f} ms per request's texts "
        f"({cpu_line()})\n"
    )
    print(f"load average at the end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print(
        "| round | server | clients | requests | texts/s | p50 ms | p50 - in-process ms | p99 ms | vs in-process "
        "| server CPU ms/request |"
    )
    print(
        "|------:|--------|--------:|---------:|--------:|-------:|--------------------:|-------:|--------------:"
        "|----------------------:|"
    )
    for round_, variant, level, n, tput, p50, p99, ratio, cpu_ms in rows:
        print(
            f"| {round_} | {variant} | {level} | {n} | {tput:.1f} | {p50:.2f} | {p50 - in_process_p50:+.2f} | "
            f"{p99:.1f} | {ratio:.0%} | {cpu_ms:.2f} |"
        )


if __name__ == "__main__":
    main()
