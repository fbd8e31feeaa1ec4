"""``minilm-npu accuracy``: the port report's accuracy protocol against the CPU float32 reference."""

from __future__ import annotations

import argparse
import sys

from ..config import parse_dtypes as parse
from .common import is_reranker_path, non_negative_float, positive_int


def parse_dtypes(text: str) -> list[str]:
    """``float32``, ``float32,bfloat16`` or ``all`` (every dtype the package knows)."""
    return parse(text)


def target_of(args: argparse.Namespace):
    """The :class:`~minilm_npu.verify.settings.Target` the flags of :func:`add_target_args` describe."""
    from ..verify.settings import Target

    return Target(device=args.device, dtypes=parse_dtypes(args.dtype), backend=args.backend, model_path=args.model_path)


def add_target_args(parser: argparse.ArgumentParser) -> None:
    """--device, --dtype, --backend, --model-path: the side under test (shared by accuracy, bench, report)."""
    parser.add_argument("--device", default="auto", help="device under test: npu:0, cuda:0, cpu, auto (default)")
    parser.add_argument(
        "--dtype",
        default="float32",
        help="dtype under test, a comma list (float32,float16) or all; a dtype the engine cannot "
        "run is reported as unsupported (default: float32)",
    )
    parser.add_argument("--backend", default=None, help="backend under test (default: the default engine)")
    parser.add_argument(
        "--model-path",
        "--model_path",
        dest="model_path",
        default=None,
        help="model under test (default: the bundled official all-MiniLM-L6-v2)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``accuracy`` sub-command."""
    parser = subparsers.add_parser(
        "accuracy",
        help="accuracy of a device/dtype/backend against the CPU float32 reference (PASS/FAIL)",
        description="Encodes the built-in 24 mixed sentences (plus --texts) with the CPU float32 reference and with "
        "the device/dtype/backend under test; reports mean/min cosine, error rate, max abs error, MSE, "
        "similarity-matrix Pearson r, batch invariance, determinism and (with --sts) Spearman. "
        "Exit 0 on PASS, 1 on FAIL, 2 on bad input.",
    )
    add_target_args(parser)
    parser.add_argument(
        "--reference-model-path",
        "--reference_model_path",
        dest="reference_model_path",
        default=None,
        help="model for the reference side (default: the bundled official files, so a damaged copy under test fails)",
    )
    parser.add_argument("--texts", default=None, help="extra texts, one per line (UTF-8)")
    parser.add_argument("--sts", default=None, help="STS file (stsb-dev.tsv layout) for Spearman on both sides")
    parser.add_argument(
        "--sts-limit",
        "--sts_limit",
        dest="sts_limit",
        type=positive_int,
        default=None,
        help="use only the first N pairs of the STS file",
    )
    parser.add_argument(
        "--threshold",
        type=non_negative_float,
        default=1.0,
        help="largest error rate in %% that passes (default: %(default)s)",
    )
    parser.add_argument(
        "--min-cosine",
        "--min_cosine",
        dest="min_cosine",
        type=non_negative_float,
        default=0.99,
        help="smallest per-text cosine that passes (default: %(default)s)",
    )
    parser.add_argument("--out", default=None, help="write accuracy.json, accuracy.md and PNG plots here")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of Markdown")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the accuracy protocol; 0 on PASS, 1 on FAIL."""
    from ..errors import InputError
    from ..verify.accuracy import FAIL, UNSUPPORTED, AccuracySettings, Thresholds, load_texts, run_accuracy
    from ..verify.report import accuracy_markdown, to_json, write_accuracy

    if is_reranker_path(args.model_path):
        return _run_reranker(args)
    target = target_of(args)
    settings = AccuracySettings(
        target=target,
        reference_model_path=args.reference_model_path,
        user_texts=load_texts(args.texts) if args.texts else (),
        sts_path=args.sts,
        sts_limit=args.sts_limit,
        thresholds=Thresholds(error_rate_pct=args.threshold, min_cosine=args.min_cosine),
        progress=sys.stderr.isatty(),
    )
    result = run_accuracy(settings)
    if result.status == UNSUPPORTED:
        raise InputError("; ".join(str(r.reason) for r in result.report.results))
    if args.out:
        write_accuracy(result, args.out)
    sys.stdout.write(to_json(result.report) if args.json else accuracy_markdown(result.report))
    print(f"accuracy: {result.status}", file=sys.stderr)
    return 1 if result.status == FAIL else 0


def _run_reranker(args: argparse.Namespace) -> int:
    """A cross-encoder's accuracy: its scores against sentence-transformers' CrossEncoder on the same directory."""
    import json
    from pathlib import Path

    from ..verify.accuracy import load_sts, load_texts
    from ..verify.rerank_accuracy import RerankAccuracySettings, rerank_markdown, run_rerank_accuracy
    from ..verify.results import FAIL

    sts_pairs: tuple[tuple[str, str], ...] = ()
    if args.sts:
        first, second, _ = load_sts(args.sts, args.sts_limit)
        sts_pairs = tuple(zip(first, second))
    settings = RerankAccuracySettings(
        model_path=args.model_path,
        device=args.device,
        dtypes=tuple(parse_dtypes(args.dtype)),
        documents=tuple(load_texts(args.texts)) if args.texts else (),
        sts_pairs=sts_pairs,
    )
    report = run_rerank_accuracy(settings)
    markdown = rerank_markdown(report)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "rerank_accuracy.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        (out / "rerank_accuracy.md").write_text(markdown)
    sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n" if args.json else markdown)
    print(f"accuracy: {report.status}", file=sys.stderr)
    return 1 if report.status == FAIL else 0
