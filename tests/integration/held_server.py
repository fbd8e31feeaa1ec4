"""``minilm-npu serve`` with the real model, whose warm-up waits for a gate file, for the warm-up tests.

Usage: ``python -m tests.integration.held_server GATE_FILE SERVE_ARGS...``. The warm-up waits until ``GATE_FILE``
says ``go`` (then it runs for real) or ``fail`` (then it raises, as a card that is lost would). Everything else is
the real command.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tests.integration.flaky_server import serve_wrapped


def held(encoder, gate: Path):
    """The real encoder, with a warm-up that waits for the gate."""
    warmup = encoder.warmup

    def gated_warmup() -> None:
        while (word := gate.read_text().strip() if gate.exists() else "") not in ("go", "fail"):
            time.sleep(0.05)
        if word == "fail":
            raise RuntimeError("injected warm-up failure")
        warmup()

    encoder.warmup = gated_warmup
    return encoder


def main(argv: list[str]) -> int:
    return serve_wrapped(lambda encoder: held(encoder, Path(argv[0])), argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
