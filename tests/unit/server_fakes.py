"""A fake encoder that satisfies the encode contract, for fast server plumbing tests."""

from __future__ import annotations

import threading
import time
import zlib
from types import SimpleNamespace

import numpy as np

CLS, SEP, VOCAB = 101, 102, 30522


class FakeEncoder:
    """Words hash to token ids; a sequence's vector depends only on its ids (so batching cannot change it)."""

    dimension = 384
    max_seq_length = 256
    model_name = "fake/minilm"
    dtype = "float32"
    backend_name = "fake"

    def __init__(self, devices=("cpu",), delay_s: float = 0.0):
        self.devices = list(devices)
        self.delay_s = delay_s
        self.fail = False
        self.batches: list[int] = []
        self.lock = threading.Lock()
        self.tokenizer = SimpleNamespace(vocab_size=VOCAB, decode_tokens=self.decode_tokens)
        self.warmed = False

    def warmup(self) -> None:
        self.warmed = True

    def tokenize(self, texts, truncate=True):
        out = []
        for text in texts:
            ids = [CLS] + [1000 + zlib.crc32(w.encode()) % 20000 for w in text.split()] + [SEP]
            if truncate and len(ids) > self.max_seq_length:
                ids = ids[: self.max_seq_length - 1] + [SEP]
            out.append(ids)
        return out

    def decode_tokens(self, ids):
        names = {CLS: "[CLS]", SEP: "[SEP]"}
        return [names.get(i, f"tok{i}") for i in ids]

    @staticmethod
    def vector(ids) -> np.ndarray:
        rng = np.random.default_rng(zlib.crc32(np.asarray(ids, dtype=np.int64).tobytes()))
        return rng.standard_normal(384).astype(np.float32)

    def encode_token_ids(self, ids, batch_size=32, normalize_embeddings=True, show_progress_bar=False,
                         device_index=None):
        if self.fail:
            raise RuntimeError("device lost")
        with self.lock:
            self.batches.append(len(ids))
        if self.delay_s:
            time.sleep(self.delay_s)
        out = np.stack([self.vector(seq) for seq in ids])
        if normalize_embeddings:
            out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out

    def expected(self, texts, normalize=True) -> np.ndarray:
        out = np.stack([self.vector(seq) for seq in self.tokenize(texts)])
        if normalize:
            out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out
