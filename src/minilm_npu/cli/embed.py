"""``minilm-npu embed INPUT -o OUTPUT``: embed a whole corpus, crash-safe and resumable.

INPUT is a .txt (one text per line), .jsonl, .csv/.tsv (with a header) or .parquet file, optionally gzipped
(.txt.gz, .jsonl.gz, ...), or a directory of such files. OUTPUT is a directory that becomes a Parquet dataset
(columns id, embedding, and text with --keep-text) or a path ending in .npy for small jobs.

Both may be on object storage: s3://bucket/prefix (or gs://, hdfs://: any URI pyarrow.fs opens). Credentials and
endpoint come from the standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION,
AWS_ENDPOINT_URL for S3-compatible stores). A .npy output must be local.

Killed or crashed? Run the same command again: it continues after the last saved shard. If the input, model,
dtype or settings changed since, it stops instead of mixing results; --overwrite starts again. Only one embed
writes to an output at a time (a second one stops and names the first). Every rerun checks the saved shards'
sizes and Parquet footers and re-embeds a damaged or missing one; --verify checks their checksums as well.
"""

from __future__ import annotations

import argparse
import sys

from .common import add_encoder_args, encoder_config, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``embed``."""
    parser = subparsers.add_parser(
        "embed",
        help="embed a corpus file into Parquet shards (resumable)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "input",
        help="input file or directory (.txt, .jsonl, .csv, .tsv, .parquet, or .gz), "
        "local or a URI such as s3://bucket/docs/",
    )
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        help="output directory (Parquet dataset; local or s3://bucket/prefix) or local FILE.npy",
    )
    parser.add_argument(
        "--text-field",
        "--text_field",
        dest="text_field",
        default="text",
        help="column or JSON key with the text (default: %(default)s; not used for .txt)",
    )
    parser.add_argument(
        "--id-field",
        "--id_field",
        dest="id_field",
        default=None,
        help="column or JSON key with the row id (default: the row number)",
    )
    parser.add_argument(
        "--keep-text",
        "--keep_text",
        dest="keep_text",
        action="store_true",
        help="store the text beside its vector (search then prints it)",
    )
    parser.add_argument(
        "--on-error",
        "--on_error",
        dest="on_error",
        choices=("fail", "skip"),
        default="fail",
        help="bad row (missing/null text, not UTF-8, unreadable file): stop with its row number "
        "(fail, default) or list it in a side file and go on (skip)",
    )
    parser.add_argument("--overwrite", action="store_true", help="discard an existing output and start again")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="also check every saved shard's SHA-256 against the manifest (reads them all); "
        "a damaged shard is re-embedded",
    )
    parser.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local (this process, all --device workers) or ray (Ray actors writing their own shards)",
    )
    parser.add_argument(
        "--ray-address",
        "--ray_address",
        dest="ray_address",
        default=None,
        help="existing Ray cluster (e.g. auto or ray://head:10001); default: a local Ray",
    )
    parser.add_argument(
        "--shard-rows",
        "--shard_rows",
        dest="shard_rows",
        type=positive_int,
        default=None,
        help="input rows per shard, i.e. the most work a crash loses (default: 8192)",
    )
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="no progress bar (default: a bar when stderr is a terminal)",
    )
    add_encoder_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the job and print a one-line summary."""
    from ..corpus.job import DEFAULT_SHARD_ROWS, EmbedSettings, Engine, LocalEngine, embed_corpus
    from ..errors import InputError
    from ..modelfiles import resolve_model

    if args.ray_address and args.engine != "ray":
        raise InputError("--ray-address needs --engine ray")
    settings = EmbedSettings(
        text_field=args.text_field,
        id_field=args.id_field,
        keep_text=args.keep_text,
        on_error=args.on_error,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        shard_rows=args.shard_rows or DEFAULT_SHARD_ROWS,
        progress=args.progress,
        verify=args.verify,
    )
    config = encoder_config(args)
    model = resolve_model(config.model_path).name  # cheap: the fingerprint needs it before any model loads
    engine: Engine
    if args.engine == "ray":
        from ..corpus.ray_engine import RayEngine

        engine = RayEngine(config, address=args.ray_address, model=model)
    else:
        from ..encoder import MiniLMEncoder

        engine = LocalEngine(lambda: MiniLMEncoder.from_config(config), model=model, dtype=config.dtype)
    summary = embed_corpus(args.input, args.output, engine, settings)
    for problem in summary.repaired:
        print(f"repaired damaged shard {problem}", file=sys.stderr)
    if summary.already_complete:
        checked = f"; {summary.verified} shards' checksums verified" if args.verify else ""
        print(
            f"{summary.output} is already complete: {summary.rows_written} rows "
            f"({summary.rows_skipped} skipped){checked}; nothing to do"
        )
        return 0
    line = (
        f"embedded {summary.rows_written} rows into {summary.output} "
        f"({summary.new_rows} this run in {summary.seconds:.1f} s, {summary.rows_per_second:.1f} rows/s)"
    )
    if summary.repaired:
        line += f"; {len(summary.repaired)} damaged shard(s) re-embedded"
    if summary.rows_skipped:
        line += f"; skipped {summary.rows_skipped} bad rows, listed in {summary.skipped_file}"
    print(line, file=sys.stdout)
    return 0
