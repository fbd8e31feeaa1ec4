"""``minilm-npu serve`` with the real model behind a device that can be made to fail, for the failure tests.

Usage: ``python -m tests.integration.flaky_server FAIL_FILE SERVE_ARGS...``. While ``FAIL_FILE`` holds a positive
number, each forward pass on a device worker fails (``RuntimeError``) and the number goes down by one:
``1`` fails exactly the next batch, a large number is a device that keeps failing, ``0`` heals it. Everything else
is the real command.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from minilm_npu.cli import common, serve


class FlakyWorker:
    """One real device worker, except that ``run`` fails while the fail file counts down."""

    def __init__(self, worker, fail_file: Path, lock: threading.Lock):
        self._worker, self._fail_file, self._lock = worker, fail_file, lock

    @property
    def device(self):
        return self._worker.device

    def warmup(self):
        self._worker.warmup()

    def _maybe_fail(self):
        with self._lock:
            left = int(self._fail_file.read_text() or 0) if self._fail_file.exists() else 0
            if left > 0:
                self._fail_file.write_text(str(left - 1))
                raise RuntimeError("injected device failure")

    def run(self, ids, normalize):
        self._maybe_fail()
        return self._worker.run(ids, normalize)

    def run_on_all_cores(self, ids, normalize):
        self._maybe_fail()
        return self._worker.run_on_all_cores(ids, normalize)

    def run_tokens(self, ids):
        self._maybe_fail()
        return self._worker.run_tokens(ids)


def flaky(encoder, fail_file: Path):
    """The real encoder with every worker made flaky: the device workers and the batch workers the server runs its
    batches on (one CPU's lanes, built on the real device worker)."""
    lock = threading.Lock()
    batch_workers = [FlakyWorker(worker, fail_file, lock) for worker in encoder.batch_workers()]
    encoder.batch_workers = lambda: batch_workers
    encoder.workers = [FlakyWorker(worker, fail_file, lock) for worker in encoder.workers]
    return encoder


def serve_wrapped(wrap, argv: list[str]) -> int:
    """The real ``serve`` command on ``argv``, with the encoder it builds passed through ``wrap`` first."""
    build = common.build_encoder
    common.build_encoder = lambda args: wrap(build(args))
    return serve.main(argv)


def main(argv: list[str]) -> int:
    return serve_wrapped(lambda encoder: flaky(encoder, Path(argv[0])), argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
