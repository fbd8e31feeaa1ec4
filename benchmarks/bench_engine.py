"""Benchmark the packed engine against the CPU peers a user would pick: ONNX Runtime and sentence-transformers.

Engines, each in its own fresh process (its own allocator settings and thread pool: ONNX Runtime's threads spin
after every run and would slow anything sharing their process):

* ``sentence-transformers float32``: its ``encode`` on the torch backend;
* ``onnxruntime float32`` / ``onnxruntime int8`` (CPU only): the official weights exported once with
  ``torch.onnx.export`` and quantized with ``onnxruntime.quantization.quantize_dynamic`` using the settings of
  sentence-transformers' ``export_dynamic_quantized_onnx_model(model, "avx512_vnni", ...)`` (optimum's
  ``AutoQuantizationConfig.avx512_vnni(is_static=False)``: QOperator/IntegerOps, uint8 asymmetric activations,
  int8 symmetric weights, per-channel, no reduce_range, operators MatMul and Add), run through
  ``onnxruntime.InferenceSession`` with the same tokenizer, padding to the batch's longest and mean pooling, as
  fastembed does. The exported files are cached in ``benchmarks/.onnx-cache/`` (git-ignored);
* ``openvino float32`` / ``openvino bfloat16`` (CPU only, where ``openvino`` is installed): the same float32 ONNX
  file compiled by OpenVINO for its CPU plugin with ``INFERENCE_PRECISION_HINT`` f32 or bf16 (bfloat16 only where
  the CPU has AVX512-BF16 or AMX: elsewhere OpenVINO runs f32 whatever the hint), latency hint, same tokenizer,
  padding and pooling as the ONNX Runtime peer;
* ``minilm-npu packed <dtype>``: our engine.

Workloads (issue 12's table): one short sentence (latency), the 24 mixed sentences of
:data:`minilm_npu.samples.MIXED_24` at batch 1 and batch 32, and the 3,000 STS-B dev sentences at batch 32. The
engines take turns on every workload (timing through :func:`minilm_npu.verify.bench.time_calls`), so a busy machine
slows them alike; the verdicts are same-run ratios. The short sentence is a latency: each engine's median call,
over several alternating passes; the other workloads are mean times per round. The load average is printed at the
start and the end (the machine may be shared). Quality is checked on the same run: float32 within 1e-5 of
sentence-transformers, bfloat16 minimum cosine >= 0.999, int8 minimum cosine >= 0.99 and STS-B Spearman drop
<= 0.005.

It also measures what the machine allows (best linear-layer rate per dtype and memory bandwidth) and prints, per
target, the *ceiling*: the ratio an engine doing nothing but its real tokens' GEMMs at that rate (or reading its
weights once per forward pass, if longer) would reach against the peer.

Usage: ``python benchmarks/bench_engine.py [--device cpu] [--dtypes float32,int8] [--workers 2] [--quick]
[--model-path DIR] [--variant NAME=VALUE] [--json out.json]``
Needs the ``bench`` extra for the ONNX Runtime and OpenVINO columns: ``pip install 'minilm-npu[bench]'``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from minilm_npu.devices import child_process_context, describe, parse_devices, synchronize  # noqa: E402
from minilm_npu.engine.cpu_kernels import cap_summary, isa_summary, kernel_plan, onednn_isa  # noqa: E402
from minilm_npu.engine.policy import cpu_has_native_bfloat16, dtype_unsupported_reason  # noqa: E402
from minilm_npu.samples import MIXED_24, SHORT_SENTENCE  # noqa: E402
from minilm_npu.verify.accuracy import load_sts, row_cosines, spearman  # noqa: E402
from minilm_npu.verify.bench import time_calls  # noqa: E402
from minilm_npu.verify.environment import cpu_model  # noqa: E402

DEFAULT_STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb-dev.tsv"
ONNX_CACHE = Path(__file__).resolve().parent / ".onnx-cache"
BASELINE = "sentence-transformers float32"
ORT = "onnxruntime"
OPENVINO = "openvino"
OURS = "minilm-npu packed"
BEST_PEER = "best peer"
#: The fastest peer that is exact (float32: sentence-transformers, ONNX Runtime, OpenVINO).
BEST_EXACT = "best exact peer"
SHORT, MIXED_1, MIXED_32, STSB = ("1 short sentence, batch 1", "24 mixed, batch 1", "24 mixed, batch 32", "STS-B dev")

#: Issue 12's same-run targets: (workload prefix, our dtype, peer engine, minimum ratio of the peer's time to ours).
#: The peer of an int8 target is ONNX Runtime's int8 export, which misses our int8 quality bound (its min cosine is
#: under 0.99): beating its time at our quality is the point. bfloat16 is timed only where the CPU has bfloat16
#: hardware, against OpenVINO's bfloat16.
TARGETS = [
    (SHORT, "float32", f"{ORT} float32", 1.0),
    (SHORT, "bfloat16", f"{OPENVINO} bfloat16", 1.0),
    (SHORT, "int8", f"{ORT} int8", 1.25),
    (MIXED_1, "float32", BEST_EXACT, 1.0),
    (MIXED_1, "bfloat16", f"{OPENVINO} bfloat16", 1.0),
    (MIXED_1, "int8", f"{ORT} int8", 1.0),
    (MIXED_32, "float32", BEST_PEER, 4.0),
    (MIXED_32, "bfloat16", BEST_PEER, 1.0),
    (MIXED_32, "int8", BEST_PEER, 4.0),
    (STSB, "float32", BEST_EXACT, 1.25),
    (STSB, "bfloat16", f"{OPENVINO} bfloat16", 1.0),
    (STSB, "int8", f"{ORT} int8", 1.2),
]
#: Quality bounds: float32 max |difference| from sentence-transformers; bfloat16 min cosine; int8 min cosine and
#: STS-B Spearman drop.
FLOAT32_MAX_ABS, BFLOAT16_MIN_COSINE, INT8_MIN_COSINE, INT8_MAX_SPEARMAN_DROP = 1e-5, 0.999, 0.99, 0.005
BENCH_EXTRA_MISSING = (
    "the ONNX Runtime and OpenVINO columns need the 'bench' extra: pip install 'minilm-npu[bench]' "
    "(onnxruntime, onnx, openvino); or pass --no-onnxruntime to time without them"
)


# -- the engines, one process each ---------------------------------------------------------------------------


def _ort_encoder(onnx_path: str, model_dir: str):
    """``(texts, batch_size) -> unit vectors`` through ONNX Runtime, tokenized and pooled as fastembed does."""
    import onnxruntime

    from minilm_npu.modelfiles import resolve_model
    from minilm_npu.tokenization import Tokenizer

    tokenizer = Tokenizer(resolve_model(model_dir))
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])

    def encode(texts: list[str], batch_size: int) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            ids, mask = _padded(tokenizer.encode(texts[start : start + batch_size]))
            hidden = session.run(
                None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            )[0]
            out.append(_mean_pool(hidden, mask))
        return np.concatenate(out)

    return encode


def _openvino_encoder(onnx_path: str, model_dir: str, precision: str):
    """``(texts, batch_size) -> unit vectors`` through OpenVINO's CPU plugin on the same ONNX file as the ONNX
    Runtime peer, tokenized, padded and pooled as it is."""
    import openvino

    from minilm_npu.modelfiles import resolve_model
    from minilm_npu.tokenization import Tokenizer

    tokenizer = Tokenizer(resolve_model(model_dir))
    hint = {"float32": "f32", "bfloat16": "bf16"}[precision]
    compiled = openvino.Core().compile_model(
        onnx_path, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
    )
    request = compiled.create_infer_request()

    def encode(texts: list[str], batch_size: int) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            ids, mask = _padded(tokenizer.encode(texts[start : start + batch_size]))
            request.infer({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
            out.append(_mean_pool(request.get_output_tensor(0).data, mask))
        return np.concatenate(out)

    return encode


def _padded(batch: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids padded to the batch's longest, and their attention mask (int64, as the exported graph takes)."""
    width = max(len(ids) for ids in batch)
    ids = np.zeros((len(batch), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, seq in enumerate(batch):
        ids[row, : len(seq)], mask[row, : len(seq)] = seq, 1
    return ids, mask


def _mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Masked mean pooling, then L2 normalisation (as sentence-transformers and fastembed do)."""
    pooled = (hidden * mask[..., None]).sum(1) / np.clip(mask.sum(1, keepdims=True), 1e-9, None)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def _make_encoder(kind: str, model_dir: str, device: str, option: str):
    if kind == "st":
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(model_dir, device=device)
        return lambda texts, bs: st.encode(texts, batch_size=bs, convert_to_numpy=True, normalize_embeddings=True)
    if kind == "ort":
        return _ort_encoder(option, model_dir)
    if kind == "openvino":
        path, precision = option.rsplit("|", 1)
        return _openvino_encoder(path, model_dir, precision)
    from minilm_npu import MiniLMEncoder

    encoder = MiniLMEncoder(model_path=model_dir, device=device, dtype=option, backend="packed")
    return lambda texts, bs: encoder.encode(texts, batch_size=bs)


def _engine_child(conn, kind: str, model_dir: str, device: str, option: str, env: dict[str, str]) -> None:
    """Child process: build one engine (with ``env`` added to its environment), then time or embed whatever the
    parent asks for."""
    os.environ.update(env)
    encode = _make_encoder(kind, model_dir, device, option)
    target = parse_devices(device)[0]
    conn.send("ready")
    while (request := conn.recv()) is not None:
        if request[0] == "embed":
            _, texts, batch_size = request
            conn.send(np.asarray(encode(texts, batch_size), dtype=np.float32))
        else:
            _, texts, batch_size, warmup, rounds, statistic = request
            stats = time_calls(
                lambda batch, _, size=batch_size: encode(batch, size),
                lambda: synchronize(target),
                texts,
                warmup,
                rounds,
            )
            conn.send(stats[statistic] / 1e3)


class EngineProcess:
    """One engine in a fresh child interpreter, as its users run it; the parent only sends work and reads times."""

    def __init__(
        self,
        label: str,
        kind: str,
        model_dir: str,
        device: torch.device,
        option: str = "",
        env: dict[str, str] | None = None,
    ):
        context = child_process_context()  # spawn: a forked child cannot use the parent's NPU (or CUDA) runtime
        self.label = label
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_engine_child, args=(child, kind, model_dir, str(device), option, env or {}), daemon=True
        )
        self.process.start()
        if self.conn.recv() != "ready":
            raise RuntimeError(f"the {label} process did not start")

    def time(
        self,
        texts: list[str],
        batch_size: int,
        device: torch.device,
        warmup: int,
        rounds: int,
        statistic: str = "mean_ms",
    ) -> float:
        """Seconds of one round (all of ``texts`` at ``batch_size``) over ``rounds`` after ``warmup``: the mean, or
        another statistic of :func:`~minilm_npu.verify.bench.time_calls` (``"p50_ms"``: the median)."""
        self.conn.send(("time", texts, batch_size, warmup, rounds, statistic))
        return self.conn.recv()

    def embed(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Unit vectors of ``texts``."""
        self.conn.send(("embed", texts, batch_size))
        return self.conn.recv()

    def pause(self) -> None:
        """Stop the process while another engine is timed: idle thread pools (ONNX Runtime's spin after every
        run) would otherwise take cores from it. Measured: with two ONNX Runtime processes left running, our
        float32 STS-B rate fell from 1.3x sentence-transformers' to 0.2x on a 2-core machine."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def close(self) -> None:
        self.conn.send(None)
        self.process.join(timeout=30)


def onnx_models(model_dir: str, cache: Path = ONNX_CACHE) -> dict[str, Path]:
    """The float32 and int8 ONNX files of the model, exported once and then read from ``cache``.

    Raises:
        SystemExit: the ``bench`` extra (onnx, onnxruntime) is not installed.
    """
    try:
        import onnx  # noqa: F401 - torch.onnx.export needs it
        import onnxruntime
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        sys.exit(f"error: {BENCH_EXTRA_MISSING}")
    weights = Path(model_dir) / "model.safetensors"  # a directory rebuilt under the same name gets new files
    stamp = f"{weights.stat().st_size}-{weights.stat().st_mtime_ns}" if weights.is_file() else "0"
    tag = f"{Path(model_dir).name}-{stamp}-torch{torch.__version__.split('+')[0]}-ort{onnxruntime.__version__}"
    paths = {"float32": cache / f"{tag}-float32.onnx", "int8": cache / f"{tag}-int8-avx512_vnni.onnx"}
    cache.mkdir(parents=True, exist_ok=True)
    if not paths["float32"].is_file():
        print("-- exporting the ONNX model (once)", file=sys.stderr, flush=True)
        export_onnx(model_dir, paths["float32"])
    if not paths["int8"].is_file():
        # optimum's AutoQuantizationConfig.avx512_vnni(is_static=False), as sentence-transformers' export uses it.
        partial = paths["int8"].with_suffix(".partial")
        quantize_dynamic(
            paths["float32"],
            partial,
            op_types_to_quantize=["MatMul", "Add"],
            per_channel=True,
            reduce_range=False,
            weight_type=QuantType.QInt8,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
        partial.replace(paths["int8"])
    return paths


def export_onnx(model_dir: str, path: Path) -> None:
    """The transformer (token embeddings out) with dynamic batch and length axes, legacy TorchScript exporter."""
    from transformers import AutoModel

    class LastHidden(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    model = LastHidden(AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval())
    ids = torch.tensor([[101, 7592, 2088, 102]])
    names = ["input_ids", "attention_mask", "token_type_ids"]
    partial = path.with_suffix(".partial")
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            model,
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(partial),
            input_names=names,
            output_names=["last_hidden_state"],
            opset_version=17,
            dynamo=False,
            dynamic_axes={name: {0: "batch", 1: "sequence"} for name in names + ["last_hidden_state"]},
        )
    partial.replace(path)


def openvino_precisions(native_bfloat16: bool) -> list[str]:
    """The OpenVINO peers to time: none without ``openvino``; float32, and bfloat16 where the CPU has bfloat16
    hardware (elsewhere its bf16 hint falls back to f32: the same engine twice)."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return []
    return ["float32", "bfloat16"] if native_bfloat16 else ["float32"]


def start_engines(
    device: torch.device,
    dtypes: list[str],
    model_dir: str,
    with_ort: bool,
    workers: int = 1,
    variants: list[str] = (),
) -> list[EngineProcess]:
    """sentence-transformers, ONNX Runtime float32 and int8 and OpenVINO (CPU), then our engine per dtype (with
    ``workers`` workers on ``device``, e.g. ``cpu,cpu``: the cores split between two model copies), then our engine
    per dtype again for each ``NAME=VALUE`` of ``variants``, with that setting in its environment (a before/after in
    one run, e.g. ``MINILM_NPU_TOKEN_GEARS=0`` or ``MINILM_NPU_QUERY_ENGINE=off``)."""
    found = [EngineProcess(BASELINE, "st", model_dir, device)]
    if with_ort:
        paths = onnx_models(model_dir)
        for dtype, path in paths.items():
            found.append(EngineProcess(f"{ORT} {dtype}", "ort", model_dir, device, str(path)))
        for precision in openvino_precisions(cpu_has_native_bfloat16()):
            option = f"{paths['float32']}|{precision}"
            found.append(EngineProcess(f"{OPENVINO} {precision}", "openvino", model_dir, device, option))
    ours_device = ",".join([str(device)] * workers)
    found += [EngineProcess(f"{OURS} {dtype}", "ours", model_dir, ours_device, dtype) for dtype in dtypes]
    for variant in variants:
        name, _, value = variant.partition("=")
        found += [
            EngineProcess(f"{OURS} {dtype} {variant}", "ours", model_dir, ours_device, dtype, {name: value})
            for dtype in dtypes
        ]
    return found


def time_interleaved(
    engine_list: list,
    texts: list[str],
    batch_size: int,
    device: torch.device,
    warmup: int,
    rounds: int,
    passes: int = 2,
    statistic: str = "mean_ms",
) -> list[float]:
    """Seconds per engine: warm-up once, then ``rounds`` timed rounds split into ``passes`` turns in which the
    engines take turns, so a machine that slows down or speeds up meanwhile affects them all alike. The engines
    not on turn are paused (SIGSTOP) so that none of their threads competes with the one being timed. The result
    is the mean; with ``statistic="p50_ms"`` the median of each turn's median call (a latency on a shared
    machine)."""
    chunks = [rounds // passes + (1 if k < rounds % passes else 0) for k in range(min(passes, rounds))]
    times: list[list[float]] = [[] for _ in engine_list]
    for turn, chunk in enumerate(chunks):
        for index, engine in enumerate(engine_list):
            others = [e for e in engine_list if e is not engine and hasattr(e, "pause")]
            for other in others:
                other.pause()
            try:
                warm = warmup if turn == 0 else 0
                if statistic == "mean_ms":
                    times[index].append(engine.time(texts, batch_size, device, warm, chunk))
                else:
                    times[index].append(engine.time(texts, batch_size, device, warm, chunk, statistic))
            finally:
                for other in others:
                    other.resume()
    if statistic == "mean_ms":
        return [sum(c * t for c, t in zip(chunks, found)) / rounds for found in times]
    return [float(np.median(found)) for found in times]


# -- what the machine allows ---------------------------------------------------------------------------------


def machine_limits(device: torch.device, dtypes: list[str]) -> dict:
    """Best measured linear-layer rate per dtype (operations/s) and memory read bandwidth (bytes/s)."""
    import torch.nn.functional as F

    from minilm_npu.engine.cpu_linears import Int8Linear, OneDnnLinear, onednn_linear_supported

    def best_seconds(fn, tries: int) -> float:
        return (
            min(time_calls(lambda *_: fn(), lambda: synchronize(device), [], 1, 1)["mean_ms"] for _ in range(tries))
            / 1e3
        )

    m, k, n = 2048, 384, 1536
    x = torch.randn(m, k, device=device)
    weight, bias = torch.randn(n, k, device=device) * 0.05, torch.zeros(n, device=device)
    rates = {}
    for dtype in dtypes:
        candidates = []
        if dtype == "int8":
            candidates.append(Int8Linear(weight, bias))
        else:
            torch_dtype = getattr(torch, dtype)
            w, b = weight.to(torch_dtype), bias.to(torch_dtype)
            candidates.append(lambda a, w=w, b=b: F.linear(a, w, b))
            if dtype == "float32" and device.type == "cpu" and onednn_linear_supported():
                candidates.append(OneDnnLinear(weight, bias))
        a = x if dtype == "int8" else x.to(getattr(torch, dtype))
        rates[dtype] = 2 * m * k * n / min(best_seconds(lambda f=f, a=a: f(a), 20) for f in candidates)
    big = torch.ones(64 << 20, device=device)  # 256 MiB: far larger than any cache
    return {"ops_per_s": rates, "bandwidth_bytes_per_s": big.numel() * 4 / best_seconds(big.sum, 5)}


def best_limits(*measured: dict) -> dict:
    """The best of several :func:`machine_limits` (a shared machine's dips are not its limits)."""
    return {
        "ops_per_s": {dtype: max(m["ops_per_s"][dtype] for m in measured) for dtype in measured[0]["ops_per_s"]},
        "bandwidth_bytes_per_s": max(m["bandwidth_bytes_per_s"] for m in measured),
    }


def real_work(lengths: list[int], config) -> float:
    """FLOPs the real tokens of sequences of these lengths need (linear layers + attention scores and mixing)."""
    h, i = config.hidden_size, config.intermediate_size
    per_token = 2 * (4 * h * h + 2 * h * i)
    return config.num_layers * sum(length * per_token + 4 * length * length * h for length in lengths)


def weight_bytes(config, dtype: str) -> float:
    """Bytes of linear-layer weights one forward pass reads (int8 keeps the fused QKV in float32)."""
    h, i = config.hidden_size, config.intermediate_size
    if dtype == "int8":
        return config.num_layers * (3 * h * h * 4 + (h * h + 2 * h * i))
    return config.num_layers * (4 * h * h + 2 * h * i) * torch.finfo(getattr(torch, dtype)).bits // 8


# -- verdicts ------------------------------------------------------------------------------------------------


def verdicts(results: dict, workloads: dict, limits: dict, config) -> list[dict]:
    """Per target of :data:`TARGETS` whose engines ran: ratio (peer's time / ours), ceiling, target, verdict."""
    by = {(r["workload"], r["engine"]): r for r in results["rows"]}
    rows = []
    for workload in dict.fromkeys(r["workload"] for r in results["rows"]):
        for prefix, dtype, peer, target in TARGETS:
            ours = by.get((workload, f"{OURS} {dtype}"))
            if not workload.startswith(prefix) or ours is None:
                continue
            if peer in (BEST_PEER, BEST_EXACT):
                peers = [
                    r
                    for (w, e), r in by.items()
                    if w == workload and not e.startswith(OURS) and (peer == BEST_PEER or e.endswith("float32"))
                ]
                if not peers:
                    continue
                peer_row = min(peers, key=lambda r: r["latency_ms"])
            elif (workload, peer) in by:
                peer_row = by[(workload, peer)]
            else:
                continue
            lengths, forwards = workloads[workload]
            floor = max(
                real_work(lengths, config) / limits["ops_per_s"][dtype],
                forwards * weight_bytes(config, dtype) / limits["bandwidth_bytes_per_s"],
            )
            ratio = peer_row["latency_ms"] / ours["latency_ms"]
            # A ratio reached proves the ceiling is at least that high: on a shared VM a limit measured during a
            # burst of another guest's load can come out below what the engines then did, and then it proves
            # nothing about what is beyond the machine.
            estimate = peer_row["latency_ms"] / 1e3 / floor
            ceiling = max(estimate, ratio)
            verdict = "met" if ratio >= target else "beyond this machine" if ratio <= estimate < target else "not met"
            rows.append(
                {
                    "workload": workload,
                    "dtype": dtype,
                    "peer": peer_row["engine"],
                    "ratio": ratio,
                    "target": target,
                    "ceiling": ceiling,
                    "verdict": verdict,
                }
            )
    return rows


def quality(vectors: dict[str, dict[str, np.ndarray]], scores: np.ndarray | None) -> list[dict]:
    """Per engine against sentence-transformers: max |difference|, min cosine, STS-B Spearman and its drop.

    Args:
        vectors: engine label -> {"mixed": 24 mixed vectors, "sts": STS-B first column then second column}.
        scores: The STS-B gold scores (None when the file is absent).
    """

    def sts_spearman(sts: np.ndarray) -> float:
        half = len(sts) // 2
        return spearman((sts[:half] * sts[half:]).sum(1), scores)

    reference = vectors[BASELINE]
    reference_spearman = sts_spearman(reference["sts"]) if scores is not None else None
    rows = []
    for label, found in vectors.items():
        parts = [k for k in ("mixed", "sts") if k in found]
        diff = max(float(np.abs(found[k] - reference[k]).max()) for k in parts)
        cosine = min(float(row_cosines(found[k], reference[k]).min()) for k in parts)
        row = {"engine": label, "max_abs": diff, "min_cosine": cosine, "spearman": None, "spearman_drop": None}
        if scores is not None:
            row["spearman"] = sts_spearman(found["sts"])
            row["spearman_drop"] = reference_spearman - row["spearman"]
        bound = None
        if label == f"{OURS} float32":
            bound = diff <= FLOAT32_MAX_ABS
        elif label == f"{OURS} bfloat16":
            bound = cosine >= BFLOAT16_MIN_COSINE
        elif label == f"{OURS} int8":
            bound = cosine >= INT8_MIN_COSINE and (
                row["spearman_drop"] is None or row["spearman_drop"] <= INT8_MAX_SPEARMAN_DROP
            )
        row["within_bounds"] = bound
        rows.append(row)
    return rows


# -- the run -------------------------------------------------------------------------------------------------


BFLOAT16_NOT_APPLICABLE = (
    "bfloat16: not applicable on this CPU (no AVX512-BF16 or AMX: bfloat16 would be emulated, slower than float32)"
)


def query_plans(dtypes: list[str]) -> dict[str, str]:
    """Per dtype, where our engine runs calls of one sentence on this CPU (as ``minilm-npu check`` says)."""
    from minilm_npu.engine.query import QUERY_ENV, installed_runtimes, plan_query

    plans = {}
    for dtype in dtypes:
        plan = plan_query(dtype, cpu_has_native_bfloat16(), installed_runtimes(), os.environ.get(QUERY_ENV))
        plans[dtype] = f"{plan.runtime} ({plan.reason})" if plan.runtime else f"packed engine ({plan.reason})"
    return plans


def run(args: argparse.Namespace) -> dict:
    from minilm_npu.engine.bert import BertConfig
    from minilm_npu.modelfiles import resolve_model
    from minilm_npu.tokenization import Tokenizer

    device = parse_devices(args.device)[0]
    dtypes = [d for d in args.dtypes.split(",") if d]
    for dtype in dtypes:
        reason = dtype_unsupported_reason(device, dtype)
        if reason:
            sys.exit(f"error: {reason}")
    with_ort = device.type == "cpu" and not args.no_onnxruntime
    rounds = 3 if args.quick else 10
    first, second, scores = (
        load_sts(args.stsb, limit=300 if args.quick else None) if args.stsb.is_file() else ([], [], None)
    )
    corpus = first + second
    model_files = resolve_model(args.model_path)
    model_dir = str(model_files.directory)
    config = BertConfig.from_dict(model_files.config)
    tokenizer = Tokenizer(model_files)
    # (workload, texts, batch size, warm-up calls, timed calls or rounds); the short sentence is timed per call.
    runs = [
        (SHORT, [SHORT_SENTENCE], 1, 10, rounds * 12),
        (MIXED_1, MIXED_24, 1, 3, rounds),
        (MIXED_32, MIXED_24, 32, 3, rounds),
    ]
    if corpus:
        runs.append(
            (f"{STSB} {len(corpus):,} sentences, batch 32", corpus, 32, 0, 1 if args.quick else args.corpus_rounds)
        )
    # Per workload, for its ceiling: the real token lengths and how many forward passes it takes.
    workloads = {
        workload: ([len(ids) for ids in tokenizer.encode(texts)], -(-len(texts) // batch_size))
        for workload, texts, batch_size, _, _ in runs
    }
    results: dict = {
        "device": describe(device).name,
        "device_type": device.type,
        "cpu": cpu_model(),
        "isa": isa_summary(),
        "onednn": onednn_isa(),
        # ONEDNN_MAX_CPU_ISA / ATEN_CPU_CAPABILITY: a capped run measures an older CPU's kernels, and says so.
        "cap": cap_summary(),
        "kernels": kernel_plan() if device.type == "cpu" else {},
        "query": query_plans(dtypes) if device.type == "cpu" else {},
        "notes": [] if device.type != "cpu" or cpu_has_native_bfloat16() else [BFLOAT16_NOT_APPLICABLE],
        "load": {"start": os.getloadavg()},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "workers": args.workers,
        "machine": platform.platform(),
        "rows": [],
    }
    print("-- machine limits", file=sys.stderr, flush=True)
    limits_before = machine_limits(device, dtypes)
    engine_list = start_engines(device, dtypes, model_dir, with_ort, args.workers, args.variant)
    vectors: dict[str, dict[str, np.ndarray]] = {}
    try:
        for workload, texts, batch_size, warmup, count in runs:
            print(f"-- {workload}", file=sys.stderr, flush=True)
            latency = workload == SHORT
            seconds = time_interleaved(
                engine_list,
                texts,
                batch_size,
                device,
                warmup,
                count,
                passes=4 if latency else 2,
                statistic="p50_ms" if latency else "mean_ms",
            )
            for engine, mean in zip(engine_list, seconds):
                results["rows"].append(
                    {
                        "engine": engine.label,
                        "workload": workload,
                        "sentences_per_s": len(texts) / mean,
                        "latency_ms": mean * 1e3,
                    }
                )
        print("-- quality", file=sys.stderr, flush=True)
        for engine in engine_list:
            vectors[engine.label] = {"mixed": engine.embed(MIXED_24, 32)}
            if corpus:
                vectors[engine.label]["sts"] = engine.embed(corpus, 32)
    finally:
        for engine in engine_list:
            engine.close()
    results["load"]["end"] = os.getloadavg()
    print("-- machine limits again", file=sys.stderr, flush=True)
    results["limits"] = best_limits(limits_before, machine_limits(device, dtypes))
    results["verdicts"] = verdicts(results, workloads, results["limits"], config)
    results["quality"] = quality(vectors, scores if corpus else None)
    return results


def _short_label(engine: str) -> str:
    return (
        engine.replace("sentence-transformers", "ST torch")
        .replace(OURS, "ours")
        .replace(ORT, "ORT")
        .replace("float32", "fp32")
    )


def markdown(results: dict) -> str:
    """The report: engines side by side per workload, then the targets' verdicts, then quality."""
    engines = list(dict.fromkeys(r["engine"] for r in results["rows"]))
    by = {(r["workload"], r["engine"]): r for r in results["rows"]}
    lines = [
        f"CPU: {results['cpu']}; ISA: {results['isa']}"
        + (f"; oneDNN runs {results['onednn']}" if results.get("onednn") else ""),
        *([f"Capped: {results['cap']}"] if results.get("cap") else []),
        f"Device: {results['device']} ({results['threads']} threads), torch {results['torch']}, {results['machine']}",
    ]
    if results.get("workers", 1) > 1:
        lines.append(f"Ours: {results['workers']} workers on the device, the cores split between them")
    lines += [f"Kernels picked ({dtype}): {kernel}" for dtype, kernel in results.get("kernels", {}).items()]
    lines += [f"One-sentence calls ({dtype}): {plan}" for dtype, plan in results.get("query", {}).items()]
    lines += results.get("notes", [])
    if "load" in results:
        load = results["load"]
        lines.append(
            "Load average (1/5/15 min): "
            + "; ".join(
                f"{when} {' '.join(f'{v:.1f}' for v in load[when])}" for when in ("start", "end") if when in load
            )
        )
    lines += [
        "",
        "Sentences/s (the short sentence: median latency in ms), each engine in its own process, turns interleaved:",
        "",
        "| workload | " + " | ".join(_short_label(e) for e in engines) + " |",
        "| --- |" + " ---: |" * len(engines),
    ]
    for workload in dict.fromkeys(r["workload"] for r in results["rows"]):
        cells = []
        for engine in engines:
            row = by.get((workload, engine))
            cells.append(
                ""
                if row is None
                else f"{row['latency_ms']:,.2f} ms"
                if workload == SHORT
                else f"{row['sentences_per_s']:,.0f}"
            )
        lines.append(f"| {workload} | " + " | ".join(cells) + " |")
    limits = results["limits"]
    rates = ", ".join(
        f"{dtype} {rate / 1e9:,.0f} G{'OP' if dtype == 'int8' else 'FLOP'}/s"
        for dtype, rate in limits["ops_per_s"].items()
    )
    lines += [
        "",
        f"What this machine allows (best of before and after the runs): linear-layer rate {rates}; memory "
        f"read {limits['bandwidth_bytes_per_s'] / 1e9:,.1f} GB/s. Ratio = peer's time / ours; ceiling = peer's "
        "time / the time of our real tokens' GEMMs at that rate (or of reading the weights once per forward "
        "pass, if longer).",
        "",
        "| workload | ours | against | ratio | target | ceiling | verdict |",
        "| --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for row in results["verdicts"]:
        # A row that stays short says by how much: the share of the target's ratio it lacks.
        short = "" if row["verdict"] == "met" else f" ({(1 - row['ratio'] / row['target']) * 100:.0f} % short)"
        lines.append(
            f"| {row['workload']} | {row['dtype']} | {_short_label(row['peer'])} | {row['ratio']:.2f}x | "
            f">= {row['target']:g}x | {row['ceiling']:.1f}x | {row['verdict']}{short} |"
        )
    lines += [
        "",
        f"Quality against sentence-transformers (24 mixed + STS-B sentences; bounds: float32 max abs <= "
        f"{FLOAT32_MAX_ABS:g}, int8 min cosine >= {INT8_MIN_COSINE}, Spearman drop <= "
        f"{INT8_MAX_SPEARMAN_DROP}):",
        "",
        "| engine | max abs | min cosine | STS-B Spearman | drop | bounds |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in results["quality"]:
        spear = "" if row["spearman"] is None else f"{row['spearman']:.4f}"
        drop = "" if row["spearman_drop"] is None else f"{row['spearman_drop']:+.4f}"
        bound = {True: "within", False: "OUTSIDE", None: ""}[row["within_bounds"]]
        lines.append(
            f"| {_short_label(row['engine'])} | {row['max_abs']:.1e} | {row['min_cosine']:.4f} | {spear} | "
            f"{drop} | {bound} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="one device: cpu, cuda:0, npu:0 (default: cpu)")
    parser.add_argument(
        "--dtypes",
        default=None,
        help="comma-separated (default on a CPU: float32,int8, and bfloat16 where it has bfloat16 hardware; "
        "float32,float16,bfloat16 elsewhere)",
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds, 600 STS-B sentences, 1 corpus round")
    parser.add_argument("--stsb", type=Path, default=DEFAULT_STSB, help="stsb-dev.tsv (skipped when absent)")
    parser.add_argument("--corpus-rounds", type=int, default=2, help="timed rounds of the STS-B run")
    parser.add_argument("--no-onnxruntime", action="store_true", help="leave out the ONNX Runtime columns")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="our engine's workers on the device (2 on a CPU: device 'cpu,cpu', the cores split "
        "between two model copies; the peers run as their users run them)",
    )
    parser.add_argument(
        "--model-path",
        default=None,
        help="a sentence-transformers model directory (default: the bundled all-MiniLM-L6-v2); the ONNX Runtime "
        "peers mean-pool and normalise, so give a model that does",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="also run our engine with this environment setting (repeatable), e.g. MINILM_NPU_TOKEN_GEARS=0",
    )
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, not {args.workers}")
    for variant in args.variant:
        if not variant.partition("=")[0] or "=" not in variant:
            parser.error(f"--variant takes NAME=VALUE, not {variant!r}")
    if args.dtypes is None:
        args.dtypes = (
            ("float32,bfloat16,int8" if cpu_has_native_bfloat16() else "float32,int8")
            if parse_devices(args.device)[0].type == "cpu"
            else "float32,float16,bfloat16"
        )
    if parse_devices(args.device)[0].type == "cpu" and not args.no_onnxruntime:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            sys.exit(f"error: {BENCH_EXTRA_MISSING}")
    results = run(args)
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
