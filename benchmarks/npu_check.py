"""The Ascend field kit: everything we need to know about a first run on a card, in one go, in one archive.

Run ``bash benchmarks/npu_check.sh`` on the machine with the card (it calls this file). In order, each step under
its own time limit and all of them under ``--time-limit``:

1. the environment: ``npu-smi info``, the driver, firmware and CANN versions, the Python packages (torch,
   torch_npu with its built-in op-plugin), the runtime as minilm-npu sees it (cards, compile mode, precision mode,
   HF32 flags, CPU-fallback visibility) and the Ascend environment variables;
2. the device tests on the card (``MINILM_TEST_DEVICE``);
3. ``minilm-npu report`` (check, accuracy, bench against sentence-transformers, per dtype);
4. ``benchmarks/bench_gpu.py`` (the throughput targets, ours with and without device graphs);
5. a ``minilm-npu serve`` smoke test: the warm-up behind the open port, then one real client (the openai
   package where installed), its vectors compared with the CPU's;

then writes ``manifest.json`` and ``MANIFEST.md`` (every item: ok, failed, timed out, skipped or absent, and why)
and packs it all into one ``.tar.gz``. A step that fails does not stop the others.

``--dry-run`` (for a machine without a card): the stand-in torch_npu of the test suite turns the CPU into
``npu:0``, so every step runs its real NPU code path; what needs the card itself (npu-smi, driver, firmware, CANN)
is marked absent, and nothing in that archive is evidence about a card.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STANDIN = REPO / "tests" / "fixtures" / "standin_npu"
DEVICE_TESTS = (
    "tests/integration/test_device_path.py",
    "tests/integration/test_ascend_paths.py",
    "tests/unit/test_graphs.py",
    "tests/unit/test_devices.py",
    "tests/unit/test_ascend_runtime.py",
)
ASCEND_HOME = Path("/usr/local/Ascend")
#: Where an Ascend install keeps its version files (the first that exists is copied).
VERSION_FILES = {
    "driver": [ASCEND_HOME / "driver" / "version.info"],
    "firmware": [ASCEND_HOME / "firmware" / "version.info"],
    "cann": [
        Path(os.environ.get("ASCEND_TOOLKIT_HOME", ASCEND_HOME / "ascend-toolkit" / "latest")) / name
        for name in ("version.cfg", "compiler/version.info", "runtime/version.info")
    ],
}
ENV_VARS = re.compile(r"^(ASCEND_|ACL_|TORCH_NPU_|NPU_|HCCL_|MINILM_|RANK_ID$|LD_LIBRARY_PATH$|PYTHONPATH$|OMP_)")

PROBES = str(REPO / "benchmarks" / "npu_probes.py")


@dataclass
class Item:
    """One line of the manifest."""

    item: str
    what: str
    status: str = "skipped"
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""


class Kit:
    """The folder the archive is made of, the items so far, and the time left."""

    def __init__(self, root: Path, deadline: float, env: dict[str, str], dry_run: bool):
        self.root, self.deadline, self.env, self.dry_run = root, deadline, env, dry_run
        self.items: list[Item] = []

    def left(self, limit: float) -> float:
        """Seconds the next step may take: its own limit, or what is left of the whole run."""
        return max(0.0, min(limit, self.deadline - time.monotonic()))

    def add(self, item: Item) -> Item:
        self.items.append(item)
        mark = {"ok": "ok", "absent": "--", "skipped": "--"}.get(item.status, "!!")
        print(f"[{mark}] {item.item}: {item.status}{' - ' + item.note if item.note else ''}", flush=True)
        return item

    def run(self, name: str, what: str, command: list[str], log: str, limit: float, produces=()) -> Item:
        """Run a command with its output in ``log`` (the command first); ok on exit code 0."""
        item = Item(name, what, files=[log])
        budget = self.left(limit)
        if budget < 5:
            item.note = "the run's time limit was reached before this step"
            return self.add(item)
        path = self.root / log
        path.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        with open(path, "w", encoding="utf-8") as out:
            out.write(f"$ {' '.join(command)}\n")
            out.flush()
            try:
                code = subprocess.run(
                    command, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=REPO, timeout=budget
                ).returncode
                item.status = "ok" if code == 0 else "failed"
                item.note = "" if code == 0 else f"exit code {code} (see {log})"
            except subprocess.TimeoutExpired:
                item.status, item.note = "timed out", f"stopped after {budget:.0f} s"
            except FileNotFoundError as err:
                item.status, item.note = "absent", f"{err.filename} is not installed here"
        item.seconds = round(time.monotonic() - start, 1)
        item.files += [p for p in produces if (self.root / p).exists()]
        return self.add(item)

    def copy_first(self, name: str, what: str, candidates: list[Path], target: str) -> Item:
        """Copy the first existing file of ``candidates``; absent when there is none."""
        for candidate in candidates:
            if candidate.is_file():
                (self.root / target).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(candidate, self.root / target)
                return self.add(Item(name, what, "ok", [target], note=str(candidate)))
        shown = ", ".join(str(c) for c in candidates)
        return self.add(Item(name, what, "absent", note=f"no {shown} (no Ascend install on this machine)"))


def environment(kit: Kit, python: str) -> None:
    """Step 1: what the machine, the driver, CANN and the Python stack are."""
    if shutil.which("npu-smi"):
        kit.run("npu-smi", "npu-smi info: cards, health, memory, driver", ["npu-smi", "info"], "env/npu-smi.txt", 60)
    else:
        kit.add(Item("npu-smi", "npu-smi info: cards, health, memory, driver", "absent", note="npu-smi not found"))
    for key, candidates in VERSION_FILES.items():
        kit.copy_first(f"{key} version", f"the {key}'s version file", candidates, f"env/{key}-version.txt")
    kit.run("python packages", "pip list (torch, torch_npu, ...)", [python, "-m", "pip", "list"], "env/pip.txt", 60)
    kit.run(
        "runtime",
        "torch, torch_npu and op-plugin versions, cards, compile mode, precision mode, HF32, CPU fallbacks",
        [python, PROBES, "runtime", str(kit.root / "env" / "runtime.json")],
        "env/runtime.log",
        120,
        produces=["env/runtime.json"],
    )
    variables = {k: v for k, v in sorted(os.environ.items()) if ENV_VARS.match(k)}
    lines = [f"{k}={v}" for k, v in variables.items()] + [f"# {platform.platform()}, {platform.machine()}"]
    (kit.root / "env" / "vars.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    kit.add(Item("environment variables", "ASCEND_*, ACL_*, TORCH_NPU_*, HCCL_*, MINILM_*", "ok", ["env/vars.txt"]))


def _served_url(log_path: Path, proc: subprocess.Popen, deadline: float) -> str:
    """The server's address, once uvicorn has logged it ("" when it stopped or the time ran out)."""
    while time.monotonic() < deadline and proc.poll() is None:
        found = re.search(r"Uvicorn running on (http://[\d.]+:\d+)", log_path.read_text(encoding="utf-8"))
        if found:
            return found.group(1)
        time.sleep(0.2)
    return ""


