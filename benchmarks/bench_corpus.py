"""Corpus embedding throughput: one process, several device workers, and Ray with 1 and 2 actors.

    python benchmarks/bench_corpus.py                 # 100,000 lines, all four engines
    python benchmarks/bench_corpus.py --rows 5000 --device cpu --engines local,ray1,ray2

Rows/s count the whole job (read, embed, write shards, commit manifests) after the model is loaded; the Ray rows
also include starting Ray and its actors, which is what a user waits for. For Ray, "to driver" is what reached
the driver (pickled shard reports: the actors write the shards themselves), beside what the vectors weigh, and
"shards per actor" how the units of the one input file were spread: every actor reads its own byte ranges of it
(corpus/units.py). Also prints what planning the file's units cost (one newline-counting pass in the driver).
Prints the CPU and a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

WORDS = (
    "the a model vector search engine corpus device card shard row text token sentence embedding fast exact "
    "cluster actor resume crash manifest parquet stream memory batch worker queue npu gpu cpu ascend cosine "
    "neighbour query result score index document paragraph language semantic similarity"
).split()


def make_corpus(path: Path, rows: int, seed: int = 0) -> None:
    """``rows`` lines of 4-60 random words (a mix of short queries and paragraph-sized texts)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(rows):
            handle.write(" ".join(rng.choices(WORDS, k=rng.randint(4, 60))) + "\n")


def run_local(src: Path, out: Path, device: str, args: argparse.Namespace) -> tuple[float, int | None, list]:
    from minilm_npu import MiniLMEncoder
    from minilm_npu.corpus.job import EmbedSettings, LocalEngine, embed_corpus

    encoder = MiniLMEncoder(device=device, dtype=args.dtype, backend=args.backend)
    encoder.warmup()
    started = time.perf_counter()
    summary = embed_corpus(src, out, LocalEngine(encoder), EmbedSettings(batch_size=args.batch_size, progress=False))
    return summary.rows_written / (time.perf_counter() - started), None, []


def run_ray(src: Path, out: Path, device: str, args: argparse.Namespace) -> tuple[float, int | None, list]:
    from minilm_npu.corpus.job import EmbedSettings, embed_corpus
    from minilm_npu.corpus.ray_engine import RayEngine

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    engine = RayEngine(device=device, dtype=args.dtype, backend=args.backend, num_cpus=args.ray_cpus)
    started = time.perf_counter()
    summary = embed_corpus(
        src, out, engine, EmbedSettings(batch_size=args.batch_size, progress=False, shard_rows=args.shard_rows)
    )
    rate = summary.rows_written / (time.perf_counter() - started)
    return rate, engine.driver_bytes, sorted(engine.workers.values(), reverse=True)


def plan_cost(src: Path, shard_rows: int) -> str:
    """How long the driver takes to cut ``src`` into units (best of 3: the file is in the page cache)."""
    from minilm_npu.corpus.inputs import expand_inputs
    from minilm_npu.corpus.units import file_units

    file = expand_inputs(src)[0]
    best, count = float("inf"), 0
    for _ in range(3):
        started = time.perf_counter()
        count = sum(1 for _ in file_units(0, file, shard_rows))
        best = min(best, time.perf_counter() - started)
    size = src.stat().st_size
    return (
        f"planning {size:,} bytes into {count} units of {shard_rows} lines: {best * 1000:.1f} ms "
        f"({size / best / 1e9:.2f} GB/s)"
    )


def cpu_line() -> str:
    """The CPU's model and the ISA flags that matter for these kernels (verify's one CPU line)."""
    from minilm_npu.verify.environment import cpu_line as line

    return line()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="corpus lines (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="single-process device (default: %(default)s)")
    parser.add_argument(
        "--multi-device", default=None, help="multi-worker device list (default: the single device twice, e.g. cpu,cpu)"
    )
    parser.add_argument("--engines", default="local,multi,ray1,ray2", help="subset of local,multi,ray1,ray2")
    parser.add_argument("--shard-rows", type=int, default=2048, help="rows per Ray unit/shard (default: %(default)s)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--backend", default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ray-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
    args = parser.parse_args(argv)
    multi = args.multi_device or f"{args.device},{args.device}"
    runs = {
        "local": ("one process", args.device, run_local),
        "multi": ("multi-worker", multi, run_local),
        "ray1": ("Ray, 1 actor", args.device, run_ray),
        "ray2": ("Ray, 2 actors", multi, run_ray),
    }
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "corpus.txt"
        make_corpus(src, args.rows)
        planned = plan_cost(src, args.shard_rows)
        for name in [e.strip() for e in args.engines.split(",") if e.strip()]:
            label, device, fn = runs[name]
            print(f"running {label} on {device} ...", file=sys.stderr, flush=True)
            results.append((label, device, fn(src, Path(tmp) / f"out-{name}", device, args)))
    base = results[0][2][0] if results else 0
    vector_bytes = args.rows * 384 * 4
    print(
        f"\n{cpu_line()}\n{args.rows:,} rows in one .txt file, dtype {args.dtype}, backend "
        f"{args.backend or 'default'}, batch size {args.batch_size}; the vectors weigh {vector_bytes:,} bytes; "
        f"{planned}\n"
    )
    print("| engine | device | rows/s | vs first | bytes to driver | shards per actor |")
    print("|---|---|---:|---:|---:|---|")
    for label, device, (rate, driver, spread) in results:
        to_driver = "-" if driver is None else f"{driver:,} ({driver / vector_bytes:.2%} of vectors)"
        per_actor = " + ".join(str(n) for n in spread) or "-"
        print(f"| {label} | {device} | {rate:,.0f} | {rate / base:.2f}x | {to_driver} | {per_actor} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
