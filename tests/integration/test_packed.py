"""The packed engine against sentence-transformers and the reference backend, in every dtype this CPU runs."""

from __future__ import annotations

import csv
import dataclasses
import sys
import threading

import numpy as np
import pytest
import torch

from minilm_npu import MiniLMEncoder
from minilm_npu.engine.cpu_execution import use_threads
from minilm_npu.errors import InputError
from minilm_npu.samples import MIXED_24
from minilm_npu.verify.accuracy import spearman
from tests import texts

STSB_REFERENCE_SPEARMAN = 0.8672
COSINE_BOUNDS = {"bfloat16": 0.999, "int8": 0.99}


@pytest.fixture(scope="module")
def packed32():
    return MiniLMEncoder(device="cpu", backend="packed")


@pytest.fixture(scope="module")
def stsb(stsb_path):
    with open(stsb_path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    pairs = [(r["sentence1"], r["sentence2"]) for r in rows]
    gold = np.array([float(r["score"]) for r in rows])
    sentences = sorted({s for pair in pairs for s in pair})  # each distinct sentence is encoded once
    return pairs, gold, sentences


def stsb_spearman(encoder: MiniLMEncoder, stsb) -> tuple[float, np.ndarray]:
    pairs, gold, sentences = stsb
    vectors = encoder.encode(sentences, batch_size=64)
    index = {s: i for i, s in enumerate(sentences)}
    a = vectors[[index[p[0]] for p in pairs]]
    b = vectors[[index[p[1]] for p in pairs]]
    return spearman((a * b).sum(axis=1), gold), vectors


@pytest.fixture(scope="module")
def stsb_float32(packed32, stsb):
    return stsb_spearman(packed32, stsb)


def test_spearman_helper():
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([10.0, 20, 30, 45])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2, 2, 4]), np.array([4.0, 3, 3, 1])) == pytest.approx(-1.0)


@pytest.mark.isa
@pytest.mark.parametrize("name", ["SHORT", "CHINESE", "FRENCH", "EMOJI", "EMPTYISH", "MEDIUM", "LONG"])
def test_float32_equals_sentence_transformers_and_reference(name, packed32, st_model, reference_encoder):
    batch = getattr(texts, name)
    ours = packed32.encode(batch)
    assert np.abs(ours - st_model.encode(batch)).max() <= 1e-5
    assert np.abs(ours - reference_encoder.encode(batch)).max() <= 1e-5


@pytest.mark.isa
def test_mixed_24_equals_sentence_transformers(packed32, st_model):
    assert np.abs(packed32.encode(MIXED_24) - st_model.encode(MIXED_24)).max() <= 1e-5


@pytest.mark.isa
def test_batch_invariance_and_order(packed32):
    batch = texts.ALL + MIXED_24
    together = packed32.encode(batch)
    alone = np.stack([packed32.encode(text) for text in batch])
    assert np.abs(together - alone).max() <= 1e-6
    reversed_rows = packed32.encode(batch[::-1], batch_size=5)
    assert np.abs(reversed_rows[::-1] - together).max() <= 1e-6


