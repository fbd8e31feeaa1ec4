"""The Encoder protocol: the real encoder and every test fake implement it, signatures included."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from minilm_npu.contract import DeviceWorker, Encoder, ModelInfo, Reranker
from minilm_npu.encoder import MiniLMEncoder
from tests.fixtures.backends import fake_backend  # noqa: F401 - fixture
from tests.fixtures.corpus import FakeEncoder as CorpusFakeEncoder
from tests.fixtures.verify import VerifyFake

from .server_fakes import FakeEncoder


def _protocol_methods(protocol) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(protocol).items()
        if callable(member) and not name.startswith("_")
    }


def _assert_implements(obj, protocol) -> None:
    assert isinstance(obj, protocol), f"{type(obj).__name__} lacks a member of {protocol.__name__}"
    for name, expected in _protocol_methods(protocol).items():
        got = inspect.signature(getattr(obj, name))
        wanted = [(p.name, p.default) for p in list(expected.parameters.values())[1:]]  # without self
        # Every parameter of the protocol, in order, with its default; an implementation may take extra keyword
        # options (**kwargs: the real encode's sentence-transformers options) and nothing else.
        params = [(p.name, p.default) for p in got.parameters.values() if p.kind is not p.VAR_KEYWORD]
        assert params == wanted, f"{type(obj).__name__}.{name}{got} differs from {protocol.__name__}.{name}{expected}"


@pytest.fixture
def real_encoder(fake_backend):  # noqa: F811 - the real MiniLMEncoder, with a fake engine behind it
    return MiniLMEncoder(device="cpu,cpu", backend="fake")


def test_the_real_encoder_implements_the_protocol(real_encoder):
    _assert_implements(real_encoder, Encoder)
    for worker in real_encoder.workers:
        _assert_implements(worker, DeviceWorker)
    files = real_encoder.model_files  # what the contract's plain-data view is made from
    assert real_encoder.model_info == ModelInfo(files.name, str(files.directory), str(files.weights_path))
    assert Path(real_encoder.model_info.weights_path).is_file()
    assert isinstance(real_encoder.engine_choices(), dict)


@pytest.mark.parametrize("fake", [FakeEncoder, CorpusFakeEncoder, lambda: VerifyFake(Path("model.safetensors"))])
def test_the_fakes_implement_the_protocol(fake):
    encoder = fake()
    _assert_implements(encoder, Encoder)
    for worker in encoder.workers:
        _assert_implements(worker, DeviceWorker)


def test_a_drifted_fake_is_caught():
    class Drifted(FakeEncoder):
        def tokenize(self, texts):  # lost the truncate flag
            return super().tokenize(texts)

    with pytest.raises(AssertionError, match="Drifted.tokenize"):
        _assert_implements(Drifted(), Encoder)
    with pytest.raises(AssertionError, match="lacks a member"):
        _assert_implements(object(), Encoder)


def test_the_reranker_implements_its_protocol_and_not_the_encoders(st_model_dir):
    from minilm_npu.reranker import Reranker as RealReranker

    reranker = RealReranker(model_path=str(st_model_dir("ce-bert")), device="cpu,cpu")
    _assert_implements(reranker, Reranker)
    for worker in reranker.workers:
        _assert_implements(worker, DeviceWorker)
    assert not isinstance(reranker, Encoder)
    assert reranker.model_info.weights_path == str(reranker.model_files.weights_path)
