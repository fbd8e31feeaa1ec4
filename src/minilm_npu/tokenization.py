"""Tokenization on the CPU with HF ``tokenizers``, at the model's real length limit.

The trap this module exists for: all-MiniLM-L6-v2's ``tokenizer.json`` carries ``truncation.max_length = 128`` and
``padding.length = 128``. The model (``sentence_bert_config.json``) takes 256 tokens, and sentence-transformers
overrides the file's settings on every call. Using the file as-is silently cuts texts of 129–256 tokens and gives
different vectors. We therefore reset truncation to ``max_seq_length`` and switch padding off: the engine receives
unpadded token ids and decides itself how (or whether) to pad.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tokenizers import Tokenizer as HFTokenizer

from .errors import InputError
from .modelfiles import ModelFiles

log = logging.getLogger(__name__)


class UntokenizableText(InputError):
    """A text the tokenizer cannot take (a lone surrogate, ...): bad input, named by its position.

    Attributes:
        index: Position of the text in the list given to the tokenizer.
        reason: What is wrong with it, phrased to follow the text's name (``sentences[3] <reason>``).
    """

    def __init__(self, index: int, reason: str):
        self.index = index
        self.reason = reason
        super().__init__(f"sentences[{index}] {reason}")


def _encode_batch(tokenizer: HFTokenizer, texts: list[str]) -> list:
    """``encode_batch``, with a failure traced to the first text that causes it."""
    try:
        return tokenizer.encode_batch(texts)
    except Exception as err:  # noqa: BLE001 - the tokenizer's errors are untyped (TypeError, Exception)
        for index, text in enumerate(texts):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as bad:
                # Python strings may hold lone surrogates (e.g. from JSON "\ud800"); UTF-8 and Rust cannot.
                raise UntokenizableText(index, f"is not valid Unicode: {bad.reason} ({text[bad.start]!r} at "
                                               f"character {bad.start})") from err
            try:
                tokenizer.encode(text)
            except Exception as single:  # noqa: BLE001 - see above
                raise UntokenizableText(index, f"cannot be tokenized ({type(single).__name__}: {single})") \
                    from err
        raise


class Tokenizer:
    """Text to token ids (``[CLS] ... [SEP]``), truncated at the model's ``max_seq_length``.

    Args:
        model_files: The resolved model; its ``tokenizer.json`` and ``max_seq_length`` are used.
    """

    def __init__(self, model_files: ModelFiles):
        self.max_seq_length = model_files.max_seq_length
        self.do_lower_case = model_files.do_lower_case
        self._truncating = HFTokenizer.from_file(str(model_files.tokenizer_path))
        self._truncating.no_padding()
        self._truncating.enable_truncation(max_length=self.max_seq_length)
        self._full = HFTokenizer.from_file(str(model_files.tokenizer_path))
        self._full.no_padding()
        self._full.no_truncation()
        self.vocab_size = self._full.get_vocab_size()
        self.pad_id = self._full.token_to_id("[PAD]") or 0
        self.truncated_total = 0

    def _prepare(self, texts: Sequence[str]) -> list[str]:
        # As sentence-transformers does: surrounding whitespace is stripped, and lower-cased when the
        # sentence-transformers config says so (the BERT normaliser lower-cases this model anyway).
        prepared = [str(text).strip() for text in texts]
        return [text.lower() for text in prepared] if self.do_lower_case else prepared

    def encode(self, texts: Sequence[str], truncate: bool = True) -> list[list[int]]:
        """Token ids for each text, special tokens included.

        Args:
            texts: The texts; an empty text gives ``[CLS] [SEP]``, as in the reference.
            truncate: Cut at ``max_seq_length`` (default). With False, the full ids come back so the caller can
                reject over-long inputs.

        Returns:
            One list of ids per text.

        Raises:
            UntokenizableText: for a text the tokenizer cannot take, with its index.
        """
        if not texts:
            return []
        prepared = self._prepare(texts)
        if not truncate:
            return [enc.ids for enc in _encode_batch(self._full, prepared)]
        encodings = _encode_batch(self._truncating, prepared)
        truncated = sum(1 for enc in encodings if enc.overflowing)
        if truncated:
            self.truncated_total += truncated
            log.info("%d of %d input(s) were longer than %d tokens and were truncated",
                     truncated, len(encodings), self.max_seq_length)
        return [enc.ids for enc in encodings]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Untruncated token counts (special tokens included), to enforce limits at the edge."""
        return [len(ids) for ids in self.encode(texts, truncate=False)]

    def decode_tokens(self, ids: Sequence[int]) -> list[str]:
        """The token strings for ids (for ``/tokenize``-style output)."""
        return [self._full.id_to_token(int(i)) or "[UNK]" for i in ids]
