"""The one validation step at the edge: raw request input in, checked token ids out (or a 4xx ``ApiError``).

It tokenizes as well, because two of the limits (``truncate: false`` and the token-id checks) are about tokens;
callers therefore run it off the event loop (``Batcher.preprocess``). Everything after it sees only valid ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..contract import Encoder
from ..errors import InputError
from ..tokenization import TokenIdError, check_token_ids
from .errors import ApiError


@dataclass(frozen=True)
class PreparedInput:
    """Validated input, ready for the batcher.

    Attributes:
        ids: Token ids per input (``[CLS] ... [SEP]`` for texts), at most ``max_seq_length`` each.
        prompt_tokens: Total real tokens, special tokens included (OpenAI ``usage``).
    """

    ids: list[list[int]]
    prompt_tokens: int


def _as_batch(inputs: Any) -> tuple[list[str] | None, list[list[int]] | None]:
    """Sort the four accepted shapes into (texts, None) or (None, token id lists)."""
    if isinstance(inputs, str):
        return [inputs], None
    if all(isinstance(item, str) for item in inputs):
        return list(inputs), None
    if all(isinstance(item, int) and not isinstance(item, bool) for item in inputs):
        return None, [list(inputs)]
    if all(isinstance(item, list) for item in inputs):
        return None, [list(item) for item in inputs]
    raise ApiError(
        422,
        "input must be a string, a list of strings, a list of token ids or a list of lists of token ids",
        param="input",
    )


def input_work(inputs: Any, limit: int) -> int:
    """A size estimate of a request's input (characters of text, or token ids), counted only until it passes
    ``limit``: enough to tell small requests (tokenized on the event loop) from the rest, at a bounded cost."""
    if isinstance(inputs, str):
        return len(inputs)
    total = 0
    for item in inputs:
        total += len(item) if isinstance(item, (str, list)) else 1
        if total > limit:
            break
    return total


def prepare_inputs(
    inputs: Any,
    encoder: Encoder,
    *,
    max_client_batch_size: int,
    truncate: bool = True,
    dimensions: int | None = None,
    param: str = "input",
    check_length: bool = True,
) -> PreparedInput:
    """Validate one request's input and turn it into token ids.

    Args:
        inputs: A string, a list of strings, a list of token ids or a list of lists of token ids (as the
            request models admit them). An empty string is valid and embeds as ``[CLS] [SEP]``, as
            sentence-transformers does.
        encoder: The encoder (``tokenize``, ``max_seq_length``, ``dimension``, ``tokenizer.vocab_size``).
        max_client_batch_size: Most inputs per request.
        truncate: Cut texts over ``max_seq_length`` tokens; with False such a text is an error.
        dimensions: Requested output dimensions, checked against the model's.
        param: The request field name used in error messages (``input`` or ``inputs``).
        check_length: With False (``/tokenize``), texts are neither truncated nor checked against the limit.

    Returns:
        The checked token ids and their total count.

    Raises:
        ApiError: 400 with a one-line message naming the field and the limit.
    """
    limit = encoder.max_seq_length
    if dimensions is not None and not 1 <= dimensions <= encoder.dimension:
        raise ApiError(
            400, f"dimensions must be between 1 and {encoder.dimension}, not {dimensions}", param="dimensions"
        )
    if not isinstance(inputs, str) and len(inputs) == 0:
        raise ApiError(400, f"{param} must not be an empty list", kind="empty", param=param)
    texts, id_lists = _as_batch(inputs)
    count = len(texts if texts is not None else id_lists)
    if count > max_client_batch_size:
        raise ApiError(
            400,
            f"{param} has {count} items; this server takes at most {max_client_batch_size} "
            f"per request (--max-client-batch-size)",
            param=param,
        )
    if texts is not None:
        try:
            ids = encoder.tokenize(texts, truncate=truncate and check_length)
        except InputError as err:  # e.g. a lone surrogate, which JSON's "\ud800" escapes can carry
            index, reason = getattr(err, "index", None), getattr(err, "reason", None)
            if index is None or reason is None:
                raise ApiError(400, str(err), param=param) from err
            name = param if isinstance(inputs, str) else f"{param}[{index}]"
            raise ApiError(400, f"{name} {reason}", param=param) from err
        if check_length and not truncate:
            for index, seq in enumerate(ids):
                if len(seq) > limit:
                    raise ApiError(
                        400,
                        f"{param}[{index}] has {len(seq)} tokens; the model takes at most {limit} "
                        f"(send truncate: true to cut it)",
                        param=param,
                    )
    else:
        try:
            ids = check_token_ids(id_lists, encoder.tokenizer.vocab_size, limit, name=param)
        except TokenIdError as err:
            raise ApiError(400, str(err), kind="empty" if err.empty else "validation", param=param) from None
    return PreparedInput(ids=ids, prompt_tokens=sum(len(seq) for seq in ids))
