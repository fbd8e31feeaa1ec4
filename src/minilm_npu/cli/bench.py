"""``minilm-npu bench``: the port report's performance protocol, per batch size."""

from __future__ import annotations

import argparse
import sys

from .accuracy import add_target_args, target_of
from .common import positive_int


def batch_sizes(text: str) -> list[int]:
    """argparse type: ``1,4,16,32,64``."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not sizes or any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return sizes


def add_bench_args(parser: argparse.ArgumentParser) -> None:
    """--batch-sizes, --warmup, --rounds, --compare-cpu, --compare (shared with report)."""
    parser.add_argument(
        "--batch-sizes",
        "--batch_sizes",
        dest="batch_sizes",
        type=batch_sizes,
        default=[1, 4, 16, 32, 64],
        help="comma-separated batch sizes (default: 1,4,16,32,64)",
    )
    parser.add_argument(
        "--warmup",
        type=positive_int,
        default=3,
        help="untimed calls per batch size; the first is reported as first-call time (default: 3)",
    )
    parser.add_argument("--rounds", type=positive_int, default=10, help="timed calls per batch size (default: 10)")
    parser.add_argument(
        "--compare-cpu",
        "--compare_cpu",
        dest="compare_cpu",
        action="store_true",
        help="also time the CPU (float32) and report the device/CPU speedup",
    )
    parser.add_argument(
        "--compare",
        choices=["sentence-transformers"],
        default=None,
        help="also time sentence-transformers on the same device and report the ratio",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` sub-command."""
    parser = subparsers.add_parser(
        "bench",
        help="latency and throughput per batch size (device-synchronised), optionally vs CPU / ST",
        description="Times encode() on the built-in 24 mixed sentences for each batch size: mean/p50/p95 latency, "
        "sentences/s, tokens/s, and the first-call time separately.",
    )
    add_target_args(parser)
    add_bench_args(parser)
    parser.add_argument("--out", default=None, help="write bench.json, bench.md and PNG plots here")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of Markdown")
    parser.set_defaults(func=run)


def bench_settings(args: argparse.Namespace):
    """The :class:`~minilm_npu.verify.settings.BenchSettings` the flags of ``bench`` (and ``report``) describe."""
    from ..verify.settings import BenchSettings

    return BenchSettings(
        target=target_of(args),
        batch_sizes=args.batch_sizes,
        warmup=args.warmup,
        rounds=args.rounds,
        compare_cpu=args.compare_cpu,
        compare=args.compare,
        progress=sys.stderr.isatty(),
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; 0 when at least one dtype ran (and, on an NPU, no operator fell back to the CPU)."""
    from ..errors import InputError
    from ..verify.bench import run_bench
    from ..verify.report import bench_markdown, to_json, write_bench
    from ..verify.results import UNSUPPORTED

    report = run_bench(bench_settings(args))
    if report.status == UNSUPPORTED:
        raise InputError("; ".join(str(r.reason) for r in report.results))
    if args.out:
        write_bench(report, args.out)
    sys.stdout.write(to_json(report) if args.json else bench_markdown(report))
    if report.cpu_fallbacks:
        ops = ", ".join(f.op for f in report.cpu_fallbacks)
        print(f"bench failed: operator(s) ran on the CPU instead of the NPU: {ops}", file=sys.stderr)
        return 1
    return 0
