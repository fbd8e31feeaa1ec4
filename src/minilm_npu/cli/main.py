"""``minilm-npu``: one command, sub-commands discovered from the modules of this package.

Each module in ``minilm_npu/cli/`` that defines ``register(subparsers)`` adds its sub-command (and sets
``func=run`` on it). Building the parser imports no torch (defaults and choices come from the torch-free
:mod:`minilm_npu.config`), and modules keep heavy imports (torch, the server, Ray, transformers, matplotlib) inside
``run``: ``--help`` and argument errors are instant, and ``serve`` can still set the OpenMP environment before
torch loads.

User errors (bad input, missing model, unavailable device) print ``error: <message>`` and exit 2; an unexpected
failure prints one line too, and the traceback only with ``MINILM_NPU_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

from .. import __version__
from ..errors import USER_ERRORS

EXIT_USAGE = 2
EXIT_INTERNAL = 1


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every discovered sub-command."""
    parser = argparse.ArgumentParser(
        prog="minilm-npu",
        description="Exact, fast all-MiniLM-L6-v2 sentence embeddings on Ascend NPUs, CUDA GPUs and CPUs.",
    )
    parser.add_argument("--version", action="version", version=f"minilm-npu {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at info level (e.g. truncations)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    package = sys.modules[__package__]
    for module_info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if module_info.name in ("main", "common"):
            continue
        module = importlib.import_module(f"{__package__}.{module_info.name}")
        if hasattr(module, "register"):
            module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `minilm-npu encode ... | head`
        sys.stderr.close()
        return 0
    except Exception as err:  # noqa: BLE001 - the one place that turns failures into messages
        if isinstance(err, USER_ERRORS) or isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError)):
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USAGE
        if os.environ.get("MINILM_NPU_DEBUG"):
            raise
        print(f"error: {type(err).__name__}: {err} (set MINILM_NPU_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
