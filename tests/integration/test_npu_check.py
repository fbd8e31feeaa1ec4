"""The Ascend field kit's dry run, end to end: ``bash benchmarks/npu_check.sh --dry-run`` runs every step on the
stand-in ``npu:0`` (small rounds) and writes one archive whose manifest lists every item, card-only ones absent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

from tests.fixtures.npu import REPO_ROOT

pytestmark = pytest.mark.slow

ITEMS = {
    "npu-smi": "absent",
    "driver version": "absent",
    "firmware version": "absent",
    "cann version": "absent",
    "python packages": "ok",
    "runtime": "ok",
    "environment variables": "ok",
    "device tests": "ok",
    "report": "ok",
    "bench": "ok",
    "serve": "ok",
}


def test_the_dry_run_writes_one_archive_that_lists_every_item(tmp_path):
    command = ["bash", "benchmarks/npu_check.sh", "--dry-run", "--out", str(tmp_path), "--dtypes", "float32"]
    command += ["--batch-sizes", "1", "--bench-batch-sizes", "2", "--rounds", "1", "--warmup", "1"]
    command += ["--tests", "tests/unit/test_devices.py", "--time-limit", "1200"]
    env = dict(os.environ, PYTHON=sys.executable)
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    (archive,) = tmp_path.glob("minilm-npu-check-dry-run-*.tar.gz")
    assert f"Send us this file: {archive}" in done.stdout
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())

        def read(name: str):
            return json.load(tar.extractfile(f"npu-check/{name}"))

        manifest = read("manifest.json")
        assert manifest["dry_run"] is True and manifest["card"] is False and "stand-in" in manifest["note"]
        assert {item["item"]: item["status"] for item in manifest["items"]} == ITEMS
        for item in manifest["items"]:
            assert all(f"npu-check/{name}" in names for name in item["files"]), item
            if item["status"] == "absent":
                assert item["note"], item  # says why
        assert "npu-check/MANIFEST.md" in names

        runtime = read("env/runtime.json")  # the compile mode and who chose it, the settings, the card
        assert runtime["compile_mode"]["jit_compile"] is False and "npu:0" in runtime["devices"]
        assert {s["name"] for s in runtime["settings"]} >= {"precision mode", "jit compile", "CPU fallbacks"}
        for report in ("check", "accuracy", "bench"):  # ran on the NPU path: each has its fallback list
            assert read(f"report/{report}.json")["cpu_fallbacks"] == []
        assert read("report/check.json")["checks"][0]["device"] == "npu:0"
        serve = read("serve/client.json")
        assert serve["health"][0]["status"] in (503, 200) and serve["health"][-1]["status"] == 200
        assert serve["client"]["min_cosine_vs_cpu"] >= 0.999 and serve["client"]["client"].startswith("openai")
        assert any(row["engine"].startswith("sentence-transformers") for row in read("bench.json")["rows"])
