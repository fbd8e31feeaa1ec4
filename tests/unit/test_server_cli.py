"""``minilm-npu serve`` argument handling (no server is started)."""

from __future__ import annotations

import argparse

import pytest

from minilm_npu.cli import serve


def _parse(*argv):
    parser = argparse.ArgumentParser(prog="minilm-npu")
    serve.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_defaults_bind_loopback():
    args = _parse()
    assert args.host == "127.0.0.1" and args.port == 8080 and args.api_key is None
    assert args.func is serve.run and args.max_client_batch_size == 256


def test_flags():
    args = _parse(
        "--port",
        "0",
        "--max-client-batch-size",
        "8",
        "--max-concurrent-requests",
        "3",
        "--served-model-name",
        "emb",
        "--max-wait-ms",
        "0.5",
        "--max-body-bytes",
        "1000",
        "--max-batch-tokens",
        "512",
        "--device",
        "cpu",
        "--backend",
        "transformers",
    )
    assert (args.port, args.max_client_batch_size, args.max_concurrent_requests) == (0, 8, 3)
    assert (args.served_model_name, args.max_wait_ms, args.max_body_bytes, args.max_batch_tokens) == (
        "emb",
        0.5,
        1000,
        512,
    )


@pytest.mark.parametrize("argv", [["--port", "70000"], ["--max-client-batch-size", "0"], ["--max-wait-ms", "-1"]])
def test_bad_values_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        _parse(*argv)
    assert info.value.code == 2 and "error:" in capsys.readouterr().err


def test_serving_openmp_settings_unless_the_user_chose():
    from minilm_npu.cli.serve import SERVING_ENV, serving_env

    assert serving_env({}) == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"} == SERVING_ENV
    # Any one of them set by the user: theirs stand and nothing of ours is mixed in.
    assert serving_env({"OMP_WAIT_POLICY": "ACTIVE"}) == {}
    assert serving_env({"GOMP_SPINCOUNT": "0"}) == {}
    assert serving_env({"OMP_NUM_THREADS": "1"}) == SERVING_ENV  # thread count is a separate choice
