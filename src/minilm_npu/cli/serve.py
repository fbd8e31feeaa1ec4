"""``minilm-npu serve``: the OpenAI- and TEI-compatible embedding server.

The model is loaded before the port opens; the warm-up (every shape gear of every device once) runs behind the open
port, where ``GET /health`` and the model's routes answer 503 "warming up" until it is done. A failed warm-up stops
the server with exit code 1. SIGTERM/SIGINT: uvicorn stops accepting connections, lets in-flight requests finish (up to
``--graceful-timeout`` seconds), then the batcher drains and the process exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

from .common import non_negative_float, positive_int

API_KEY_ENV = "MINILM_NPU_API_KEY"

#: OpenMP settings a server wants, applied unless the user set any of them (then theirs stand, untouched).
#: Why: libgomp's default lets OpenMP worker threads spin 300,000 times (milliseconds) after every parallel region
#: before they sleep, so after each forward pass they hold the cores the event loop, HTTP parsing and tokenization
#: need, which on a small machine slows every request. ``OMP_WAIT_POLICY=PASSIVE`` alone fixes that but makes every
#: one of a forward's few hundred regions end in a futex sleep and wake-up, which slows the forward itself. An
#: explicit ``GOMP_SPINCOUNT`` overrides the policy's spin count: 10,000 spins bridge the microsecond gaps between
#: one forward's kernels, and the threads are asleep soon after it ends. A batch job keeps the defaults (spinning
#: there costs nothing).
SERVING_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"}


def serving_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What :func:`apply_serving_env` adds to ``environ``: all of :data:`SERVING_ENV`, or nothing when the user
    set any of it (a mix of ours and theirs would cap a spin they asked for, or spin where they said not to)."""
    return {} if any(name in environ for name in SERVING_ENV) else dict(SERVING_ENV)


def apply_serving_env() -> None:
    """Apply :func:`serving_env` to this process; call before torch is imported (OpenMP reads it once)."""
    if "torch" not in sys.modules:  # afterwards it is too late to matter; leave the process as it is
        os.environ.update(serving_env(os.environ))


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535 (0: any free port), not {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` sub-command."""
    from ..server.settings import ServerSettings
    from .common import add_encoder_args

    d = ServerSettings()
    p = subparsers.add_parser(
        "serve",
        help="run the OpenAI- and TEI-compatible embedding (or reranking) server",
        description="Serve embeddings over HTTP: POST /v1/embeddings and /embeddings, GET /v1/models (OpenAI); "
        "POST /, /invocations, /embed, /embed_all, /similarity, /tokenize, /decode (text-embeddings-inference); "
        "GET /health (and / and /ping), /info, /metrics; the API's description at /openapi.json and /docs. "
        "Concurrent requests are batched together on the device. On a cross-encoder (--model-path to a "
        "CrossEncoder directory) it serves reranking instead: POST /rerank (TEI), /v1/rerank (hosted rerank APIs), "
        "/ and /invocations; one model per server.",
    )
    add_encoder_args(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)"
    )
    p.add_argument("--port", type=_port, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' (except the health routes, /metrics and the docs); prefer the "
        f"{API_KEY_ENV} environment variable, which keeps the key out of process listings",
    )
    p.add_argument(
        "--max-client-batch-size",
        type=positive_int,
        default=d.max_client_batch_size,
        help=f"most inputs per request (default {d.max_client_batch_size})",
    )
    p.add_argument(
        "--max-concurrent-requests",
        type=positive_int,
        default=d.max_concurrent_requests,
        help=f"requests in progress at once; more get 429 (default {d.max_concurrent_requests})",
    )
    p.add_argument(
        "--served-model-name",
        default=None,
        help="model name reported to clients: /info, /v1/models and the OpenAI 'model' field (default: the "
        "model's hub id)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=non_negative_float,
        default=d.max_wait_ms,
        help=f"longest a partial batch waits for more requests (default {d.max_wait_ms})",
    )
    p.add_argument(
        "--max-body-bytes",
        type=positive_int,
        default=d.max_body_bytes,
        help=f"largest request body; larger get 413 (default {d.max_body_bytes})",
    )
    p.add_argument(
        "--no-docs",
        dest="docs",
        action="store_false",
        help="do not serve the API's description (/openapi.json, /docs, /redoc; public by default, as in "
        "text-embeddings-inference)",
    )
    # The embedding routes through FastAPI's routing instead of the fast path: for comparisons (bench_server.py).
    p.add_argument("--no-fast-path", dest="fast_path", action="store_false", help=argparse.SUPPRESS)
    p.add_argument(
        "--graceful-timeout",
        type=non_negative_float,
        default=30.0,
        help="seconds in-flight requests get to finish after SIGTERM/SIGINT (default 30)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="server log level (default info)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the model, open the port, warm up, then serve until SIGTERM/SIGINT. Returns the exit code (1 when
    the port could not be opened or the warm-up failed)."""
    apply_serving_env()  # first: nothing before this line has imported torch (the parser does not)
    import logging

    import uvicorn

    from ..errors import InputError
    from ..server import ServerSettings, create_app
    from .common import build_model

    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    try:
        settings = ServerSettings(
            served_model_name=args.served_model_name,
            api_key=api_key,
            max_client_batch_size=args.max_client_batch_size,
            max_concurrent_requests=args.max_concurrent_requests,
            max_wait_ms=args.max_wait_ms,
            max_body_bytes=args.max_body_bytes,
            docs=args.docs,
            fast_path=args.fast_path,
            warm_up_in_background=True,
        )
    except ValueError as err:
        raise InputError(str(err)) from None
    # force: the command line set up WARNING-level logging already; a server logs its warm-up and its errors.
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    app = create_app(build_model(args), settings)  # an encoder, or a reranker for a cross-encoder directory
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        lifespan="on",
        timeout_graceful_shutdown=args.graceful_timeout or None,
        access_log=False,
        # No X-Forwarded-* rewriting: nothing here reads the client's address, and it is work on every request.
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    readiness = app.state.server.readiness
    readiness.on_failure = lambda: setattr(server, "should_exit", True)  # uvicorn's own way to stop, checked often
    server.run()
    # uvicorn sets started once the lifespan ran and the port was bound; the warm-up behind it may still fail.
    return 0 if server.started and readiness.state != readiness.FAILED else 1


def main(argv: list[str] | None = None) -> int:
    """Run ``serve`` alone (``python -m minilm_npu.cli.serve``), e.g. where the full CLI is not installed."""
    from ..errors import USER_ERRORS

    parser = argparse.ArgumentParser(prog="minilm-npu")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
