"""The protocol fake encoder lives in :mod:`tests.fixtures.fake_encoder`; this module keeps its old import path
for the modules that still use it."""

from tests.fixtures.fake_encoder import CLS, SEP, VOCAB, FakeEncoder, FakeWorker

__all__ = ["CLS", "SEP", "VOCAB", "FakeEncoder", "FakeWorker"]
