"""The command line as a fresh process sees it: no torch until a command runs, and ``serve``'s OpenMP settings in
place before torch loads (OpenMP reads them once, when torch loads it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from minilm_npu.cli.main import build_parser

# Records, in the child, the OpenMP variables at the moment torch is first imported.
SPY = """
import importlib.abc, json, os, sys
seen = {}
class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" and "torch" not in seen:
            seen["torch"] = [os.environ.get("OMP_WAIT_POLICY"), os.environ.get("GOMP_SPINCOUNT")]
        return None
sys.meta_path.insert(0, Spy())
"""


def python(code: str, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter whose last line of output is JSON; that JSON."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**base, **env}, timeout=180
    )
    assert done.stdout.strip(), done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def subcommands() -> list[str]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if a.dest == "command"]
    return sorted(action.choices)


def test_errors_and_config_are_leaves_without_torch():
    found = python(
        "import json, sys\nimport minilm_npu.errors, minilm_npu.config\n"
        "from minilm_npu.errors import DeviceError, InputError, ModelFilesError, OutputError, USER_ERRORS\n"
        "from minilm_npu.config import BACKENDS, DTYPES, EncoderConfig, parse_dtypes\n"
        "EncoderConfig(dtype='int8')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))))"
    )
    assert found == []


def test_error_classes_are_importable_from_where_users_import_them():
    from minilm_npu import errors
    from minilm_npu.devices import DeviceError
    from minilm_npu.modelfiles import ModelFilesError

    assert DeviceError is errors.DeviceError and ModelFilesError is errors.ModelFilesError
    assert set(errors.USER_ERRORS) == {errors.InputError, errors.DeviceError, errors.ModelFilesError}


@pytest.mark.parametrize("argv", [["--help"]] + [[name, "--help"] for name in subcommands()])
def test_help_loads_no_torch(argv):
    found = python(
        "import json, sys\nfrom minilm_npu.cli.main import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit as exit:\n    assert exit.code == 0, exit.code\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))))"
    )
    assert found == [], argv


def test_serve_sets_openmp_before_torch_loads_and_other_commands_do_not():
    # An unknown device fails after the model stack is imported, so torch loads in every run here.
    serve = SPY + (
        "from minilm_npu.cli.main import main\ncode = main(['serve', '--device', 'tpu'])\n"
        "print(json.dumps([code, seen.get('torch')]))"
    )
    assert python(serve) == [2, ["PASSIVE", "10000"]]
    assert python(serve, OMP_WAIT_POLICY="ACTIVE") == [2, ["ACTIVE", None]]  # the user's choice stands
    encode = SPY + (
        "from minilm_npu.cli.main import main\ncode = main(['encode', '--text', 'x', '--device', 'tpu'])\n"
        "print(json.dumps([code, seen.get('torch')]))"
    )
    assert python(encode) == [2, [None, None]]  # a batch command keeps OpenMP's defaults
