"""Benchmark the packed engine against sentence-transformers, in one process, with the port report's protocol.

Workloads:

* the 24 mixed sentences of :data:`minilm_npu.samples.MIXED_24` at batch sizes 1/4/16/32/64
  (3 warm-up rounds, mean of 10 timed rounds; one round = encoding all 24);
* the 3,000 sentences of STS-B dev at batch 32 (one warm-up on a slice, then 1 timed round, 3 with --rounds);
* one short sentence at batch 1 (latency).

Every engine in every requested dtype and sentence-transformers' own ``encode`` (in a fresh child process, see
:class:`FreshProcess`) take turns on each workload in the same run on the same device, so the ratios hold even on a
busy machine. Prints a Markdown table for the README; ``--json`` saves the numbers.

It also measures what the machine allows: the best GEMM rate of each dtype (a ``[2048, 384] x [384, 1536]`` linear
with the fastest kernel this torch build has) and the memory read bandwidth. From them and the FLOPs and weight bytes
the real tokens of a workload need, it derives the *ceiling*: the speed-up over sentence-transformers an engine
would reach if it did nothing but those GEMMs at that rate (or nothing but read its weights once per forward pass,
whichever is slower). A target above its ceiling cannot be met on this machine by any engine using these kernels.

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
from minilm_npu.devices import describe, parse_devices, synchronize  # noqa: E402
from minilm_npu.engine.policy import dtype_unsupported_reason, tune_host_allocator  # noqa: E402
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


#: Issue 3's targets, measured on the project's 2-core CPU: (workload prefix, dtype) -> minimum speed-up.
CPU_TARGETS = {("24 mixed, batch 32", "float32"): 8.0, ("24 mixed, batch 32", "int8"): 20.0,
               ("1 short sentence, batch 1", "float32"): 5.0, ("1 short sentence, batch 1", "int8"): 5.0,
               ("STS-B dev", "float32"): 2.0, ("STS-B dev", "int8"): 5.0}


def machine_limits(device: torch.device, dtypes: list[str]) -> dict:
    """Best measured linear-layer rate per dtype (operations/s) and memory read bandwidth (bytes/s)."""
    import torch.nn.functional as F

    from minilm_npu.engine.packed import Int8Linear, OneDnnLinear, onednn_linear_supported

    m, k, n = 2048, 384, 1536
    ops = 2 * m * k * n
    x = torch.randn(m, k, device=device)
    weight, bias = torch.randn(n, k, device=device) * 0.05, torch.zeros(n, device=device)
    rates = {}
    for dtype in dtypes:
        candidates = []
        if dtype == "int8":
            candidates.append(Int8Linear(weight, bias))
        else:
            torch_dtype = getattr(torch, dtype)
            w, b = weight.to(torch_dtype), bias.to(torch_dtype)
            candidates.append(lambda a, w=w, b=b: F.linear(a, w, b))
            if dtype == "float32" and device.type == "cpu" and onednn_linear_supported():
                candidates.append(OneDnnLinear(weight, bias))
        a = x if dtype == "int8" else x.to(getattr(torch, dtype))
        best = min(min(timed(lambda f=f: f(a), device, 1, 1) for _ in range(10)) for f in candidates)
        rates[dtype] = ops / best
    big = torch.ones(64 << 20, device=device)  # 256 MiB: far larger than any cache
    bandwidth = big.numel() * 4 / min(timed(big.sum, device, 1, 1) for _ in range(5))
    return {"ops_per_s": rates, "bandwidth_bytes_per_s": bandwidth}


def best_limits(*measured: dict) -> dict:
    """The best of several :func:`machine_limits` (a shared machine's dips are not its limits)."""
    return {"ops_per_s": {dtype: max(m["ops_per_s"][dtype] for m in measured) for dtype in measured[0]["ops_per_s"]},
            "bandwidth_bytes_per_s": max(m["bandwidth_bytes_per_s"] for m in measured)}


def real_work(lengths: list[int], config) -> float:
    """FLOPs the real tokens of sequences of these lengths need (linear layers + attention scores and mixing)."""
    h, i = config.hidden_size, config.intermediate_size
    per_token = 2 * (4 * h * h + 2 * h * i)
    return config.num_layers * sum(length * per_token + 4 * length * length * h for length in lengths)


def weight_bytes(config, dtype: str) -> float:
    """Bytes of linear-layer weights one forward pass reads (int8 keeps the fused QKV in float32)."""
    h, i = config.hidden_size, config.intermediate_size
    if dtype == "int8":
        return config.num_layers * (3 * h * h * 4 + (h * h + 2 * h * i))
    return config.num_layers * (4 * h * h + 2 * h * i) * torch.finfo(getattr(torch, dtype)).bits // 8


def ceilings(results: dict, workloads: dict, limits: dict, config) -> list[dict]:
    """For each (workload, dtype): measured speed-up, ceiling on this machine, and issue 3's target if any."""
    baseline = {r["workload"]: r for r in results["rows"] if r["engine"] == BASELINE}
    rows = []
    for row in results["rows"]:
        if not row["engine"].startswith("minilm-npu packed "):
            continue
        dtype = row["engine"].rsplit(" ", 1)[1]
        lengths, forwards = workloads[row["workload"]]
        floor = max(real_work(lengths, config) / limits["ops_per_s"][dtype],
                    forwards * weight_bytes(config, dtype) / limits["bandwidth_bytes_per_s"])
        ceiling = baseline[row["workload"]]["latency_ms"] / 1e3 / floor
        target = None
        if results["device_type"] == "cpu":
            target = next((v for (w, d), v in CPU_TARGETS.items() if row["workload"].startswith(w) and d == dtype),
                          None)
        rows.append({"workload": row["workload"], "dtype": dtype, "speedup": row["speedup"], "ceiling": ceiling,
                     "target": target})
    return rows


class InProcess:
    """An engine timed in this process."""

    def __init__(self, label: str, encode):
        self.label, self.encode = label, encode

    def time(self, texts: list[str], batch_size: int, device: torch.device, warmup: int, rounds: int) -> float:
        return timed(lambda: self.encode(texts, batch_size), device, warmup, rounds)

    def close(self) -> None:
        pass


def _sentence_transformers_child(conn, model_dir: str, device: str) -> None:
    """Child process: load sentence-transformers, then time whatever the parent asks for."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(model_dir, device=device)
    conn.send("ready")
    while (request := conn.recv()) is not None:
        texts, batch_size, warmup, rounds = request
        conn.send(timed(lambda: st.encode(texts, batch_size=batch_size), torch.device(device), warmup, rounds))


class FreshProcess:
    """sentence-transformers in a child interpreter, as its users run it.

    The packed engine tunes glibc's allocator for its whole process (see ``tune_host_allocator``), which speeds up
    any PyTorch CPU code in that process, sentence-transformers included. The baseline therefore runs in a fresh
    process that never loads our engine; it only times what the parent sends, so the two still take turns on the
    same machine within seconds of each other.
    """

    def __init__(self, label: str, model_dir: str, device: torch.device):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.label = label
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_sentence_transformers_child, args=(child, model_dir, str(device)),
                                       daemon=True)
        self.process.start()
        if self.conn.recv() != "ready":
            raise RuntimeError("the sentence-transformers process did not start")

    def time(self, texts: list[str], batch_size: int, device: torch.device, warmup: int, rounds: int) -> float:
        self.conn.send((texts, batch_size, warmup, rounds))
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send(None)
        self.process.join(timeout=30)


def engines(device: torch.device, dtypes: list[str], model_dir: str) -> list:
    """sentence-transformers (fresh process) first, then our engine per dtype, then sentence-transformers again in
    this process (whose allocator our CPU engine tuned), to show what that setting alone is worth."""
    from sentence_transformers import SentenceTransformer

    found = [FreshProcess(BASELINE, model_dir, device)]
    for dtype in dtypes:
        encoder = MiniLMEncoder(model_path=model_dir, device=str(device), dtype=dtype, backend="packed")
        found.append(InProcess(f"minilm-npu packed {dtype}",
                               lambda texts, bs, e=encoder: e.encode(texts, batch_size=bs)))
    if device.type == "cpu" and tune_host_allocator():
        st = SentenceTransformer(model_dir, device=str(device))
        found.append(InProcess(BASELINE + ", host allocator tuned",
                               lambda texts, bs: st.encode(texts, batch_size=bs)))
    return found


def time_interleaved(engine_list: list, texts: list[str], batch_size: int, device: torch.device, warmup: int,
                     rounds: int, passes: int = 2) -> list[float]:
    """Mean seconds per engine: warm-up once, then ``rounds`` timed rounds split into ``passes`` turns in which the
    engines take turns, so a machine that slows down or speeds up meanwhile affects them all alike."""
    chunks = [rounds // passes + (1 if k < rounds % passes else 0) for k in range(min(passes, rounds))]
    totals = [0.0] * len(engine_list)
    for turn, chunk in enumerate(chunks):
        for index, engine in enumerate(engine_list):
            totals[index] += chunk * engine.time(texts, batch_size, device, warmup if turn == 0 else 0, chunk)
    return [total / rounds for total in totals]


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
    results: dict = {"device": describe(device).name, "device_type": device.type, "torch": torch.__version__,
                     "threads": torch.get_num_threads(), "machine": platform.platform(), "rows": []}
    from minilm_npu.engine.bert import BertConfig
    from minilm_npu.modelfiles import resolve_model
    from minilm_npu.tokenization import Tokenizer

    model_files = resolve_model(None)
    config = BertConfig.from_dict(model_files.config)
    tokenizer = Tokenizer(model_files)
    runs = [(f"24 mixed, batch {bs}", MIXED_24, bs, 3, rounds) for bs in batch_sizes]
    runs.append(("1 short sentence, batch 1", [SHORT_SENTENCE], 1, 3, rounds * 3))
    if corpus:
        runs.append((f"STS-B dev {len(corpus)} sentences, batch 32", corpus, 32, 0,
                     1 if args.quick else args.corpus_rounds))
    # Per workload, for its ceiling: the real token lengths and how many forward passes it takes.
    workloads = {workload: ([len(ids) for ids in tokenizer.encode(texts)], -(-len(texts) // batch_size))
                 for workload, texts, batch_size, _, _ in runs}
    print("-- machine limits", file=sys.stderr, flush=True)
    limits_before = machine_limits(device, dtypes)
    engine_list = engines(device, dtypes, str(model_files.directory))
    try:
        for workload, texts, batch_size, warmup, count in runs:
            print(f"-- {workload}", file=sys.stderr, flush=True)
            seconds = time_interleaved(engine_list, texts, batch_size, device, warmup, count)
            for engine, mean in zip(engine_list, seconds):
                results["rows"].append({"engine": engine.label, "workload": workload,
                                        "sentences_per_s": len(texts) / mean, "latency_ms": mean * 1e3})
    finally:
        for engine in engine_list:
            engine.close()
    baseline = {r["workload"]: r for r in results["rows"] if r["engine"] == BASELINE}
    for row in results["rows"]:
        row["speedup"] = row["sentences_per_s"] / baseline[row["workload"]]["sentences_per_s"]
    print("-- machine limits again", file=sys.stderr, flush=True)
    limits = best_limits(limits_before, machine_limits(device, dtypes))
    results["limits"] = limits
    results["ceilings"] = ceilings(results, workloads, limits, config)
    return results


def markdown(results: dict) -> str:
    lines = [f"Device: {results['device']} ({results['threads']} threads), torch {results['torch']}, "
             f"{results['machine']}", "",
             "| workload | engine | sentences/s | latency (ms) | vs sentence-transformers |",
             "| --- | --- | ---: | ---: | ---: |"]
    for row in results["rows"]:  # workload by workload, in the order they ran
        lines.append(f"| {row['workload']} | {row['engine']} | {row['sentences_per_s']:,.1f} | "
                     f"{row['latency_ms']:,.2f} | {row['speedup']:.2f}x |")
    limits = results["limits"]
    rates = ", ".join(f"{dtype} {rate / 1e9:,.0f} G{'OP' if dtype == 'int8' else 'FLOP'}/s"
                      for dtype, rate in limits["ops_per_s"].items())
    lines += ["", f"What this machine allows (best of measurements before and after the runs): linear-layer rate "
              f"{rates}; memory read "
              f"{limits['bandwidth_bytes_per_s'] / 1e9:,.1f} GB/s. Ceiling = sentence-transformers' time / the time of "
              "the real tokens' GEMMs at that rate (or of reading the weights once per forward pass, if longer).", "",
              "| workload | dtype | vs sentence-transformers | ceiling on this machine | target | verdict |",
              "| --- | --- | ---: | ---: | ---: | --- |"]
    for row in results["ceilings"]:
        target = row["target"]
        if target is None:
            verdict, shown = "", ""
        else:
            shown = f"{target:g}x"
            verdict = ("met" if row["speedup"] >= target else
                       "beyond this machine" if row["ceiling"] < target else "not met")
        lines.append(f"| {row['workload']} | {row['dtype']} | {row['speedup']:.2f}x | {row['ceiling']:.1f}x | "
                     f"{shown} | {verdict} |")
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
