"""A process that runs many batches of distinct shapes through the real model and reports its RSS, for
:mod:`tests.integration.test_memory` (a fresh process, so nothing else the test session ran is in its caches).

Usage: ``python -m tests.integration.memory_child DTYPE FIRST LAST``. Every batch holds 32 sequences; their total
token count is the batch's shape. A warm-up pass runs the even totals in ``[FIRST, LAST)``, then the odd totals
follow: none of them was seen before. Prints one JSON line: RSS (MB) after the warm-up and after the odd totals,
and the batch count.
"""

from __future__ import annotations

import json
import sys

import torch

from minilm_npu import MiniLMEncoder

ROWS = 32


def rss_mb() -> float:
    """Resident set size of this process (Linux ``/proc``), MB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def batch(total: int) -> list[list[int]]:
    """32 token-id lists holding ``total`` tokens between them, lengths differing by at most one."""
    lengths = [total // ROWS + (index < total % ROWS) for index in range(ROWS)]
    return [
        [101] + [1000 + (index + k) % 20000 for k in range(length - 2)] + [102] for index, length in enumerate(lengths)
    ]


def main() -> None:
    dtype, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    # One thread: each forward runs on the same thread count, so what a shape costs is counted once (on several
    # threads the engine picks 1 or all per forward, and oneDNN keys its primitives by thread count too).
    torch.set_num_threads(1)
    encoder = MiniLMEncoder(device="cpu", dtype=dtype)
    encoder.warmup()
    for total in range(first, last, 2):
        encoder.encode_token_ids(batch(total))
    warm = rss_mb()
    for total in range(first + 1, last, 2):
        encoder.encode_token_ids(batch(total))
    print(json.dumps({"warm_mb": warm, "end_mb": rss_mb(), "batches": last - first}))


if __name__ == "__main__":
    main()
