"""Benchmark the packed engine against sentence-transformers, in one process, with the port report's protocol.

Workloads:

* the 24 mixed sentences of :data:`minilm_npu.samples.MIXED_24` at batch sizes 1/4/16/32/64
  (3 warm-up rounds, mean of 10 timed rounds; one round = encoding all 24);
* the 3,000 sentences of STS-B dev at batch 32 (one warm-up on a slice, then 1 timed round, 3 with --rounds);
* one short sentence at batch 1 (latency).

Every engine in every requested dtype and sentence-transformers' own ``encode`` run in the same process on the same
device, so the ratios hold even on a busy machine. Prints a Markdown table for the README; ``--json`` saves the
numbers.

Usage: ``python benchmarks/bench_engine.py [--device cpu] [--dtypes float32,int8] [--quick] [--json out.json]``
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from minilm_npu import MiniLMEncoder  # noqa: E402
from minilm_npu.devices import (describe, dtype_unsupported_reason, parse_devices, synchronize,  # noqa: E402
                               tune_host_allocator)
from minilm_npu.samples import MIXED_24, SHORT_SENTENCE  # noqa: E402

DEFAULT_STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb-dev.tsv"
BATCH_SIZES = (1, 4, 16, 32, 64)
BASELINE = "sentence-transformers float32"


def timed(fn, device: torch.device, warmup: int, rounds: int) -> float:
    """Mean seconds of ``rounds`` calls after ``warmup`` untimed ones (device synchronised around each)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.fmean(times)


def read_stsb(path: Path) -> list[str]:
    """All 3,000 sentences of STS-B dev (both columns, duplicates kept: the corpus as it comes)."""
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [r["sentence1"] for r in rows] + [r["sentence2"] for r in rows]


def engines(device: torch.device, dtypes: list[str]):
    """(label, encode function) for sentence-transformers first, then our engine per dtype."""
    from sentence_transformers import SentenceTransformer

    from minilm_npu.modelfiles import resolve_model

    st = SentenceTransformer(str(resolve_model(None).directory), device=str(device))
    yield BASELINE, lambda texts, bs: st.encode(texts, batch_size=bs)
    for dtype in dtypes:
        encoder = MiniLMEncoder(device=str(device), dtype=dtype, backend="packed")
        yield f"minilm-npu packed {dtype}", lambda texts, bs, e=encoder: e.encode(texts, batch_size=bs)
    if device.type == "cpu" and tune_host_allocator():
        # The packed engine raised glibc's malloc thresholds for the whole process (see tune_host_allocator);
        # sentence-transformers ran above with glibc's defaults, as its users run it. Timing it again under the
        # same allocator shows how much of the ratio that setting alone is worth.
        yield BASELINE + ", host allocator tuned", lambda texts, bs: st.encode(texts, batch_size=bs)


def run(args: argparse.Namespace) -> dict:
    device = parse_devices(args.device)[0]
    dtypes = [d for d in args.dtypes.split(",") if d]
    for dtype in dtypes:
        reason = dtype_unsupported_reason(device, dtype)
        if reason:
            sys.exit(f"error: {reason}")
    batch_sizes = (1, 32) if args.quick else BATCH_SIZES
    rounds = 3 if args.quick else 10
    corpus = read_stsb(args.stsb) if args.stsb.is_file() else []
    if args.quick:
        corpus = corpus[:600]
    results: dict = {"device": describe(device).name, "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "machine": platform.platform(), "rows": []}
    for label, encode in engines(device, dtypes):
        print(f"-- {label}", file=sys.stderr, flush=True)
        for bs in batch_sizes:
            seconds = timed(lambda: encode(MIXED_24, bs), device, 3, rounds)
            results["rows"].append({"engine": label, "workload": f"24 mixed, batch {bs}",
                                    "sentences_per_s": len(MIXED_24) / seconds, "latency_ms": seconds * 1e3})
        seconds = timed(lambda: encode([SHORT_SENTENCE], 1), device, 3, rounds * 3)
        results["rows"].append({"engine": label, "workload": "1 short sentence, batch 1",
                                "sentences_per_s": 1 / seconds, "latency_ms": seconds * 1e3})
        if corpus:
            seconds = timed(lambda: encode(corpus, 32), device, 0, 1 if args.quick else args.corpus_rounds)
            results["rows"].append({"engine": label, "workload": f"STS-B dev {len(corpus)} sentences, batch 32",
                                    "sentences_per_s": len(corpus) / seconds, "latency_ms": seconds * 1e3})
    baseline = {r["workload"]: r for r in results["rows"] if r["engine"] == BASELINE}
    for row in results["rows"]:
        row["speedup"] = row["sentences_per_s"] / baseline[row["workload"]]["sentences_per_s"]
    return results


def markdown(results: dict) -> str:
    lines = [f"Device: {results['device']} ({results['threads']} threads), torch {results['torch']}, "
             f"{results['machine']}", "",
             "| workload | engine | sentences/s | latency (ms) | vs sentence-transformers |",
             "| --- | --- | ---: | ---: | ---: |"]
    for row in sorted(results["rows"], key=lambda r: r["workload"]):
        lines.append(f"| {row['workload']} | {row['engine']} | {row['sentences_per_s']:,.1f} | "
                     f"{row['latency_ms']:,.2f} | {row['speedup']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="one device: cpu, cuda:0, npu:0 (default: cpu)")
    parser.add_argument("--dtypes", default=None,
                        help="comma-separated (default: float32,int8 on CPU, float32,float16,bfloat16 elsewhere)")
    parser.add_argument("--quick", action="store_true", help="batch 1 and 32 only, 3 rounds, 600 STS-B sentences")
    parser.add_argument("--stsb", type=Path, default=DEFAULT_STSB, help="stsb-dev.tsv (skipped when absent)")
    parser.add_argument("--corpus-rounds", type=int, default=3, help="timed rounds of the STS-B run")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    if args.dtypes is None:
        args.dtypes = "float32,int8" if parse_devices(args.device)[0].type == "cpu" else "float32,float16,bfloat16"
    results = run(args)
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
