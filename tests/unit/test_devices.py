"""Device strings: parsing, errors that list what is available, and the lazy torch_npu import."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from minilm_npu import devices
from minilm_npu.devices import DeviceError, parse_devices


def test_cpu_and_auto_on_this_machine():
    assert parse_devices("cpu") == [torch.device("cpu")]
    assert parse_devices(" CPU ") == [torch.device("cpu")]
    expected = devices.auto_device()
    assert parse_devices("auto") == [expected]
    if not torch.cuda.is_available() and devices.device_count("npu") == 0:
        assert expected == torch.device("cpu")


def test_repeated_devices_give_several_workers():
    assert parse_devices("cpu,cpu") == [torch.device("cpu")] * 2


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "npu0", "", "cpu,", "auto:1", "tpu:0"])
def test_unknown_device_strings(spec):
    with pytest.raises(DeviceError, match="Available devices: cpu"):
        parse_devices(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
@pytest.mark.parametrize("spec", ["cuda", "cuda:1", "cpu,cuda:0"])
def test_unavailable_cuda(spec):
    with pytest.raises(DeviceError, match="not available on this machine"):
        parse_devices(spec)


def test_unavailable_npu_says_why():
    if devices.device_count("npu"):
        pytest.skip("an NPU is present")
    with pytest.raises(DeviceError, match="npu"):
        parse_devices("npu:0")


def test_torch_npu_is_not_imported_for_cpu_work(monkeypatch):
    imported = []
    monkeypatch.setattr(devices, "_torch_npu_state", None)
    monkeypatch.setattr(devices.importlib, "import_module", lambda name: imported.append(name))
    assert parse_devices("cpu") == [torch.device("cpu")]
    assert parse_devices("cpu,cpu") == [torch.device("cpu")] * 2
    assert imported == [] and devices._torch_npu_state is None


def test_asking_for_an_npu_imports_torch_npu_once(monkeypatch):
    imported = []
    monkeypatch.setattr(devices, "_torch_npu_state", None)
    monkeypatch.setattr(devices.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(devices.importlib, "import_module", lambda name: imported.append(name))
    monkeypatch.setattr(torch, "get_device_module", lambda kind: SimpleNamespace(is_available=lambda: False))
    with pytest.raises(DeviceError, match="npu:0"):
        parse_devices("npu:0")
    devices.device_count("npu")
    assert imported == ["torch_npu"] and devices._torch_npu_state is True


def test_synchronize_waits_on_the_device_module_and_skips_the_cpu(monkeypatch):
    calls = []
    module = SimpleNamespace(synchronize=lambda device: calls.append(device))
    monkeypatch.setattr(devices, "device_module", lambda kind: module if kind == "cuda" else pytest.fail(kind))
    devices.synchronize(torch.device("cpu"))
    assert calls == []
    devices.synchronize(torch.device("cuda", 1))
    assert calls == [torch.device("cuda", 1)]


def test_available_devices_lists_cpu_first():
    assert devices.available_devices()[0] == "cpu"


def test_describe_cpu():
    info = devices.describe(torch.device("cpu"))
    assert info.device == "cpu" and info.name


def test_host_allocator_left_alone_when_the_process_chose_one(monkeypatch):
    from minilm_npu.engine import policy

    monkeypatch.setattr(policy, "_host_allocator_tuned", None)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert policy.tune_host_allocator() is False


def test_graph_api_only_on_graph_devices(monkeypatch):
    from minilm_npu.devices import GRAPHS_ENV, graph_api

    assert graph_api(torch.device("cpu")) is None
    if torch.cuda.is_available():
        assert graph_api(torch.device("cuda", 0)) is not None
        monkeypatch.setenv(GRAPHS_ENV, "0")
        assert graph_api(torch.device("cuda", 0)) is None


def test_to_device_moves_each_tensor_with_its_shape_and_dtype():
    from minilm_npu.devices import to_device

    host = [torch.arange(6).view(2, 3), None, torch.ones(4, dtype=torch.bool), torch.arange(5), torch.rand(2, 2)]
    assert to_device(host, torch.device("cpu"))[0] is host[0]
    moved = to_device(host, torch.device("meta"))  # any non-CPU device takes the grouped path
    assert moved[1] is None
    for before, after in zip(host, moved):
        if before is not None:
            assert after.device.type == "meta" and after.shape == before.shape and after.dtype == before.dtype
