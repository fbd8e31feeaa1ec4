"""``minilm-npu encode`` (and the repository's ``inference.py``): the reference port's entry point.

``--text "Hello world"`` prints the embedding dimension (384), as the port report's basic check expects;
``--batch_file texts.txt --batch_size 32`` embeds a file line by line (streamed); ``--output FILE`` saves the
vectors as .npy, .jsonl or .csv.
"""

from __future__ import annotations

import argparse
import sys
import time

from .common import add_encoder_args, build_encoder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The encode flags (shared by ``minilm-npu encode`` and ``inference.py``)."""
    parser.add_argument("--text", action="append", default=None, help="text to embed (repeat for several)")
    parser.add_argument(
        "--batch-file",
        "--batch_file",
        dest="batch_file",
        default=None,
        help="UTF-8 file with one text per line; empty lines are embedded, never skipped",
    )
    parser.add_argument("--output", "-o", default=None, help="save vectors to FILE (.npy, .jsonl or .csv)")
    parser.add_argument(
        "--encoding-errors",
        "--encoding_errors",
        dest="encoding_errors",
        default="strict",
        choices=("strict", "replace"),
        help="a line that is not UTF-8: stop with an error (strict) or substitute U+FFFD",
    )
    parser.add_argument(
        "--no-normalize",
        dest="normalize",
        action="store_false",
        default=None,
        help="skip the model's own Normalize module (raw vectors; by default vectors are what its modules give)",
    )
    parser.add_argument("--similarity", action="store_true", help="print the cosine similarity matrix of --text")
    add_encoder_args(parser)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``encode``."""
    parser = subparsers.add_parser(
        "encode",
        help="embed texts or a batch file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def _encode_file(encoder, args: argparse.Namespace, rows: int) -> int:
    from ..textio import VectorWriter, iter_text_chunks

    started = time.perf_counter()
    writer = VectorWriter(args.output, rows, encoder.dimension) if args.output else None
    first = None
    from tqdm.auto import tqdm

    with tqdm(total=rows, unit="text", desc="encode", delay=2.0, file=sys.stderr) as bar:
        for chunk in iter_text_chunks(args.batch_file, encoding_errors=args.encoding_errors):
            vectors = encoder.encode(chunk, batch_size=args.batch_size, normalize_embeddings=args.normalize)
            if first is None:
                first = vectors[0]
            if writer:
                writer.write(vectors)
            bar.update(len(chunk))
    if writer:
        writer.close()
    elapsed = time.perf_counter() - started
    print(
        f"Encoded {rows} texts from {args.batch_file} in {elapsed:.2f} s "
        f"({rows / elapsed if elapsed else 0:.1f} texts/s)"
    )
    print(f"Embeddings shape: ({rows}, {encoder.dimension})")
    if first is not None:
        print(f"First embedding (first 5 values): {[round(float(x), 6) for x in first[:5]]}")
    if writer:
        print(f"Saved to {args.output}")
    return 0


def _encode_texts(encoder, args: argparse.Namespace) -> int:
    import numpy as np

    vectors = encoder.encode(args.text, batch_size=args.batch_size, normalize_embeddings=args.normalize)
    print(f"Embeddings shape: {tuple(vectors.shape)}")
    for text, vector in zip(args.text, vectors):
        print(f"{text[:60]!r}: {[round(float(x), 6) for x in vector[:5]]} ...")
    if args.similarity:
        similarity = vectors @ vectors.T
        print("Cosine similarity:")
        for row, text in zip(similarity, args.text):
            print("  " + " ".join(f"{x:6.3f}" for x in row) + f"  {text[:40]!r}")
    if args.output:
        from ..textio import VectorWriter

        with VectorWriter(args.output, len(vectors), encoder.dimension) as writer:
            writer.write(np.asarray(vectors))
        print(f"Saved to {args.output}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Embed ``--text`` values or a ``--batch-file``; print the dimension and a summary."""
    from ..errors import InputError

    if not args.text and not args.batch_file:
        raise InputError("nothing to encode: give --text TEXT or --batch-file FILE")
    if args.text and args.batch_file:
        raise InputError("give either --text or --batch-file, not both")
    rows = 0
    if args.batch_file:
        from ..textio import count_lines

        # One pass counts rows and checks every line's UTF-8, so a bad file fails before the model loads and
        # before anything is written.
        rows = count_lines(args.batch_file, args.encoding_errors)
    if args.output:
        from ..textio import VectorWriter

        VectorWriter.check_path(args.output)
    encoder = build_encoder(args)
    print(
        f"Model: {encoder.model_name} | device: {','.join(str(d) for d in encoder.devices)} | "
        f"dtype: {encoder.dtype} | backend: {encoder.backend_name}"
    )
    print(f"Embedding dimension: {encoder.dimension}")
    return _encode_file(encoder, args, rows) if args.batch_file else _encode_texts(encoder, args)
