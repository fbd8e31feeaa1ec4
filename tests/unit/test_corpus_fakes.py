"""The corpus tests' fake encoder is deterministic and normalised, as the tests that rely on it assume."""

from __future__ import annotations

import numpy as np

from tests.fixtures.corpus import FakeEncoder


def test_fake_encoder_is_deterministic_and_normalised():
    enc = FakeEncoder()
    a = enc.encode(["x", "y"])
    assert a.shape == (2, 8) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(enc.encode("x"), a[0])
