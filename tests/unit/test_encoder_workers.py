"""Encoder plumbing with fake backends: order restored, parallel workers, a failing device named, no hang."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from minilm_npu.encoder import DeviceWorker, MiniLMEncoder
from minilm_npu.engine.cpu_execution import CpuExecution, use_threads
from tests.fixtures.backends import (  # noqa: F401 - fixtures
    SharedLengthBackend,
    fake_backend,
    four_cores,
    shared_backend,
    two_cores,
)


def test_rows_come_back_in_input_order(fake_backend):
    encoder = MiniLMEncoder(device="cpu", backend="fake")
    texts = ["a b c d e f", "", "hello", "one two three four five six seven eight", "x"]
    ids = encoder.tokenize(texts)
    out = encoder.encode(texts, batch_size=2, normalize_embeddings=False)
    assert out[:, 0].tolist() == [len(x) for x in ids]
    assert out[:, 1].tolist() == [x[1] if len(x) > 2 else -1 for x in ids]


def test_two_workers_share_the_work_and_keep_order(fake_backend):
    encoder = MiniLMEncoder(device="cpu,cpu", backend="fake")
    texts = [" ".join(["w"] * (i % 37)) for i in range(300)]
    out = encoder.encode(texts, batch_size=4, normalize_embeddings=False)
    assert out[:, 0].tolist() == [len(x) for x in encoder.tokenize(texts)]
    assert len({ident for ident, _ in fake_backend.calls}) == 2


def test_cpu_workers_split_the_cores_and_give_the_caller_its_threads_back(fake_backend, four_cores):
    """Two CPU workers each run on half of the cores (never two full OpenMP pools on the same cores); a query
    runs on the caller's thread and count; the caller keeps its own count. Four threads whatever the machine has,
    so a share (2) differs from the caller's count (4) and from one thread."""
    encoder = MiniLMEncoder(device="cpu,cpu", backend="fake")
    assert [w.host_threads for w in encoder.workers] == [2, 2]
    encoder.encode([f"text {i}" for i in range(100)], batch_size=4)
    assert set(fake_backend.threads) == {2} and torch.get_num_threads() == 4
    fake_backend.threads.clear()
    encoder.encode(["one query"])
    encoder.workers[1].run(encoder.tokenize(["a server's batch"]), normalize=True)
    assert fake_backend.threads == [4, 2] and torch.get_num_threads() == 4
    assert MiniLMEncoder(device="cpu", backend="fake").workers[0].host_threads is None  # one worker: every core


def test_fewer_batches_than_workers_are_split_so_no_device_idles(fake_backend, monkeypatch):
    # Two batches: each takes long enough that the second thread starts before the first has done both, even
    # on a loaded machine (1 ms was not, once, under two pytest-xdist workers).
    monkeypatch.setattr(fake_backend, "delay_s", 0.05)
    encoder = MiniLMEncoder(device="cpu,cpu", backend="fake")
    texts = [" ".join(["w"] * (i + 1)) for i in range(24)]
    out = encoder.encode(texts, batch_size=32, normalize_embeddings=False)
    assert out[:, 0].tolist() == [len(x) for x in encoder.tokenize(texts)]
    assert len({ident for ident, _ in fake_backend.calls}) == 2  # one batch of 24 became two of 12


def test_a_failing_device_is_named_and_nothing_hangs(fake_backend):
    encoder = MiniLMEncoder(device="cpu,cpu", backend="fake")
    fake_backend.fail_on_device = encoder.workers[1].backend.ident
    with pytest.raises(RuntimeError, match="encoding failed on device cpu: RuntimeError: device lost"):
        encoder.encode([f"text {i}" for i in range(200)], batch_size=2)


def test_normalisation_is_the_post_stage(fake_backend):
    encoder = MiniLMEncoder(device="cpu", backend="fake")
    out = encoder.encode("hello world")
    assert out.shape == (384,)
    np.testing.assert_allclose(np.linalg.norm(out), 1.0, rtol=1e-6)


