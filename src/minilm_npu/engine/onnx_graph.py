"""The transformer of a BERT-layout checkpoint as an ONNX graph, built from its checked weights and its config.

The graph is the packed engine's forward for **one sequence**: token ids and their position ids in, the last layer's
hidden states ``[tokens, hidden]`` out. Pooling, normalisation and anything after them stay in torch, where the
packed engine does them, so the graph knows nothing of a model's head or of its position numbering (the caller
passes the positions the packed engine computed). Only standard ONNX operators (opset 17), so ONNX Runtime and
OpenVINO both read it:

* embeddings: ``Gather`` of the word table plus ``Gather`` of the position table with token type 0 folded in (as
  :class:`~minilm_npu.engine.bert.PackedBert` does), then ``LayerNormalization``;
* per layer: one fused QKV ``MatMul`` (the softmax scale folded into Q's weights), attention as two batched
  ``MatMul`` over the heads with a ``Softmax`` between (no mask: one sequence has no padding), the exact erf GELU
  written as ``0.5 * x * (1 + erf(x / sqrt 2))`` (ONNX Runtime fuses it into its own exact ``Gelu``), post-LNs.

:func:`int8_graph` rewrites the feed-forward and attention-output ``MatMul`` nodes into ONNX's
``DynamicQuantizeLinear`` + ``MatMulInteger`` with SmoothQuant factors folded exactly into the weights before
them (see its docstring).

Only the ``onnx`` package is needed to build it (the ``bench``/``query`` extras).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .checkpoint import BertConfig

#: The ONNX opset of the graph: 17 is the first with ``LayerNormalization``.
OPSET = 17
#: Which of a layer's linear layers :func:`int8_graph` quantizes (the same roles as the torch int8 engine).
INT8_ROLES = ("attn_out", "ffn_in", "ffn_out")


class _Builder:
    """Nodes and initializers of one graph, with a counter for fresh names."""

    def __init__(self):
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, stem: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(stem)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], stem: str | None = None, outputs: int = 1, **attrs) -> str | list:
        from onnx import helper

        names = [self.name(stem or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, **attrs))
        return names[0] if outputs == 1 else names


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy()


#: Builds a linear layer into the graph: ``(builder, layer_index, role, x, weight [out, in], bias [out]) -> y``.
LinearBuilder = Callable[[_Builder, int, str, str, np.ndarray, np.ndarray], str]


def _float_linear(b: _Builder, _n: int, role: str, x: str, weight: np.ndarray, bias: np.ndarray) -> str:
    return b.op("Add", [b.op("MatMul", [x, b.const(f"{role}_w", weight.T)]), b.const(f"{role}_b", bias)])


def transformer_graph(config: BertConfig, weights: dict[str, torch.Tensor], linear: LinearBuilder | None = None):
    """The one-sequence transformer as an ``onnx.ModelProto``.

    Args:
        config: The architecture (sizes, heads, layer-norm epsilon).
        weights: Expected (unprefixed) name -> tensor, as :func:`~minilm_npu.engine.checkpoint.load_weights`
            returns them.
        linear: Builds each linear layer (default: float32 ``MatMul`` + ``Add``); :func:`int8_graph` passes its own.

    Returns:
        A model with inputs ``input_ids`` and ``position_ids`` (``[tokens]`` int64) and output ``hidden``
        (``[tokens, hidden]`` float32).
    """
    from onnx import TensorProto, helper

    linear = linear or _float_linear
    b = _Builder()
    h, heads, head_dim, eps = config.hidden_size, config.num_heads, config.head_dim, config.layer_norm_eps

    def get(name: str) -> np.ndarray:
        return _numpy(weights[name])

    def layer_norm(x: str, prefix: str) -> str:
        scale, shift = b.const("ln_w", get(prefix + ".weight")), b.const("ln_b", get(prefix + ".bias"))
        return b.op("LayerNormalization", [x, scale, shift], axis=-1, epsilon=eps)

    positions = get("embeddings.position_embeddings.weight") + get("embeddings.token_type_embeddings.weight")[0]
    x = b.op(
        "Add",
        [
            b.op("Gather", [b.const("word", get("embeddings.word_embeddings.weight")), "input_ids"], axis=0),
            b.op("Gather", [b.const("position", positions), "position_ids"], axis=0),
        ],
    )
    x = layer_norm(x, "embeddings.LayerNorm")
    heads_shape = b.const("heads_shape", np.array([0, 3 * heads, head_dim], dtype=np.int64))
    hidden_shape = b.const("hidden_shape", np.array([0, h], dtype=np.int64))
    sqrt2, half, one = (
        b.const(s, np.array(v, dtype=np.float32)) for s, v in (("sqrt2", math.sqrt(2)), ("half", 0.5), ("one", 1.0))
    )
    scale = head_dim**-0.5
    for n in range(config.num_layers):
        p = f"encoder.layer.{n}."
        qkv_w = np.concatenate([get(p + f"attention.self.{m}.weight") for m in ("query", "key", "value")])
        qkv_b = np.concatenate([get(p + f"attention.self.{m}.bias") for m in ("query", "key", "value")])
        qkv_w[:h] *= scale  # the softmax scale, folded into Q
        qkv_b[:h] *= scale
        qkv = linear(b, n, "qkv", x, qkv_w, qkv_b)
        # [T, 3H] -> [T, 3*heads, d] -> [3*heads, T, d] -> q, k, v: [heads, T, d]
        split = b.op("Transpose", [b.op("Reshape", [qkv, heads_shape])], perm=[1, 0, 2])
        q, k, v = b.op("Split", [split], outputs=3, axis=0)
        scores = b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 2, 1])])
        context = b.op("MatMul", [b.op("Softmax", [scores], axis=-1), v])
        context = b.op("Reshape", [b.op("Transpose", [context], perm=[1, 0, 2]), hidden_shape])
        attn = linear(
            b, n, "attn_out", context, get(p + "attention.output.dense.weight"), get(p + "attention.output.dense.bias")
        )
        x = layer_norm(b.op("Add", [attn, x]), p + "attention.output.LayerNorm")
        inner = linear(b, n, "ffn_in", x, get(p + "intermediate.dense.weight"), get(p + "intermediate.dense.bias"))
        erf = b.op("Erf", [b.op("Div", [inner, sqrt2])])
        gelu = b.op("Mul", [b.op("Mul", [inner, b.op("Add", [erf, one])]), half])
        out = linear(b, n, "ffn_out", gelu, get(p + "output.dense.weight"), get(p + "output.dense.bias"))
        x = layer_norm(b.op("Add", [out, x]), p + "output.LayerNorm")
    b.nodes.append(helper.make_node("Identity", [x], ["hidden"]))
    graph = helper.make_graph(
        b.nodes,
        "transformer",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["tokens"]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["tokens"]),
        ],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["tokens", h])],
        b.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="minilm-npu")
    model.ir_version = 8  # opset 17's IR version: readable by every ONNX Runtime and OpenVINO that has opset 17
    return model