def _watch_health(url: str, proc: subprocess.Popen, start: float, deadline: float) -> list[dict]:
    """``GET /health`` every half second until 200: each change of answer, with when it came (503 while warming)."""
    import urllib.error
    import urllib.request

    seen: list[dict] = []
    while url and time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url + "/health", timeout=30) as response:
                status, body = response.status, ""
        except urllib.error.HTTPError as err:
            status, body = err.code, err.read().decode(errors="replace")[:300]
        except (urllib.error.URLError, OSError):
            status, body = None, ""
        if status is not None and (not seen or seen[-1]["status"] != status):
            seen.append({"after_s": round(time.monotonic() - start, 1), "status": status, "body": body})
        if status == 200:
            break
        time.sleep(0.5)
    return seen


def serve_smoke(kit: Kit, python: str, device: str, dtype: str, limit: float) -> None:
    """Step 5: serve on the card, watch the warm-up behind the open port, one real client, SIGTERM."""
    item = Item("serve", "minilm-npu serve: warm-up behind the open port, one real client", files=["serve/serve.log"])
    budget = kit.left(limit)
    if budget < 30:
        item.note = "the run's time limit was reached before this step"
        kit.add(item)
        return
    (kit.root / "serve").mkdir(exist_ok=True)
    log_path = kit.root / "serve" / "serve.log"
    command = [python, "-m", "minilm_npu.cli.main", "serve", "--device", device, "--dtype", dtype, "--port", "0"]
    start = time.monotonic()
    deadline = start + budget
    client, health = None, []
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=kit.env, cwd=REPO)
        try:
            url = _served_url(log_path, proc, deadline)
            health = _watch_health(url, proc, start, deadline)
            if health and health[-1]["status"] == 200:
                probe = [python, PROBES, "client", url, dtype]
                left = max(1.0, deadline - time.monotonic())
                client = subprocess.run(probe, capture_output=True, text=True, env=kit.env, cwd=REPO, timeout=left)
        except subprocess.TimeoutExpired:
            pass
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
    item.seconds = round(time.monotonic() - start, 1)
    report: dict[str, object] = {"command": command, "health": health, "exit_code": code}
    if client is not None:
        try:
            report["client"] = json.loads(client.stdout)
        except ValueError:
            report["client"] = client.stdout[-2000:]
        report["client_stderr"] = client.stderr[-2000:]
    (kit.root / "serve" / "client.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    item.files.append("serve/client.json")
    seen = " -> ".join(f"{h['status']} at {h['after_s']} s" for h in health) or "no answer"
    if client is None:
        item.status, item.note = "failed", f"never ready (/health {seen})"
    elif client.returncode != 0 or code not in (0, -signal.SIGTERM):
        item.status, item.note = "failed", f"client exit {client.returncode}, serve exit {code}"
    else:
        item.status, item.note = "ok", f"/health {seen}"
    kit.add(item)


def manifest(kit: Kit, args: argparse.Namespace, started: str) -> None:
    """manifest.json and MANIFEST.md: every item with its status, and what this run was."""
    failed = [i.item for i in kit.items if i.status in ("failed", "timed out")]
    data = {
        "kit": "minilm-npu Ascend field kit",
        "dry_run": kit.dry_run,
        "card": not kit.dry_run,
        "note": "dry run: a stand-in torch_npu ran the NPU paths on the CPU; nothing here is evidence about a card"
        if kit.dry_run
        else "run on the card",
        "device": args.device,
        "dtypes": args.dtypes,
        "started": started,
        "host": platform.node(),
        "status": "fail" if failed else "ok",
        "items": [asdict(i) for i in kit.items],
    }
    (kit.root / "manifest.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    lines = [
        f"# minilm-npu Ascend field kit: {data['status']}",
        "",
        f"- {data['note']}",
        f"- device {args.device}, dtypes {args.dtypes}, started {started} on {data['host']}",
        "",
        "| Item | Status | Seconds | Files | Note |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {i.item} | {i.status} | {i.seconds:g} | {', '.join(i.files)} | {i.note.replace('|', '/')} |"
        for i in kit.items
    ]
    (kit.root / "MANIFEST.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="no card: the stand-in torch_npu makes the CPU npu:0")
    parser.add_argument("--device", default="npu:0")
    parser.add_argument("--dtypes", default="float32,float16,bfloat16")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "npu")
    parser.add_argument("--time-limit", type=float, default=1200.0, help="seconds for the whole run (default 1200)")
    parser.add_argument("--sts", type=Path, default=None, help="STS-B dev file (stsb-dev.tsv) for accuracy and bench")
    parser.add_argument("--batch-sizes", default="1,8,32,64,128", help="batch sizes of the report's bench")
    parser.add_argument("--rounds", type=int, default=10, help="timed calls per batch size (report and bench)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (report and bench)")
    parser.add_argument("--bench-batch-sizes", default="32,64", help="batch sizes of bench_gpu.py (its targets)")
    parser.add_argument("--tests", nargs="+", default=list(DEVICE_TESTS), help="the device tests to run")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args(argv)

    started = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    root = args.out / "npu-check"
    if root.exists():
        shutil.rmtree(root)
    (root / "env").mkdir(parents=True)
    paths = ([str(STANDIN)] if args.dry_run else []) + [str(REPO / "src"), str(REPO)]
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p]),
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        MINILM_TEST_DEVICE=args.device,
    )
    kit = Kit(root, time.monotonic() + args.time_limit, env, args.dry_run)
    py, first = args.python, args.dtypes.split(",")[0]
    sts = str(args.sts) if args.sts and args.sts.is_file() else None

    environment(kit, py)
    kit.run(
        "device tests",
        f"the engine's exactness tests on {args.device}",
        [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", *args.tests],
        "tests.txt",
        420,
    )
    timing = ["--batch-sizes", args.batch_sizes, "--warmup", str(args.warmup), "--rounds", str(args.rounds)]
    kit.run(
        "report",
        "minilm-npu report: check, accuracy, bench vs sentence-transformers, CPU fallbacks",
        [
            py,
            "-m",
            "minilm_npu.cli.main",
            "report",
            "--device",
            args.device,
            "--dtype",
            args.dtypes,
            "--compare",
            "sentence-transformers",
            "--out",
            str(root / "report"),
            *timing,
            *(["--sts", sts] if sts else []),
        ],
        "report.txt",
        600,
        produces=["report"],
    )
    kit.run(
        "bench",
        "benchmarks/bench_gpu.py: the throughput targets, device graphs on and off, vs sentence-transformers",
        [
            py,
            "benchmarks/bench_gpu.py",
            "--device",
            args.device,
            "--dtypes",
            args.dtypes,
            "--rounds",
            str(args.rounds),
            "--warmup",
            str(args.warmup),
            "--batch-sizes",
            args.bench_batch_sizes,
            "--stsb",
            sts or "(none)",
            "--json",
            str(root / "bench.json"),
        ],
        "bench.md",
        420,
        produces=["bench.json"],
    )
    serve_smoke(kit, py, args.device, first, 300)
    manifest(kit, args, started)

    archive = args.out / f"minilm-npu-check-{'dry-run-' if args.dry_run else ''}{platform.node()}-{started}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="npu-check")
    print(f"\n{(root / 'MANIFEST.md').read_text(encoding='utf-8')}\nSend us this file: {archive}")
    return 0 if json.loads((root / "manifest.json").read_text())["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
