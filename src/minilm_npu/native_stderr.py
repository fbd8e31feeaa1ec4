"""Read what native code writes to the process's stderr while it still reaches the terminal.

Why: C++ libraries under torch (c10's warning handler, torch_npu, CANN) write their warnings straight to file
descriptor 2, beyond Python's ``warnings`` and ``logging``; the only way to act on such a line is to read that
descriptor. :func:`tee_stderr` points fd 2 at a pipe for the length of a block; a thread copies every byte on to
the real stderr at once (logs and progress bars appear as before) and hands each complete line to a listener.

A leaf: it imports nothing of minilm_npu.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator

Listener = Callable[[str], None]

# One block at a time per process (fd 2 is process-wide); the same thread may nest blocks.
_lock = threading.RLock()


class _Tee:
    """fd 2 pointed at a pipe, and the thread that copies the pipe to the saved stderr, line by line."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        sys.stderr.flush()
        self.saved = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self.thread = threading.Thread(target=self._pump, args=(read_end,), name="minilm-stderr-tee", daemon=True)
        self.thread.start()

    def _pump(self, read_end: int) -> None:
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                view = memoryview(chunk)
                while view:  # the real stderr may take a large chunk in parts
                    view = view[os.write(self.saved, view) :]
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    self.listener(line.decode("utf-8", "replace"))
        if pending:
            self.listener(pending.decode("utf-8", "replace"))

    def close(self) -> None:
        sys.stderr.flush()
        os.dup2(self.saved, 2)  # drops the pipe's last write end here: the pump reads to the end and stops
        # A child process started inside the block still holds the write end, and its lines keep flowing until it
        # exits: the pump is not waited for forever, and the saved descriptor then stays open for it.
        self.thread.join(timeout=5.0)
        if not self.thread.is_alive():
            os.close(self.saved)


@contextlib.contextmanager
def tee_stderr(listener: Listener) -> Iterator[None]:
    """Call ``listener`` with every line written to file descriptor 2 inside the block (from Python or from C),
    which still reaches the real stderr as it is written; every line is delivered before the block ends.

    Blocks nest (an inner block's lines reach the outer listener too); a block in another thread waits until the
    open one ends, since fd 2 belongs to the whole process.
    """
    with _lock:
        tee = _Tee(listener)
        try:
            yield
        finally:
            tee.close()
