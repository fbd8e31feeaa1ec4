"""Start ``minilm-npu serve`` as a real subprocess on 127.0.0.1 with a free port, and stop it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

_READY = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")


@dataclass
class ServerProcess:
    """A running server, its base URL and everything it logged so far."""

    proc: subprocess.Popen
    url: str = ""
    log: list[str] = field(default_factory=list)

    def ready(self) -> bool:
        """Whether ``GET /health`` answers 200 (503 while the model warms up)."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=30) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):  # HTTPError (503) is a URLError
            return False

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait; SIGKILL only if it hangs. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_server(
    *args: str,
    api_key: str | None = None,
    timeout: float = 150.0,
    command: tuple[str, ...] = ("minilm_npu.cli.main", "serve"),
    ready: bool = True,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """Run ``python -m minilm_npu.cli.main serve --port 0 ARGS`` (or another ``command``) until the port is open
    and, with ``ready``, until ``GET /health`` says 200 (the warm-up runs behind the open port)."""
    env = dict(env or os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.pop("MINILM_NPU_API_KEY", None)
    if api_key is not None:
        env["MINILM_NPU_API_KEY"] = api_key  # the key stays out of the process listing
    cmd = [sys.executable, "-m", *command, "--host", "127.0.0.1", "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    server = ServerProcess(proc)
    bound = threading.Event()

    def drain() -> None:  # keep reading so the pipe never fills and blocks the server
        for line in proc.stdout:
            server.log.append(line)
            match = _READY.search(line)
            if match and not server.url:
                server.url = match.group(1)
                bound.set()

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not bound.wait(0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop(5)
            raise RuntimeError("server did not start:\n" + "".join(server.log[-30:]))
    while ready and not server.ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop(5)
            raise RuntimeError("server did not warm up:\n" + "".join(server.log[-30:]))
        time.sleep(0.2)
    return server
