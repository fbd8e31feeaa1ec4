"""``minilm-npu check``: the device doctor (devices, versions, Ascend settings, one real encode per device)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``check`` sub-command."""
    parser = subparsers.add_parser(
        "check",
        help="device doctor: devices, versions, Ascend settings, one real encode per device vs the CPU",
        description="Lists every device torch sees with its name and memory, the versions that matter (python, "
        "torch, torch_npu, transformers, tokenizers, CANN), the Ascend settings that change results or "
        "speed, and encodes a few texts on each requested device, comparing them with the CPU float32 "
        "reference. Exit code 0 only when every requested device passes.",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="devices to check: cpu, cuda, npu, npu:1, a comma list, or all (default: all "
        "devices torch sees; an absent NPU is then reported, not failed)",
    )
    parser.add_argument("--dtype", default="float32", help="dtype to encode with on each device (default: float32)")
    parser.add_argument("--backend", default=None, help="backend to check (default: the default engine)")
    parser.add_argument(
        "--model-path",
        "--model_path",
        dest="model_path",
        default=None,
        help="model directory (default: the bundled official all-MiniLM-L6-v2)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of Markdown")
    parser.add_argument("--out", default=None, help="also write check.json and check.md into this directory")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the doctor; 0 when every requested device passed, 1 otherwise."""
    from ..config import parse_dtype
    from ..verify.doctor import run_doctor
    from ..verify.report import check_markdown, to_json, write_check

    report = run_doctor(args.device, dtype=parse_dtype(args.dtype), backend=args.backend, model_path=args.model_path)
    if args.out:
        write_check(report, args.out)
    sys.stdout.write(to_json(report) if args.json else check_markdown(report))
    for check in report.checks:
        if check.status != "ok":
            print(f"check failed: {check.device}: {check.message}", file=sys.stderr)
    return 0 if report.status == "ok" else 1
