"""A fake encoder that implements :class:`minilm_npu.contract.Encoder`, for fast server (and corpus) plumbing tests.

``test_encoder_contract.py`` checks it, and the real encoder, against the protocol (signatures included), so the
fake cannot drift from what the server may use.
"""

from __future__ import annotations

import threading
import time
import zlib
from types import SimpleNamespace

import numpy as np

from minilm_npu.config import EncoderConfig
from minilm_npu.contract import ModelInfo
from minilm_npu.tokenization import UntokenizableText

CLS, SEP, VOCAB = 101, 102, 30522


class FakeWorker:
    """One fake device: runs exactly the batch it gets, recording its size."""

    def __init__(self, device: str, encoder: FakeEncoder):
        self.device, self.encoder = device, encoder

    def run(self, ids: list[list[int]], normalize: bool) -> np.ndarray:
        enc = self.encoder
        if enc.fail:
            raise RuntimeError("device lost")
        with enc.lock:
            enc.batches.append(len(ids))
            enc.ran_on.append(self.device)
        if enc.delay_s:
            time.sleep(enc.delay_s)
        out = np.stack([enc.vector(seq) for seq in ids])
        if normalize:
            out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out

    def run_on_all_cores(self, ids: list[list[int]], normalize: bool) -> np.ndarray:
        with self.encoder.lock:
            self.encoder.alone += 1
        return self.run(ids, normalize)

    def run_tokens(self, ids: list[list[int]]) -> list[np.ndarray]:
        """One row per token: the vector of the sequence's first ``position + 1`` ids."""
        return [np.stack([self.encoder.vector(seq[: i + 1]) for i in range(len(seq))]) for seq in ids]


class FakeEncoder:
    """Words hash to token ids; a sequence's vector depends only on its ids (so batching cannot change it)."""

    dimension = 384
    max_seq_length = 256
    model_name = "fake/minilm"
    pooling = "mean"
    #: sentence-transformers' defaults (empty) plus one prompt that changes the text.
    prompts = {"query": "", "document": "", "search": "search for:"}

    def __init__(self, devices=("cpu",), delay_s: float = 0.0, **config):
        self.config = EncoderConfig(device=",".join(devices), **config)
        self.workers = [FakeWorker(device, self) for device in devices]
        self.delay_s = delay_s
        self.fail = False
        self.batches: list[int] = []
        self.alone = 0  # batches run with every core (nothing else running or queued)
        self.ran_on: list[str] = []  # the device of each batch
        self.lock = threading.Lock()
        self.tokenizer = SimpleNamespace(vocab_size=VOCAB, decode_tokens=self.decode_tokens, decode=self.decode)
        self.warmed = False

    def warmup(self) -> None:
        self.warmed = True

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(name=self.model_name, directory="/fake", weights_path="/fake/model.safetensors")

    def engine_choices(self) -> dict[str, str]:
        return {}

    def tokenize(self, texts, truncate=True, truncation_direction="right"):
        out = []
        keep = self.max_seq_length - 2
        for index, text in enumerate(texts):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as bad:  # as the real tokenizer: the text, named by its position
                raise UntokenizableText(index, f"is not valid Unicode: {bad.reason}") from None
            words = [1000 + zlib.crc32(w.encode()) % 20000 for w in text.split()]
            if truncate and len(words) > keep:
                words = words[-keep:] if truncation_direction == "left" else words[:keep]
            out.append([CLS, *words, SEP])
        return out

    def decode_tokens(self, ids):
        names = {CLS: "[CLS]", SEP: "[SEP]"}
        return [names.get(i, f"tok{i}") for i in ids]

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(t for t in self.decode_tokens(ids) if not (skip_special_tokens and t in ("[CLS]", "[SEP]")))

    def vector(self, ids) -> np.ndarray:
        rng = np.random.default_rng(zlib.crc32(np.asarray(ids, dtype=np.int64).tobytes()))
        return rng.standard_normal(self.dimension).astype(np.float32)

    def encode_token_ids(self, token_ids, batch_size=None, normalize_embeddings=None, show_progress_bar=False):
        return self.workers[0].run([list(ids) for ids in token_ids], normalize_embeddings is not False)

    def batch_workers(self):
        return self.workers

    def encode(self, sentences, batch_size=None, normalize_embeddings=None, show_progress_bar=False):
        single = isinstance(sentences, str)
        out = self.encode_token_ids(
            self.tokenize([sentences] if single else list(sentences)), batch_size, normalize_embeddings
        )
        return out[0] if single else out

    def expected(self, texts, normalize=True) -> np.ndarray:
        return self.expected_ids(self.tokenize(texts), normalize)

    def expected_ids(self, ids, normalize=True) -> np.ndarray:
        out = np.stack([self.vector(seq) for seq in ids])
        if normalize:
            out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out
