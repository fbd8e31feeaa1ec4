"""``minilm-npu report``: check, accuracy and bench for one device, with an index.md linking them."""

from __future__ import annotations

import argparse
import sys

from .accuracy import add_target_args
from .bench import add_bench_args, bench_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` sub-command."""
    parser = subparsers.add_parser(
        "report",
        help="run check, accuracy and bench for one device and write all reports plus index.md",
        description="The whole port verification in one command: DIR/check.*, DIR/accuracy.* (with plots), "
        "DIR/bench.* (with plots) and DIR/index.md. Exit 0 only when the check and accuracy pass and, on an NPU, "
        "no operator fell back to the CPU.",
    )
    add_target_args(parser)
    add_bench_args(parser)
    parser.add_argument("--texts", default=None, help="extra texts for the accuracy run, one per line")
    parser.add_argument("--sts", default=None, help="STS file (stsb-dev.tsv layout) for the accuracy run")
    parser.add_argument(
        "--reference-model-path",
        "--reference_model_path",
        dest="reference_model_path",
        default=None,
        help="model for the CPU float32 reference side (default: the bundled official files)",
    )
    parser.add_argument("--out", required=True, help="directory for the reports (created if missing)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run all three; 0 when check and accuracy pass (and no NPU operator fell back to the CPU), 1 otherwise."""
    from ..verify.accuracy import PASS, AccuracySettings, load_texts
    from ..verify.results import FAIL
    from ..verify.suite import run_report

    bench = bench_settings(args)
    accuracy = AccuracySettings(
        target=bench.target,
        reference_model_path=args.reference_model_path,
        user_texts=load_texts(args.texts) if args.texts else (),
        sts_path=args.sts,
        progress=bench.progress,
    )
    reports = run_report(args.out, accuracy, bench)
    ok = reports.check.status == "ok" and reports.accuracy.status == PASS and reports.bench.status != FAIL
    print(
        f"check {reports.check.status}, accuracy {reports.accuracy.status}, bench {reports.bench.status}; "
        f"reports in {reports.index}",
        file=sys.stderr,
    )
    return 0 if ok else 1
