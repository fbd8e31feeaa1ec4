"""The accelerator targets of issue 10, measured against sentence-transformers on the same card at the same dtype.

Workloads (every engine takes its turn on each workload before the next, so drift hits all alike):

* the 24 mixed sentences of the port report at batch 32 and 64 (the batch is the first B texts, cycled, as in
  ``minilm-npu bench``; 3 warm-up calls, mean of 10);
* the 3,000 STS-B dev sentences at batch 128 (1 warm-up, mean of 3);
* one short sentence at batch 1, end to end: text in, normalised vector on the host (3 warm-ups, 50 calls; mean,
  p50 and p95).

Engines: ours per dtype with device graphs (the default) and eagerly (``MINILM_NPU_GRAPHS=0``), and
sentence-transformers per dtype (float32 is forced: transformers 5 loads a checkpoint in its stored dtype).
Timing is :func:`minilm_npu.verify.bench.time_calls` (device-synchronised). Both sides tokenize with HF
tokenizers' default (parallel) batch encoding, as their users run them. Prints a Markdown table with the
ratio against sentence-transformers at the same dtype and a verdict per target.

Usage: ``python benchmarks/bench_gpu.py --device cuda:0 [--model-path DIR] [--stsb FILE] [--json out.json]``
(``--rounds``, ``--warmup`` and ``--batch-sizes`` shrink it for a dry run; the targets hold for the defaults).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from minilm_npu import MiniLMEncoder  # noqa: E402
from minilm_npu.devices import GRAPHS_ENV, DeviceError, describe, parse_devices, synchronize  # noqa: E402
from minilm_npu.errors import InputError  # noqa: E402
from minilm_npu.samples import MIXED_24, SHORT_SENTENCE  # noqa: E402
from minilm_npu.verify.accuracy import load_sts  # noqa: E402
from minilm_npu.verify.bench import batch_for, time_calls  # noqa: E402

DEFAULT_STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb-dev.tsv"
#: (workload, dtype) -> (rule, value): "ratio" = at least that many times sentence-transformers; "ms" = at most.
TARGETS = {
    ("24 mixed, batch 32", "float16"): ("ratio", 3.0),
    ("24 mixed, batch 64", "float16"): ("ratio", 3.0),
    ("STS-B dev 3,000, batch 128", "float16"): ("ratio", 2.0),
    ("1 short sentence, batch 1", "float32"): ("ms", 1.0),
    ("1 short sentence, batch 1", "float16"): ("ms", 1.0),
}


def our_engine(model_path: str | None, device: str, dtype: str, graphs: bool):
    previous = os.environ.get(GRAPHS_ENV)
    os.environ[GRAPHS_ENV] = "1" if graphs else "0"  # read when the backend is built
    try:
        encoder = MiniLMEncoder(model_path=model_path, device=device, dtype=dtype)
    finally:
        if previous is None:
            os.environ.pop(GRAPHS_ENV)
        else:
            os.environ[GRAPHS_ENV] = previous
    encoder.warmup()
    return lambda texts, batch_size: encoder.encode(texts, batch_size=batch_size)


def st_engine(model_path: str, device: str, dtype: str):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device=device).to(getattr(torch, dtype))
    return lambda texts, batch_size: model.encode(texts, batch_size=batch_size, convert_to_numpy=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--model-path", default=None, help="model directory (default: the bundled model)")
    parser.add_argument("--dtypes", default="float32,float16,bfloat16")
    parser.add_argument("--stsb", type=Path, default=DEFAULT_STSB)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per workload (default 3)")
    parser.add_argument("--batch-sizes", default="32,64", help="batch sizes of the 24-mixed workload (default 32,64)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    try:
        device = parse_devices(args.device)[0]
    except DeviceError as err:
        sys.exit(f"error: {err}")
    sync = lambda: synchronize(device)  # noqa: E731
    model_path = args.model_path
    if model_path is None:
        from minilm_npu.modelfiles import bundled_model_dir

        model_path = str(bundled_model_dir())

    engines = {}
    for dtype in args.dtypes.split(","):
        try:
            engines[f"minilm-npu {dtype}, graphs"] = (dtype, our_engine(model_path, str(device), dtype, True))
            engines[f"minilm-npu {dtype}, eager"] = (dtype, our_engine(model_path, str(device), dtype, False))
        except InputError as err:
            print(f"skipping {dtype}: {err}")
            continue
        engines[f"sentence-transformers {dtype}"] = (dtype, st_engine(model_path, str(device), dtype))

    sizes = [int(b) for b in args.batch_sizes.split(",")]
    workloads = [(f"24 mixed, batch {b}", batch_for(MIXED_24, b), b, args.warmup, args.rounds) for b in sizes]
    if args.stsb.is_file():
        first, second, _ = load_sts(args.stsb)
        workloads.append(("STS-B dev 3,000, batch 128", first + second, 128, 1, 3))
    workloads.append(("1 short sentence, batch 1", [SHORT_SENTENCE], 1, args.warmup, 5 * args.rounds))

    rows = []
    for name, texts, batch_size, warmup, rounds in workloads:
        for label, (dtype, encode) in engines.items():
            stats = time_calls(lambda batch, _b, e=encode, bs=batch_size: e(batch, bs), sync, texts, warmup, rounds)
            rows.append(
                {
                    "workload": name,
                    "engine": label,
                    "dtype": dtype,
                    "sentences": len(texts),
                    **stats,
                    "sentences_per_s": len(texts) / (stats["mean_ms"] / 1000),
                }
            )
    baseline = {(r["workload"], r["dtype"]): r for r in rows if r["engine"].startswith("sentence-transformers")}

    info = describe(device)
    print(f"\n{info.name} ({device}); torch {torch.__version__}; host {platform.processor() or platform.machine()}")
    print("| workload | engine | sentences/s | mean ms | p50 ms | vs sentence-transformers (same dtype) | target |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for row in rows:
        base = baseline.get((row["workload"], row["dtype"]))
        ratio = row["sentences_per_s"] / base["sentences_per_s"] if base else float("nan")
        row["ratio_vs_st"] = ratio
        verdict = ""
        rule = TARGETS.get((row["workload"], row["dtype"]))
        if rule and row["engine"].endswith("graphs"):
            kind, value = rule
            met = ratio >= value if kind == "ratio" else row["p50_ms"] <= value
            verdict = (
                f"{'met' if met else 'NOT met'} ({'>=' if kind == 'ratio' else '<='} {value:g}"
                f"{'x' if kind == 'ratio' else ' ms p50'})"
            )
            row["target"] = verdict
        print(
            f"| {row['workload']} | {row['engine']} | {row['sentences_per_s']:,.1f} | {row['mean_ms']:.3f} | "
            f"{row['p50_ms']:.3f} | {ratio:.2f}x | {verdict} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"device": info.name, "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
