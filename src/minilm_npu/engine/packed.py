"""The packed engine: the default backend. Token ids in, pooled vectors out, with no work spent on padding.

:class:`PackedBackend` loads the lean BERT of :mod:`minilm_npu.engine.bert` once per device and runs each batch as one
packed ``[total_tokens, hidden]`` tensor. Precision:

* ``float32``: exact (within 1e-5 of sentence-transformers after normalisation);
* ``bfloat16`` / ``float16``: weights and activations in that dtype; pooling (and the encoder's normalisation)
  in float32. Which device takes which dtype is decided in :func:`minilm_npu.engine.policy.dtype_unsupported_reason`;
* ``int8`` (CPU): int8 weights with dynamic per-token activation quantization, see :class:`Int8Linear`. Its
  smoothing factors are calibrated at load time on :data:`minilm_npu.samples.CALIBRATION_TEXTS` (tokenized
  here, the one place a backend sees text).
"""

from __future__ import annotations

import logging
import os
import time

import torch

from ..devices import exact_gelu, graph_api, synchronize, torch_npu_module, varlen_attention
from ..errors import InputError
from ..modelfiles import ModelFiles
from ..samples import CALIBRATION_TEXTS
from ..tokenization import Tokenizer
from .backend import TORCH_DTYPES, Backend
from .bert import PackedBert
from .checkpoint import BertConfig, load_weights
from .cpu_execution import AdaptiveThreads
from .cpu_kernels import kernel_plan
from .cpu_linears import (
    FUSED_QUANTIZER,
    float_linear_factory,
    int8_linear_factory,
    int8_linear_supported,
    onednn_linear_supported,
)
from .graphs import GRAPH_WIDTHS, GraphedForwards
from .head import SentenceHead
from .packing import PackedBatch, pack
from .policy import (
    AttentionPlan,
    attention_plan,
    cpu_has_native_bfloat16,
    dtype_unsupported_reason,
    tune_host_allocator,
    warmup_lengths,
)
from .query import QUERY_ENV, QueryEngine, QueryPlan, installed_runtimes, plan_query

log = logging.getLogger(__name__)


