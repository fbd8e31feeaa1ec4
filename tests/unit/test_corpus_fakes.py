"""A fake encoder for the corpus plumbing tests: deterministic vectors per text, no model, instant."""

from __future__ import annotations

import hashlib

import numpy as np

from .server_fakes import FakeEncoder as ProtocolFake


class FakeEncoder(ProtocolFake):
    """An :class:`~minilm_npu.contract.Encoder` whose ``encode`` gives an 8-dimensional, text-determined unit
    vector."""

    dimension = 8
    model_name = "fake/model"
    dtype = "float32"

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.rows = 0

    @staticmethod
    def vector(text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
        vec = np.random.default_rng(seed).standard_normal(8).astype(np.float32)
        return vec / np.linalg.norm(vec)

    def encode(self, sentences, batch_size=None, normalize_embeddings=True, show_progress_bar=False):
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        self.calls += 1
        self.rows += len(texts)
        out = np.stack([self.vector(t) for t in texts]) if texts else np.empty((0, 8), np.float32)
        return out[0] if single else out


def test_fake_encoder_is_deterministic_and_normalised():
    enc = FakeEncoder()
    a = enc.encode(["x", "y"])
    assert a.shape == (2, 8) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(enc.encode("x"), a[0])