def test_cls_pooling_matches_reference(packed32):
    from minilm_npu.engine.packed import PackedBackend
    from minilm_npu.engine.reference import TransformersBackend

    cls_files = dataclasses.replace(packed32.model_files, pooling_modes=("cls",))
    ids = packed32.tokenize(texts.SHORT + texts.MEDIUM)
    ours = PackedBackend(cls_files, torch.device("cpu"), "float32").embed(ids)
    reference = TransformersBackend(cls_files, torch.device("cpu"), "float32").embed(ids)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_two_cpu_workers_give_the_same_output(packed32):
    batch = texts.ALL + MIXED_24
    two = MiniLMEncoder(device="cpu,cpu", backend="packed")
    assert len(two.devices) == 2
    # Within float noise, not bit for bit: each forward's thread count follows the machine's load
    # (AdaptiveThreads), and oneDNN's summation order may follow the thread count (~6e-8).
    np.testing.assert_allclose(two.encode(batch, batch_size=4), packed32.encode(batch, batch_size=4), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_cpu_lanes_share_one_model_and_give_the_same_output(dtype, monkeypatch, packed32, st_model):
    """A multi-batch call on one CPU runs on two lanes sharing the model (CpuExecution.side_by_side): the same
    vectors as one batch after another, in input order, float32 within 1e-5 of sentence-transformers."""
    encoder = packed32 if dtype == "float32" else MiniLMEncoder(device="cpu", backend="packed", dtype=dtype)
    batch = (texts.ALL + MIXED_24) * 3
    threads, lanes_used = set(), []
    embed = type(encoder.workers[0].backend).embed
    side_by_side = encoder.execution.side_by_side

    def spy(self, ids):
        threads.add(threading.get_ident())
        return embed(self, ids)

    def counting_lanes(*args):
        lanes_used.extend(lanes := side_by_side(*args))
        return lanes

    monkeypatch.setattr(type(encoder.workers[0].backend), "embed", spy)
    with use_threads(2):
        monkeypatch.setattr(encoder.execution, "side_by_side", lambda *args: [])
        one_by_one = encoder.encode(batch, batch_size=4)
        monkeypatch.setattr(encoder.execution, "side_by_side", counting_lanes)
        threads.clear()
        on_lanes = encoder.encode(batch, batch_size=4)
    assert len(lanes_used) == 2 and len(threads) == 2
    np.testing.assert_allclose(on_lanes, one_by_one, atol=1e-6, rtol=0)
    if dtype == "float32":
        np.testing.assert_allclose(on_lanes, st_model.encode(batch, normalize_embeddings=True), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_float32_stsb_spearman(stsb_float32):
    # Exact float32 scores what sentence-transformers scores, to four decimals.
    assert abs(stsb_float32[0] - STSB_REFERENCE_SPEARMAN) <= 0.00005


@pytest.mark.isa
@pytest.mark.parametrize("dtype", ["int8", "bfloat16"])
def test_reduced_precision_cosine(dtype, packed32):
    """The quality bound of each reduced precision, on the kernels this CPU (or its cap) runs: int8 per-token
    quantization on VNNI/AMX or vpmaddubsw, bfloat16 native or emulated through float32."""
    encoder = MiniLMEncoder(device="cpu", backend="packed", dtype=dtype)
    batch = texts.ALL + MIXED_24
    cosine = (encoder.encode(batch) * packed32.encode(batch)).sum(axis=1)
    assert cosine.min() >= COSINE_BOUNDS[dtype]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["int8", "bfloat16"])
def test_reduced_precision_stsb(dtype, packed32, stsb, stsb_float32):
    encoder = MiniLMEncoder(device="cpu", backend="packed", dtype=dtype)
    if dtype == "bfloat16":
        # bfloat16 is emulated on CPUs without AVX512-BF16/AMX (several times slower): a 500-sentence slice of
        # STS-B keeps the test quick; the full set runs for float32 and int8.
        stsb = stsb[0][:250], stsb[1][:250], sorted({s for p in stsb[0][:250] for s in p})
        reference = spearman(*_pair_scores(packed32, stsb))
        assert abs(spearman(*_pair_scores(encoder, stsb)) - reference) <= 0.005
        return
    score, vectors = stsb_spearman(encoder, stsb)
    assert abs(score - STSB_REFERENCE_SPEARMAN) <= 0.005
    assert abs(score - stsb_float32[0]) <= 0.005
    assert ((vectors * stsb_float32[1]).sum(axis=1)).min() >= COSINE_BOUNDS[dtype]


def _pair_scores(encoder: MiniLMEncoder, stsb) -> tuple[np.ndarray, np.ndarray]:
    pairs, gold, sentences = stsb
    vectors = encoder.encode(sentences)
    index = {s: i for i, s in enumerate(sentences)}
    cosine = (vectors[[index[p[0]] for p in pairs]] * vectors[[index[p[1]] for p in pairs]]).sum(axis=1)
    return cosine, gold


def test_bad_dtype_device_combinations_fail_clearly(packed32):
    from minilm_npu.engine.packed import PackedBackend

    with pytest.raises(InputError, match="float16.*accelerators"):
        MiniLMEncoder(device="cpu", backend="packed", dtype="float16")
    with pytest.raises(InputError, match="int8.*CPU only"):
        PackedBackend(packed32.model_files, torch.device("cuda", 0), "int8")
    with pytest.raises(InputError, match="int8 needs the packed backend"):
        MiniLMEncoder(device="cpu", backend="transformers", dtype="int8")
    with pytest.raises(InputError, match="unknown dtype"):
        MiniLMEncoder(device="cpu", backend="packed", dtype="float8")


@pytest.mark.isa
@pytest.mark.parametrize("strategy,gears", [("per_sequence", False), ("padded", False), ("padded", True)])
def test_every_attention_strategy_is_exact(strategy, gears, packed32, st_model):
    """The accelerator strategies (one padded block; static-shape gears as on Ascend) run here on the CPU too."""
    from minilm_npu.engine.packed import PackedBackend
    from minilm_npu.engine.policy import AttentionPlan, round_to_gear, round_to_power_of_two

    plan = (
        AttentionPlan(strategy, gears=round_to_gear, row_gears=round_to_power_of_two)
        if gears
        else AttentionPlan(strategy)
    )
    backend = PackedBackend(packed32.model_files, torch.device("cpu"), "float32", attention=plan)
    batch = texts.ALL + MIXED_24
    pooled = torch.cat([backend.embed(packed32.tokenize(batch[i : i + 16])) for i in range(0, len(batch), 16)])
    ours = torch.nn.functional.normalize(pooled, dim=1).numpy()
    np.testing.assert_allclose(ours, st_model.encode(batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("strategy", ["bucketed", "per_sequence", "padded"])
def test_token_gear_padding_never_reaches_a_result(strategy, packed32):
    """The CPU rounds each forward's token count up (policy.round_tokens_to_gear); here 37 padding rows, more than
    any gear adds, must change neither pooled vectors nor token states, for a batch and for one sequence."""
    from minilm_npu.engine.packed import PackedBackend
    from minilm_npu.engine.policy import AttentionPlan

    cpu = torch.device("cpu")
    exact = PackedBackend(packed32.model_files, cpu, "float32", attention=AttentionPlan(strategy))
    padded = PackedBackend(
        packed32.model_files, cpu, "float32", attention=AttentionPlan(strategy, token_gears=lambda n: n + 37)
    )
    for batch in (packed32.tokenize(texts.ALL), packed32.tokenize(["A man is playing a guitar."])):
        # Float32 GEMMs over another row count may sum in another order: last-bit noise, far below 1e-6.
        torch.testing.assert_close(padded.embed(batch), exact.embed(batch), atol=1e-6, rtol=0)
        for ours, reference in zip(padded.token_embeddings(batch), exact.token_embeddings(batch), strict=True):
            torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


LINEAR_NAMES = ("qkv", "attn_out", "ffn_in", "ffn_out")


def test_cpu_float_layers_use_prepacked_onednn_weights(packed32):
    from minilm_npu.engine.cpu_linears import OneDnnLinear, onednn_linear_supported

    if not onednn_linear_supported():
        pytest.skip("this torch build has no oneDNN")
    layers = packed32.workers[0].backend.model.layers
    assert all(isinstance(getattr(layer, name), OneDnnLinear) for layer in layers for name in LINEAR_NAMES)


#: /proc/cpuinfo flags of an AMX Xeon (Sapphire Rapids): what the engine decides from when it believes it runs on one.
AMX_XEON = frozenset(
    "sse4_1 sse4_2 avx avx2 fma avx_vnni avx512f avx512bw avx512vl avx512dq avx512_vnni avx512_bf16 avx512_fp16 "
    "amx_tile amx_int8 amx_bf16".split()
)


@pytest.mark.isa
@pytest.mark.parametrize(
    "flags, cap, qkv",
    [(None, None, "any"), (AMX_XEON, "AVX2", "float32"), (AMX_XEON, "AVX512_CORE_BF16", "bfloat16")],
    ids=["this-cpu", "amx-xeon-capped-avx2", "amx-xeon-capped-bf16"],
)
def test_int8_engine_layers_follow_the_cpu(monkeypatch, packed32, flags, cap, qkv):
    """int8: QKV in bfloat16 where oneDNN runs bfloat16 instructions (the CPU's flags within ONEDNN_MAX_CPU_ISA),
    else float32; the rest int8; the int8 quality bound either way. The AMX Xeon cases make the engine decide
    from that CPU's flags: capped to AVX2 it must not take the bfloat16 path (oneDNN refuses its weight reorder
    there); uncapped to bfloat16 it does, which this CPU runs only where its own oneDNN takes bfloat16."""
    from minilm_npu.engine import cpu_kernels
    from minilm_npu.engine.cpu_linears import Bfloat16Linear, Int8Linear, OneDnnLinear, onednn_linear_supported

    if not onednn_linear_supported():
        pytest.skip("this torch build has no oneDNN")
    if qkv == "bfloat16" and not cpu_kernels.onednn_bfloat16_supported():
        pytest.skip(
            f"oneDNN runs {cpu_kernels.onednn_isa()} here (flags: {cpu_kernels.isa_summary()}; "
            f"cap: {cpu_kernels.onednn_cap() or 'none'}): it takes bfloat16 from AVX512_CORE or AVX2_VNNI_2 up"
        )
    if flags is not None:
        monkeypatch.setattr(cpu_kernels, "cpu_flags", lambda: flags)
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)  # read by the engine's decision; oneDNN read its cap at start
    if qkv == "any":
        qkv = "bfloat16" if cpu_kernels.bfloat16_isa() else "float32"
    encoder = MiniLMEncoder(device="cpu", dtype="int8")
    layers = encoder.workers[0].backend.model.layers
    assert all(isinstance(layer.qkv, Bfloat16Linear if qkv == "bfloat16" else OneDnnLinear) for layer in layers)
    assert all(isinstance(getattr(layer, name), Int8Linear) for layer in layers for name in LINEAR_NAMES[1:])
    assert encoder.workers[0].backend.choices()["linear"] == cpu_kernels.kernel_plan()["int8"]
    cosines = (encoder.encode(MIXED_24) * packed32.encode(MIXED_24)).sum(1)
    assert cosines.min() >= COSINE_BOUNDS["int8"]


def test_plain_linear_path_is_exact_too(monkeypatch, st_model):
    """Accelerators (and CPU builds without oneDNN) run F.linear (DenseLinear): keep that path exact as well."""
    from minilm_npu.engine import packed
    from minilm_npu.engine.bert import DenseLinear

    monkeypatch.setattr(packed, "onednn_linear_supported", lambda: False)
    monkeypatch.setattr("minilm_npu.engine.cpu_linears.onednn_linear_supported", lambda: False)
    encoder = MiniLMEncoder(device="cpu", backend="packed")
    layers = encoder.workers[0].backend.model.layers
    assert all(isinstance(getattr(layer, name), DenseLinear) for layer in layers for name in LINEAR_NAMES)
    batch = texts.ALL + MIXED_24
    np.testing.assert_allclose(encoder.encode(batch, batch_size=16), st_model.encode(batch), atol=1e-5, rtol=0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt; ru_minflt")
def test_cpu_forward_reuses_activation_memory(packed32):
    """With the host allocator tuned, a warm forward pass stops page-faulting its activations (~8,000-9,000 faults
    per 24-sentence batch under glibc's defaults, ~250 tuned)."""
    import resource

    from minilm_npu.engine import policy

    if not policy.tune_host_allocator():
        pytest.skip("not glibc, or this process chose its own allocator")
    for _ in range(3):
        packed32.encode(MIXED_24)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        packed32.encode(MIXED_24)
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3 < 1_000
