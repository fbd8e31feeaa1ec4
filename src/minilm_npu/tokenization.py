"""Tokenization on the CPU with HF ``tokenizers``, at the model's real length limit.

The trap this module exists for: all-MiniLM-L6-v2's ``tokenizer.json`` carries ``truncation.max_length = 128`` and
``padding.length = 128``. The model (``sentence_bert_config.json``) takes 256 tokens, and sentence-transformers
overrides the file's settings on every call. Using the file as-is silently cuts texts of 129–256 tokens and gives
different vectors. We therefore reset truncation to ``max_seq_length`` and switch padding off: the engine receives
unpadded token ids and decides itself how (or whether) to pad. (Every model's ``tokenizer.json`` is read this way:
its special tokens, ``[CLS] ... [SEP]`` or ``<s> ... </s>``, come from its own post-processor.)

Texts go to the tokenizer as they are, as in sentence-transformers 6 (earlier versions stripped surrounding
whitespace, which BERT's tokenizer ignores anyway); ``do_lower_case`` puts a Lowercase step in front of the
tokenizer's own normaliser unless it already lowercases, as sentence-transformers 6 does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import normalizers

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
                raise UntokenizableText(
                    index, f"is not valid Unicode: {bad.reason} ({text[bad.start]!r} at character {bad.start})"
                ) from err
            try:
                tokenizer.encode(text)
            except Exception as single:  # noqa: BLE001 - see above
                raise UntokenizableText(index, f"cannot be tokenized ({type(single).__name__}: {single})") from err
        raise


def _lowercases(normalizer: object) -> bool:
    """Whether a tokenizers normaliser already lowercases (sentence-transformers' own test)."""
    if isinstance(normalizer, normalizers.Lowercase):
        return True
    if isinstance(normalizer, normalizers.BertNormalizer):
        return bool(normalizer.lowercase)
    if isinstance(normalizer, normalizers.Sequence):
        return any(_lowercases(step) for step in normalizer)
    return False


def _load(model_files: ModelFiles) -> HFTokenizer:
    tokenizer = HFTokenizer.from_file(str(model_files.tokenizer_path))
    tokenizer.no_padding()
    if model_files.do_lower_case and not _lowercases(tokenizer.normalizer):
        steps = [normalizers.Lowercase()] + ([tokenizer.normalizer] if tokenizer.normalizer is not None else [])
        tokenizer.normalizer = normalizers.Sequence(steps)
    return tokenizer


class PairIds(list):
    """A text pair's token ids (``[CLS] a [SEP] b [SEP]``, ``<s> a </s></s> b </s>``), a ``list`` of ints that also
    says where the second text's tokens start.

    Attributes:
        second: Index of the first token of token type 1 (the second text's, for models with token types); the
            length when every token is of type 0 (the RoBERTa family).
    """

    def __init__(self, ids: Sequence[int], second: int):
        super().__init__(ids)
        self.second = second


def _pair_ids(encoding) -> PairIds:
    types = encoding.type_ids
    return PairIds(encoding.ids, next((i for i, t in enumerate(types) if t), len(types)))


class Tokenizer:
    """Text to token ids (``[CLS] ... [SEP]``, ``<s> ... </s>``), truncated at the model's ``max_seq_length``.

    Args:
        model_files: The resolved model; its ``tokenizer.json``, ``max_seq_length`` and ``do_lower_case`` are used.
    """

    def __init__(self, model_files: ModelFiles):
        self.max_seq_length = model_files.max_seq_length
        self._truncating = _load(model_files)
        self._truncating.enable_truncation(max_length=self.max_seq_length)
        # Left truncation keeps a text's end (special tokens are still added around what is kept).
        self._truncating_left = _load(model_files)
        self._truncating_left.enable_truncation(max_length=self.max_seq_length, direction="left")
        self._full = _load(model_files)
        self._full.no_truncation()
        self.vocab_size = self._full.get_vocab_size()
        self.special_ids = frozenset(i for i, token in self._full.get_added_tokens_decoder().items() if token.special)

    def set_max_seq_length(self, max_seq_length: int) -> None:
        """Truncate at ``max_seq_length`` tokens from now on (the caller checks it against the model's limit)."""
        self.max_seq_length = max_seq_length
        self._truncating.enable_truncation(max_length=max_seq_length)
        self._truncating_left.enable_truncation(max_length=max_seq_length, direction="left")

    def prompt_length(self, prompt: str) -> int:
        """Tokens a prompt puts before a text, counted as sentence-transformers counts them (to leave them out of
        pooling): the prompt's ids with its leading special token, without a trailing special token."""
        ids = self.encode([prompt])[0]
        return len(ids) - 1 if ids and ids[-1] in self.special_ids else len(ids)

    def encode(
        self, texts: Sequence[str], truncate: bool = True, truncation_direction: str = "right"
    ) -> list[list[int]]:
        """Token ids for each text, special tokens included.

        Args:
            texts: The texts; an empty text gives ``[CLS] [SEP]``, as in the reference.
            truncate: Cut at ``max_seq_length`` (default). With False, the full ids come back so the caller can
                reject over-long inputs.
            truncation_direction: ``"right"`` keeps a long text's start (sentence-transformers' way), ``"left"``
                its end; either way the special tokens are kept.

        Returns:
            One list of ids per text.

        Raises:
            UntokenizableText: for a text the tokenizer cannot take, with its index.
        """
        if not texts:
            return []
        prepared = [str(text) for text in texts]
        if not truncate:
            return [enc.ids for enc in _encode_batch(self._full, prepared)]
        if truncation_direction not in ("right", "left"):
            raise InputError(f"truncation_direction must be 'right' or 'left', not {truncation_direction!r}")
        tokenizer = self._truncating_left if truncation_direction == "left" else self._truncating
        encodings = _encode_batch(tokenizer, prepared)
        truncated = sum(1 for enc in encodings if enc.overflowing)
        if truncated:
            log.info(
                "%d of %d input(s) were longer than %d tokens and were truncated",
                truncated,
                len(encodings),
                self.max_seq_length,
            )
        return [enc.ids for enc in encodings]

    def encode_pairs(self, pairs: Sequence[tuple[str, str]], truncate: bool = True) -> list[PairIds]:
        """Token ids of text pairs as a cross-encoder's tokenizer gives them: both texts in one sequence, the longer
        one cut first until the pair fits ``max_seq_length`` (``longest_first``, sentence-transformers' way).

        Args:
            pairs: ``(first, second)`` texts.
            truncate: Cut at ``max_seq_length`` (default); False gives the full ids, so the caller can reject pairs
                over the limit.

        Raises:
            UntokenizableText: for a pair the tokenizer cannot take, with its index.
        """
        if not pairs:
            return []
        prepared = [(str(a), str(b)) for a, b in pairs]
        tokenizer = self._truncating if truncate else self._full
        try:
            encodings = tokenizer.encode_batch(prepared)
        except Exception as err:  # noqa: BLE001 - the tokenizer's errors are untyped; find the pair, as for texts
            for index, (a, b) in enumerate(prepared):
                for text in (a, b):
                    try:
                        _encode_batch(self._full, [text])
                    except UntokenizableText as bad:
                        raise UntokenizableText(index, bad.reason) from err
            raise
        return [_pair_ids(encoding) for encoding in encodings]

    def decode_tokens(self, ids: Sequence[int]) -> list[str]:
        """The token strings for ids (for ``/tokenize``-style output)."""
        return [self._full.id_to_token(int(i)) or "[UNK]" for i in ids]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of token ids (WordPiece pieces joined back into words), as ``tokenizers`` decodes them."""
        return self._full.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


class TokenIdError(InputError):
    """Token ids a model cannot take. ``empty`` tells the server's error kind apart (an empty list)."""

    def __init__(self, message: str, empty: bool = False):
        super().__init__(message)
        self.empty = empty


def check_token_ids(
    token_ids: Sequence[Sequence[int]], vocab_size: int, max_length: int, name: str = "token_ids"
) -> list[list[int]]:
    """The one token-id check, at the edge (the encoder's ``encode_token_ids`` and the server's requests).

    Everything behind it (batcher, device workers, engines) takes the ids as valid.

    Args:
        token_ids: Id lists, e.g. as :meth:`Tokenizer.encode` returns them.
        vocab_size: Ids must lie in ``[0, vocab_size)``.
        max_length: Most ids per list (the model's ``max_seq_length``).
        name: How the input is named in messages (``token_ids``, ``input``, ``inputs``).

    Returns:
        The ids as lists of Python ints.

    Raises:
        TokenIdError: naming the first bad list: empty, too long, or holding something that is not a token id.
    """
    checked = []
    for index, ids in enumerate(token_ids):
        if isinstance(ids, (str, bytes, dict)) or not hasattr(ids, "__iter__"):
            raise TokenIdError(f"{name}[{index}] is {type(ids).__name__}, not a list of token ids")
        ids = list(ids)
        if not ids:
            raise TokenIdError(f"{name}[{index}] is an empty list of token ids", empty=True)
        if len(ids) > max_length:
            raise TokenIdError(f"{name}[{index}] has {len(ids)} token ids; the model takes at most {max_length}")
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) and 0 <= i < vocab_size for i in ids):
            raise TokenIdError(f"{name}[{index}] holds a value that is not a token id in [0, {vocab_size})")
        checked.append([int(i) for i in ids])
    return checked