class PackedBackend(Backend):
    """The packed engine on one device.

    Args:
        model_files: The resolved model (BERT or RoBERTa family; its pooling and Dense modules run here too).
        device: Where the model runs.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or ``"int8"``.
        attention: How attention runs; default :func:`~minilm_npu.engine.policy.attention_plan` (tests pass
            another plan to run the accelerators' layouts on a CPU).

    Raises:
        InputError: a dtype this device cannot run.
        ModelFilesError: not a checkpoint this engine runs, or weights that do not match config.json.
    """

    name = "packed"
    #: Whether calls of one sequence may run the one-sentence graph (:mod:`.query`), which is this class's forward
    #: (no token types) up to the sentence head; a subclass with another forward or head sets it False.
    one_sentence_graph = True

    def __init__(
        self, model_files: ModelFiles, device: torch.device, dtype: str, attention: AttentionPlan | None = None
    ):
        reason = dtype_unsupported_reason(device, dtype)
        if reason:
            raise InputError(reason)
        if dtype == "int8" and not int8_linear_supported():
            raise InputError("dtype 'int8' needs a PyTorch build with oneDNN (mkldnn); this one has none")
        if dtype == "bfloat16" and device.type == "cpu" and not cpu_has_native_bfloat16():
            log.warning(
                "this CPU has no bfloat16 hardware (AVX512-BF16/AMX): bfloat16 runs emulated, several "
                "times slower than float32; use 'float32' or 'int8' here"
            )
        if device.type == "cpu":
            tune_host_allocator()  # activations live in host memory: stop paying page faults for them
        self.device, self.dtype, self.pooling = device, dtype, model_files.pooling
        self.config = BertConfig.from_dict(model_files.config)
        self.head = SentenceHead(model_files, device)
        self.plan = attention or attention_plan(device.type, dtype)
        weights = self._load_weights(model_files)
        torch_dtype = TORCH_DTYPES.get(dtype, torch.float32)
        # Device choices, made once here: attention strategy, mask shape and gears (engine/policy.py says why),
        # the device's exact GELU and its packed-sequence attention kernel where it has one (devices.py).
        gelu, self.gelu_choice = exact_gelu(device.type)
        if dtype == "int8":
            calibration = Tokenizer(model_files).encode(CALIBRATION_TEXTS)
            make_linear = int8_linear_factory(self.config, weights, device, calibration)
        else:
            make_linear = float_linear_factory(device, torch_dtype, gelu)
        self.model = PackedBert(
            self.config,
            weights,
            device,
            torch_dtype,
            make_linear,
            gelu=gelu,
            varlen=varlen_attention(device.type) if self.plan.strategy == "varlen" else None,
        )
        # Small batches on devices with graph capture replay a recorded forward pass (see graphs.py); the CPU has
        # no launch overhead to save.
        api = graph_api(device)
        self.graphs = (
            GraphedForwards(self.model, dtype, self.head, api, square_mask=self.plan.square_mask)
            if api is not None
            else None
        )
        # CPU: each forward on 1 thread or all, whichever measures faster under this machine's load.
        self._threads = AdaptiveThreads() if device.type == "cpu" else None
        # CPU: calls of one sequence on ONNX Runtime / OpenVINO where installed (query.py says why); built on first
        # use. Its thread choice is measured apart from the packed forwards': another engine, other costs.
        self.query_plan = (
            None
            if device.type != "cpu"
            else plan_query(dtype, cpu_has_native_bfloat16(), installed_runtimes(), os.environ.get(QUERY_ENV))
            if self.one_sentence_graph
            else QueryPlan(None, reason=f"not for {type(self).__name__}: its forward is not the graph's")
        )
        self.query = (
            QueryEngine(model_files.weights_path, self.config, self.query_plan)
            if self.query_plan is not None and self.query_plan.runtime is not None
            else None
        )
        self._query_threads = AdaptiveThreads()
        # A CPU forward keeps no state (AdaptiveThreads' estimates are advisory), so threads may share this engine;
        # accelerators keep one stream and recorded graphs per engine.
        self.shareable = device.type == "cpu"

    def _load_weights(self, model_files: ModelFiles) -> dict[str, torch.Tensor]:
        """The encoder's weights (a subclass with a task head loads and keeps the head's here too)."""
        return load_weights(model_files.weights_path, self.config)

    def _pack(self, batch: list[list[int]], token_gears: bool = True) -> PackedBatch:
        plan = self.plan
        return pack(
            batch,
            plan.strategy,
            self.device,
            gears=plan.gears,
            row_gears=plan.row_gears,
            square_mask=plan.square_mask,
            token_gears=plan.token_gears if token_gears else None,
        )

    @torch.inference_mode()
    def embed(self, batch: list[list[int]], prompt_length: int = 0) -> torch.Tensor:
        """Sentence embeddings before the model's final Normalize, float32 ``[len(batch), dimension]`` on
        ``self.device``; ``prompt_length`` leading tokens are left out of pooling where the model says so (the
        static-shape graphs pool every token, so such batches run eagerly)."""
        if not batch:
            return torch.empty(0, self.head.dimension, device=self.device)
        if self.graphs is not None and not prompt_length:
            pooled = self.graphs.embed(batch)
            if pooled is not None:
                return pooled
        if self.query is not None and len(batch) == 1 and not self.query.failed:
            pooled = self._query_threads.run(len(batch[0]), lambda: self._embed_query(batch, prompt_length))
            if pooled is not None:
                return pooled
        if self._threads is not None:
            return self._threads.run(sum(len(ids) for ids in batch), lambda: self._embed(batch, prompt_length))
        return self._embed(batch, prompt_length)

    def _embed_query(self, batch: list[list[int]], prompt_length: int) -> torch.Tensor | None:
        # Exact token count: the graph has no mask, so a token gear's padding rows would be attended to (and the
        # oneDNN per-shape caches the gears bound are not the graph runtime's).
        packed = self._pack(batch, token_gears=False)
        # The graph takes the positions as the packed engine numbers them (BERT's slots, the RoBERTa family's
        # offset), so it knows nothing of a model's position rule; the head pools as for any packed batch.
        hidden = self.query.forward(packed.ids, self.model.position_ids(packed.ids, packed.rows.slots))
        return None if hidden is None else self.head(hidden, packed.rows, prompt_length)

    def _embed(self, batch: list[list[int]], prompt_length: int = 0) -> torch.Tensor:
        packed = self._pack(batch)
        return self.head(self.model.forward(packed), packed.rows, prompt_length)

    @torch.inference_mode()
    def token_embeddings(self, batch: list[list[int]]) -> list[torch.Tensor]:
        """Last-layer hidden states before pooling, float32 ``[len(ids), hidden]`` per sequence."""
        if not batch:
            return []
        packed = self._pack(batch)
        hidden = self.model.forward(packed)[: sum(packed.lengths)]  # without the padding rows of a token gear
        return list(hidden.float().split(packed.lengths))

    def choices(self) -> dict[str, str]:
        """What this engine picked on its device, and why (``minilm-npu check`` reports it)."""
        graphs = (
            "off (no graph API on this device, or MINILM_NPU_GRAPHS=0)"
            if self.graphs is None
            else "eager fallback (capture failed)"
            if self.graphs.failed
            else "device graphs for batches up to the padding budget, captured per (rows, width) gear"
        )
        choices = {"attention": f"{self.plan.strategy}: {self.plan.reason}", "gelu": self.gelu_choice, "graphs": graphs}
        if self.device.type == "cpu":
            choices["linear"] = (
                kernel_plan()[self.dtype]
                if self.dtype in ("float32", "int8", "bfloat16") and onednn_linear_supported()
                else "F.linear"
            )
            choices["one sentence"] = (
                self.query.describe() if self.query is not None else f"packed engine ({self.query_plan.reason})"
            )
            choices["threads"] = (
                f"each forward on 1 thread or {torch.get_num_threads()}, whichever measures "
                "faster under this load (per size class, re-tried every "
                f"{self._threads.explore_every} calls)"
            )
        if self.device.type == "npu":
            module = torch_npu_module()
            choices["torch_npu"] = (
                f"{getattr(module, '__version__', 'unknown')} (op-plugin is built into "
                "torch_npu; broadcast [rows,1,1,width] masks need op-plugin 26.1.0+)"
            )
        return choices

    def warmup(self) -> None:
        """Run the shapes :func:`minilm_npu.engine.policy.warmup_lengths` names once (allocation, kernel choice;
        on an NPU, every static-shape gear), logging each with its time; int8 also compiles its fused quantization
        here (the server warms up before it serves; elsewhere the compile happens in the first batch of >= 64
        tokens)."""
        if self.dtype == "int8":
            FUSED_QUANTIZER.compile()
        gears = warmup_lengths(self.device)
        where = f"{self.device} {self.dtype}"
        cls, word, sep = (token % self.config.vocab_size for token in (101, 1000, 102))  # any valid ids will do
        if self.query is not None:  # build (or read) the graph and the session now, not in the first query
            start = time.perf_counter()
            self.embed([[cls, word, sep]])
            log.info("warm-up %s: one-sentence path, %.2f s", where, time.perf_counter() - start)
        for number, lengths in enumerate(gears, 1):
            start = time.perf_counter()
            self.embed([[cls] + [word] * (n - 2) + [sep] if n >= 2 else [cls] for n in lengths])
            synchronize(self.device)
            took = time.perf_counter() - start
            log.info("warm-up %s: gear %d/%d, lengths %s, %.2f s", where, number, len(gears), lengths, took)
        if self.graphs is not None:  # one query of any length: the latency-critical case
            start = time.perf_counter()
            self.graphs.capture([(1, width) for width in GRAPH_WIDTHS])
            took = time.perf_counter() - start
            log.info("warm-up %s: device graphs, 1 row x %s tokens, %.2f s", where, list(GRAPH_WIDTHS), took)
