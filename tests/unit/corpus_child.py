"""A real ``embed`` process with the fake encoder, for the kill, lock and crash tests (no model to load).

Usage: ``python -m tests.unit.corpus_child INPUT OUTPUT [WAIT_FOR_FILE]``. Shards of 4 rows, bad rows skipped.
With ``WAIT_FOR_FILE`` the first ``encode`` waits until that file exists, so a test can hold the job (and its
lock) mid-run. ``MINILM_NPU_CORPUS_CRASH`` kills it at a chosen step, as in the real command.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from minilm_npu.corpus.job import EmbedSettings, LocalEngine, embed_corpus
from minilm_npu.errors import InputError

from .test_corpus_fakes import FakeEncoder


class WaitingEncoder(FakeEncoder):
    def __init__(self, gate: Path | None):
        super().__init__()
        self.gate = gate

    def encode(self, sentences, **kwargs):
        while self.gate is not None and not self.gate.exists():
            time.sleep(0.01)
        return super().encode(sentences, **kwargs)


def main(argv: list[str]) -> int:
    gate = Path(argv[2]) if len(argv) > 2 else None
    settings = EmbedSettings(shard_rows=4, on_error="skip", progress=False)
    try:
        summary = embed_corpus(argv[0], argv[1], LocalEngine(WaitingEncoder(gate)), settings)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"rows {summary.rows_written} skipped {summary.rows_skipped} new {summary.new_rows}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
