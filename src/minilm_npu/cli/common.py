"""Arguments shared by sub-commands, so every command spells them the same way (dashes or underscores)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1, with a clear message otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a number >= 0, with a clear message otherwise."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_encoder_args(parser: argparse.ArgumentParser, device_default: str | None = None) -> None:
    """--model-path, --device, --dtype, --backend, --batch-size, --max-batch-tokens (defaults: EncoderConfig's)."""
    from ..config import BACKENDS, DTYPES, EncoderConfig  # a leaf: no torch

    d = EncoderConfig
    parser.add_argument(
        "--model-path",
        "--model_path",
        dest="model_path",
        default=d.model_path,
        help="model directory or hub id (default: the bundled official all-MiniLM-L6-v2)",
    )
    parser.add_argument(
        "--device",
        default=device_default or d.device,
        help="auto, cpu, cuda, cuda:1, npu, npu:0, or a list such as npu:0,npu:1 (default: %(default)s)",
    )
    parser.add_argument("--dtype", default=d.dtype, choices=DTYPES, help="default: %(default)s (exact)")
    parser.add_argument(
        "--backend",
        default=d.backend,
        choices=sorted(BACKENDS),
        help="packed (fast engine, default) or transformers (the reference port's method)",
    )
    parser.add_argument(
        "--batch-size",
        "--batch_size",
        dest="batch_size",
        type=positive_int,
        default=d.batch_size,
        help="most texts per forward pass (default: %(default)s)",
    )
    parser.add_argument(
        "--max-batch-tokens",
        "--max_batch_tokens",
        dest="max_batch_tokens",
        type=positive_int,
        default=d.max_batch_tokens,
        help="most real tokens per forward pass (default: %(default)s)",
    )


def encoder_config(args: argparse.Namespace):
    """The :class:`~minilm_npu.config.EncoderConfig` the arguments of :func:`add_encoder_args` describe."""
    from ..config import EncoderConfig

    return EncoderConfig(
        model_path=args.model_path,
        device=args.device,
        dtype=args.dtype,
        backend=args.backend,
        max_batch_tokens=args.max_batch_tokens,
        batch_size=args.batch_size,
    )


def build_encoder(args: argparse.Namespace):
    """A MiniLMEncoder from the arguments added by :func:`add_encoder_args`."""
    from ..encoder import MiniLMEncoder

    return MiniLMEncoder.from_config(encoder_config(args))


def is_reranker_path(model_path: str | None) -> bool:
    """Whether ``--model-path`` names a cross-encoder (reranker) rather than an embedding model."""
    from ..errors import ModelFilesError
    from ..rerankfiles import is_cross_encoder, model_directory

    if not model_path:
        return False
    try:
        return is_cross_encoder(model_directory(model_path))
    except ModelFilesError:
        return False  # the encoder reports the path's problem


def build_model(args: argparse.Namespace):
    """A :class:`~minilm_npu.Reranker` when ``--model-path`` is a cross-encoder, else :func:`build_encoder`'s."""
    if is_reranker_path(args.model_path):
        from ..reranker import Reranker

        return Reranker.from_config(encoder_config(args))
    return build_encoder(args)
