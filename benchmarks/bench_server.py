"""Server throughput and latency vs in-process ``encode``, at 1, 8 and 64 concurrent clients.

The server runs as users run it — ``minilm-npu serve`` in its own process on 127.0.0.1 (a free port) — and the
clients are asyncio tasks with one ``httpx.AsyncClient`` in this process, so the load generator neither shares the
server's interpreter lock nor spends a thread per client. Each client sends ``--texts-per-request`` texts per
request; every level is bounded by ``--requests`` and ``--max-seconds``. The in-process baseline encodes the same
texts with ``MiniLMEncoder.encode(batch_size=32)`` in one call, and times one request's worth of texts per call
(its p50 is the in-process latency), before the server starts. Targets: one client's p50 <= in-process p50 +
1.5 ms; at 64 clients >= 90 % of in-process throughput (``--texts-per-request 1`` is the one-sentence case). On a small CPU box the clients and the server share the cores, which the
in-process baseline does not pay; on an accelerator the model's work leaves the CPU.

    python benchmarks/bench_server.py --device cpu --requests 256
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.integration.server_process


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = "the a model vector search embedding device batch token server client latency quick brown fox".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 60))) for _ in range(n)]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def _level(url: str, texts: list[str], clients: int, requests: int, per_request: int,
                 max_seconds: float, encoding: str = "base64") -> tuple[int, float, list[float]]:
    import httpx

    deadline = time.perf_counter() + max_seconds
    latencies: list[float] = []
    next_request = iter(range(requests))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def one_client() -> None:
            for i in next_request:
                if time.perf_counter() > deadline:
                    return
                chunk = texts[i * per_request:(i + 1) * per_request]
                t0 = time.perf_counter()
                response = await client.post(url, json={"input": chunk, "encoding_format": encoding})
                response.raise_for_status()
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    return len(latencies), elapsed, latencies


def main() -> None:
    from minilm_npu import MiniLMEncoder
    from minilm_npu.devices import synchronize
    from minilm_npu.verify.bench import time_each
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
    parser.add_argument("--encoding-format", default="base64", choices=("base64", "float"),
                        help="what clients ask for (the official openai client asks for base64 by default)")
    args = parser.parse_args()

    texts = _texts(args.requests * args.texts_per_request)
    encoder = MiniLMEncoder(device=args.device, backend=args.backend, dtype=args.dtype)
    encoder.encode(texts[:64])  # warm-up
    start = time.perf_counter()
    encoder.encode(texts, batch_size=32)
    baseline = len(texts) / (time.perf_counter() - start)
    # verify's timing protocol, over one request's worth of texts per call (the first few calls untimed).
    chunks = [texts[i * args.texts_per_request:(i + 1) * args.texts_per_request]
              for i in range(min(args.requests, 200))]
    in_process_p50 = time_each(lambda batch, _: encoder.encode(batch), lambda: synchronize(encoder.device),
                               chunks, warmup=min(5, len(chunks) - 1))["p50_ms"]
    description = f"{encoder.device}, backend {encoder.backend_name}, dtype {encoder.dtype}"
    del encoder

    # info level: start_server waits for uvicorn's "running on" line (access logs are off in serve).
    serve_args = ["--device", args.device, "--dtype", args.dtype, "--max-concurrent-requests", "4096"]
    if args.backend:
        serve_args += ["--backend", args.backend]
    server = start_server(*serve_args)
    rows = []
    try:
        url = f"{server.url}/v1/embeddings"
        asyncio.run(_level(url, texts, 4, 8, args.texts_per_request, 30))  # connections and first batches
        for level in (int(x) for x in args.levels.split(",")):
            done, elapsed, latencies = asyncio.run(_level(url, texts, level, args.requests, args.texts_per_request,
                                                          args.max_seconds, args.encoding_format))
            throughput = done * args.texts_per_request / elapsed
            rows.append((level, done, throughput, statistics.median(latencies) * 1e3,
                         _percentile(latencies, 0.99) * 1e3, throughput / baseline))
    finally:
        server.stop()

    print(f"\nDevice {description}; {args.texts_per_request} texts/request, encoding_format "
          f"{args.encoding_format}; server in its own process; "
          f"in-process encode: {baseline:.1f} texts/s, p50 {in_process_p50:.2f} ms per request's texts "
          f"({cpu_line()})\n")
    print("| clients | requests | texts/s | p50 ms | p50 - in-process ms | p99 ms | vs in-process |")
    print("|--------:|---------:|--------:|-------:|--------------------:|-------:|--------------:|")
    for level, n, tput, p50, p99, ratio in rows:
        print(f"| {level} | {n} | {tput:.1f} | {p50:.2f} | {p50 - in_process_p50:+.2f} | {p99:.1f} | {ratio:.0%} |")


if __name__ == "__main__":
    main()
