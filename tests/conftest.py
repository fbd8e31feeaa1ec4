"""Shared fixtures: the real model on CPU, and sentence-transformers as the reference implementation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `make test` runs two xdist workers on two cores: OpenMP threads that spin while waiting for work burn the other
# worker's time slices (3 min 10 s against 2 min 53 s with PASSIVE, 2026-11-27). Set before torch loads libgomp;
# threads stay at torch's default so the multi-threaded paths are the ones tested.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

pytest_plugins = ["tests.fixtures.npu", "tests.fixtures.models"]

REPO_ROOT = Path(__file__).resolve().parents[1]
STSB_DEV = Path(os.environ.get("MINILM_TEST_STSB") or REPO_ROOT.parent / "shared" / "data" / "stsb-dev.tsv")
#: The device tests/integration/test_device_path.py runs on (e.g. ``cuda:0`` on a GPU machine); the rest is CPU.
TEST_DEVICE = os.environ.get("MINILM_TEST_DEVICE", "cpu")
#: A model directory to test with instead of the bundled one (a GPU machine gets a float16 copy, see
#: benchmarks/make_gpu_bundle.py).
TEST_MODEL = os.environ.get("MINILM_TEST_MODEL") or None


def pytest_configure(config):
    """LangChain's standard suites (langchain-tests) have async tests without asyncio marks; pytest-asyncio, which
    langchain-tests brings, runs them in its auto mode (nothing else in the suite is async)."""
    if hasattr(config.option, "asyncio_mode") and config.option.asyncio_mode is None:
        config.option.asyncio_mode = "auto"


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The model under test: the bundled official all-MiniLM-L6-v2 directory unless MINILM_TEST_MODEL is set."""
    from minilm_npu.modelfiles import bundled_model_dir

    return Path(TEST_MODEL) if TEST_MODEL else bundled_model_dir()


@pytest.fixture(scope="session")
def st_model(model_dir):
    """sentence-transformers itself, float32 on CPU: the reference every test compares to."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device="cpu")


@pytest.fixture(scope="session")
def encoder():
    """Our default encoder (default backend, float32) on CPU."""
    from minilm_npu import MiniLMEncoder

    return MiniLMEncoder(device="cpu")


@pytest.fixture(scope="session")
def reference_encoder():
    """Our reference backend (transformers AutoModel), float32 on CPU."""
    from minilm_npu import MiniLMEncoder

    return MiniLMEncoder(device="cpu", backend="transformers")


@pytest.fixture(scope="session")
def stsb_path() -> Path:
    """STS Benchmark dev split shipped in ../shared/data (skips when the checkout has no shared/ beside it)."""
    if not STSB_DEV.is_file():
        pytest.skip(f"{STSB_DEV} not found")
    return STSB_DEV
