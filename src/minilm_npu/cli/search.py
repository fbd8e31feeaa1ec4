"""``minilm-npu search CORPUS "query"``: exact cosine top-k over an embedded corpus.

CORPUS is an output directory of ``minilm-npu embed`` (or any Parquet file/directory with ``id`` and
``embedding`` columns). The corpus is scanned in chunks, so it may be larger than memory. Prints rank, score, id
and the text when the corpus kept it (``embed --keep-text``); ``--json`` prints one JSON object instead.
"""

from __future__ import annotations

import argparse
import json

from .common import add_encoder_args, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``search``."""
    parser = subparsers.add_parser(
        "search",
        help="exact cosine top-k over an embedded corpus",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("corpus", help="output directory of `minilm-npu embed`, or a .parquet file")
    parser.add_argument("query", nargs="+", help="query text (several queries are searched together)")
    parser.add_argument(
        "-k", "--top-k", dest="k", type=positive_int, default=10, help="results per query (default: %(default)s)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_encoder_args(parser)
    parser.set_defaults(func=run)


def _shorten(text: str | None, width: int = 100) -> str:
    if text is None:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def run(args: argparse.Namespace) -> int:
    """Search and print the hits."""
    from ..corpus.search import corpus_files, search_corpus
    from .common import build_encoder

    corpus_files(args.corpus)  # a missing or unfinished corpus fails before the model loads
    encoder = build_encoder(args)
    results = search_corpus(args.corpus, list(args.query), encoder, k=args.k)
    if args.json:
        payload = [
            {
                "query": q,
                "results": [
                    {
                        "rank": h.rank,
                        "id": h.id,
                        "score": round(h.score, 6),
                        **({"text": h.text} if h.text is not None else {}),
                    }
                    for h in hits
                ],
            }
            for q, hits in zip(args.query, results)
        ]
        print(json.dumps(payload[0] if len(payload) == 1 else payload, ensure_ascii=False, indent=1))
        return 0
    for index, (query, hits) in enumerate(zip(args.query, results)):
        if len(args.query) > 1:
            print(("\n" if index else "") + f"query: {query}")
        width = max([len(h.id) for h in hits] + [2])
        print(f"{'rank':>4}  {'score':>8}  {'id':<{width}}  text")
        for hit in hits:
            print(f"{hit.rank:>4}  {hit.score:>8.4f}  {hit.id:<{width}}  {_shorten(hit.text)}")
    return 0