def test_unknown_backend_and_dtype():
    from minilm_npu.errors import InputError

    with pytest.raises(InputError, match="unknown backend"):
        MiniLMEncoder(device="cpu", backend="onnx")
    with pytest.raises(InputError, match="unknown dtype"):
        MiniLMEncoder(device="cpu", dtype="float8")
    with pytest.raises(InputError, match="int8 needs the packed backend"):
        MiniLMEncoder(device="cpu", dtype="int8", backend="transformers")


def test_each_worker_runs_exactly_the_batch_it_is_given(fake_backend):
    """The server hands a formed batch to one device's worker: no re-planning, no other device involved."""
    encoder = MiniLMEncoder(device="cpu,cpu", backend="fake")
    ids = encoder.tokenize([f"text number {i}" for i in range(40)])
    out = encoder.workers[1].run(ids, normalize=False)
    assert out[:, 0].tolist() == [len(x) for x in ids]
    assert [ident for ident, _ in fake_backend.calls] == [encoder.workers[1].backend.ident]


def test_settings_come_from_one_config(fake_backend):
    from minilm_npu.config import EncoderConfig

    config = EncoderConfig(device="cpu", backend="fake", batch_size=3, max_batch_tokens=1000)
    encoder = MiniLMEncoder.from_config(config)
    assert encoder.config is config and (encoder.dtype, encoder.backend_name) == ("float32", "fake")
    encoder.encode([f"text {i}" for i in range(10)], normalize_embeddings=False)
    assert len(fake_backend.calls) == 4  # config.batch_size is encode's default: 3 + 3 + 3 + 1
    from minilm_npu.errors import InputError

    with pytest.raises(InputError, match="either config or settings"):
        MiniLMEncoder(device="cpu", config=config)
    with pytest.raises(InputError, match="batch_size must be a positive integer"):
        EncoderConfig(batch_size=0)


def test_one_cpu_runs_a_multi_batch_call_on_two_lanes_sharing_the_model(shared_backend, two_cores):
    encoder = MiniLMEncoder(device="cpu", backend="shared")
    texts = [" ".join(["w"] * (i % 23)) for i in range(200)]
    shared_backend.threads.clear()
    out = encoder.encode(texts, batch_size=4, normalize_embeddings=False)
    assert out[:, 0].tolist() == [len(x) for x in encoder.tokenize(texts)]
    assert len({ident for ident, _ in shared_backend.calls}) == 1  # one model
    assert len({thread for _, thread in shared_backend.calls}) == 2  # two lanes
    assert set(shared_backend.threads) == {1} and torch.get_num_threads() == 2  # each on its share, caller's back


def test_lanes_only_where_the_work_divides_and_the_backend_may_be_shared(shared_backend, two_cores):
    shared = MiniLMEncoder(device="cpu", backend="shared")
    one_query, one_batch = ["a query"], [f"text {i}" for i in range(30)]
    lopsided = [" ".join(["w"] * 100)] * 32 + ["x"]  # one big batch and a tiny one: one lane would idle
    for texts in (one_query, one_batch, lopsided):
        shared_backend.calls.clear()
        shared_backend.threads.clear()
        shared.encode(texts, batch_size=32)
        assert len({thread for _, thread in shared_backend.calls}) == 1 and set(shared_backend.threads) == {2}
    shared_backend.calls.clear()
    MiniLMEncoder(device="cpu", backend="fake").encode([f"text {i}" for i in range(100)], batch_size=4)
    assert len({thread for _, thread in shared_backend.calls}) == 1  # not shareable: one thread


def test_cpu_lanes_are_one_thread_per_core_of_the_calling_thread(shared_backend):
    backend = SharedLengthBackend(type("Files", (), {"hidden_size": 4}), torch.device("cpu"), "float32")
    execution = CpuExecution([backend], DeviceWorker)
    for cores in (1, 2, 5, 16):  # one lane per core, one thread each (no OpenMP pool per lane)
        with use_threads(cores):
            batches = [[i] for i in range(cores * 2)]
            lanes = execution.side_by_side(batches, [5] * len(batches))
            assert [lane.host_threads for lane in lanes] == ([1] * cores if cores > 1 else [])
            assert all(lane.backend is backend for lane in lanes)
            assert execution.side_by_side(batches, [5] * len(batches)) == lanes  # the same lanes, made once
    with use_threads(16):
        assert execution.side_by_side([[i] for i in range(15)], [5] * 15) == []  # fewer batches than lanes
    with use_threads(2):
        # Two lanes: no batch may hold more than LANE_SLACK / 2 (0.6) of the call's tokens.
        assert execution.side_by_side([[0], [1]], [9, 8]) != [] and execution.side_by_side([[0], [1]], [9, 1]) == []
        assert execution.side_by_side([[0], [1]], [6, 4]) != []  # 0.6 of the work: still divides
        assert execution.side_by_side([[0], [1]], [13, 8]) == []
        assert execution.side_by_side([[0, 1]], [5, 5]) == []


