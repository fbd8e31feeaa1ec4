"""Server throughput and latency vs in-process ``encode``, at 1, 8 and 64 concurrent clients.

Starts the app in this process under uvicorn on 127.0.0.1 (a free port), drives it with httpx clients in
threads (each client sends ``--texts-per-request`` texts per request, bounded by ``--requests`` per level and
``--max-seconds``), and prints a Markdown table. The in-process baseline encodes the same texts with
``MiniLMEncoder.encode(batch_size=32)`` in one call. Target: at 64 clients, >= 80 % of in-process throughput.

    python benchmarks/bench_server.py --device cpu --requests 256
"""

from __future__ import annotations

import argparse
import random
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = "the a model vector search embedding device batch token server client latency quick brown fox".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 60))) for _ in range(n)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    import httpx
    import uvicorn

    from minilm_npu import MiniLMEncoder
    from minilm_npu.server import ServerSettings, create_app

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backend", default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--requests", type=int, default=256, help="requests per concurrency level")
    parser.add_argument("--texts-per-request", type=int, default=4)
    parser.add_argument("--levels", default="1,8,64")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="cap per level")
    args = parser.parse_args()

    encoder = MiniLMEncoder(device=args.device, backend=args.backend, dtype=args.dtype)
    texts = _texts(args.requests * args.texts_per_request)
    encoder.encode(texts[:64])  # warm-up
    start = time.perf_counter()
    encoder.encode(texts, batch_size=32)
    baseline = len(texts) / (time.perf_counter() - start)

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(encoder, ServerSettings(max_concurrent_requests=1024)),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/v1/embeddings"

    rows = []
    for level in (int(x) for x in args.levels.split(",")):
        local = threading.local()
        deadline = time.perf_counter() + args.max_seconds

        def call(i: int) -> float | None:
            if time.perf_counter() > deadline:
                return None
            client = getattr(local, "client", None) or httpx.Client(timeout=300)
            local.client = client
            chunk = texts[i * args.texts_per_request:(i + 1) * args.texts_per_request]
            t0 = time.perf_counter()
            client.post(url, json={"input": chunk}).raise_for_status()
            return time.perf_counter() - t0

        t0 = time.perf_counter()
        with ThreadPoolExecutor(level) as pool:
            latencies = [x for x in pool.map(call, range(args.requests)) if x is not None]
        elapsed = time.perf_counter() - t0
        throughput = len(latencies) * args.texts_per_request / elapsed
        rows.append((level, len(latencies), throughput, statistics.median(latencies) * 1e3,
                     _percentile(latencies, 0.99) * 1e3, throughput / baseline))
    server.should_exit = True
    thread.join(30)

    print(f"\nDevice {encoder.device}, backend {encoder.backend_name}, dtype {encoder.dtype}; "
          f"{args.texts_per_request} texts/request; in-process encode: {baseline:.1f} texts/s\n")
    print("| clients | requests | texts/s | p50 ms | p99 ms | vs in-process |")
    print("|--------:|---------:|--------:|-------:|-------:|--------------:|")
    for level, n, tput, p50, p99, ratio in rows:
        print(f"| {level} | {n} | {tput:.1f} | {p50:.1f} | {p99:.1f} | {ratio:.0%} |")


if __name__ == "__main__":
    main()