def test_a_server_takes_the_first_worker_until_it_is_busy_and_a_lone_batch_gets_every_core():
    assert CpuExecution.takes_work(0, running=0) and CpuExecution.takes_work(0, running=3)
    assert not CpuExecution.takes_work(1, running=0) and CpuExecution.takes_work(1, running=1)
    assert CpuExecution.runs_alone(queued=0, running=0)
    assert not CpuExecution.runs_alone(queued=1, running=0) and not CpuExecution.runs_alone(queued=0, running=1)


def test_batch_workers_are_lanes_on_one_shareable_cpu(shared_backend, two_cores):
    shared = MiniLMEncoder(device="cpu", backend="shared")
    lanes = shared.batch_workers()
    assert len(lanes) == 2 and all(lane.backend is shared.workers[0].backend for lane in lanes)
    assert [lane.host_threads for lane in lanes] == [1, 1]
    ids = shared.tokenize(["a lone batch"])
    shared_backend.threads.clear()
    lanes[0].run_on_all_cores(ids, normalize=False)
    lanes[1].run(ids, normalize=False)
    assert shared_backend.threads == [2, 1] and torch.get_num_threads() == 2
    assert shared.engine_choices()["lanes"].startswith("2 lanes sharing this one model, one thread each")
    plain = MiniLMEncoder(device="cpu", backend="fake")
    assert plain.batch_workers() == plain.workers  # an engine that may not be shared: one worker
    assert "lanes" not in plain.engine_choices()
    two = MiniLMEncoder(device="cpu,cpu", backend="shared")
    assert two.batch_workers() == two.workers  # one worker per device already


def test_lanes_are_made_once_and_shared_by_concurrent_calls(shared_backend, two_cores, monkeypatch):
    """Two threads encoding at once on one CPU share its two lanes (each with its lock): never more than two
    forwards at the same time, where lanes made per call would run four."""
    monkeypatch.setattr(shared_backend, "delay_s", 0.01)
    encoder = MiniLMEncoder(device="cpu", backend="shared")
    texts = [" ".join(["w"] * (i % 7 + 1)) for i in range(64)]
    start = threading.Barrier(2)
    results = []

    def call():
        # A new thread's count is whatever torch's count was last set to by any thread (a lane sets 1): say it.
        with use_threads(2):
            start.wait()
            results.append(encoder.encode(texts, batch_size=4, normalize_embeddings=False))

    callers = [threading.Thread(target=call) for _ in range(2)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join()
    expected = [len(x) for x in encoder.tokenize(texts)]
    assert len(results) == 2 and all(out[:, 0].tolist() == expected for out in results)
    assert shared_backend.most_at_once == 2
    assert encoder.batch_workers() == encoder.execution.lanes()  # the server's workers are those lanes too


def test_the_backend_base_gives_the_optional_parts_their_defaults(fake_backend):
    """A backend that only embeds: not shared, nothing to warm up, no choices to report; an incomplete one is
    refused when built."""
    from minilm_npu.engine.backend import Backend

    encoder = MiniLMEncoder(device="cpu", backend="fake")
    backend = encoder.workers[0].backend
    assert isinstance(backend, Backend) and backend.shareable is False and backend.choices() == {}
    encoder.warmup()  # the base's no-op warm-up, then one tiny forward
    assert len(fake_backend.calls) == 1 and encoder.engine_choices() == {}

    class EmbedsOnly(Backend):
        def embed(self, batch):
            return torch.zeros(len(batch), 4)

    with pytest.raises(TypeError, match="token_embeddings"):
        EmbedsOnly()
