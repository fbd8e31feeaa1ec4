"""Unit tests for the lean BERT: config parsing, weight-name/shape checks, packing helpers."""

from __future__ import annotations

import json

import pytest
import torch

from minilm_npu.engine.bert import (
    BertConfig,
    PackedBert,
    check_weight_names,
    expected_shapes,
    load_weights,
    pack,
    plan_buckets,
)
from minilm_npu.engine.head import SentenceHead
from minilm_npu.engine.policy import (
    dtype_unsupported_reason,
    round_to_gear,
    round_to_power_of_two,
    round_tokens_to_gear,
)
from minilm_npu.modelfiles import ModelFilesError

CONFIG = {
    "model_type": "bert",
    "architectures": ["BertModel"],
    "vocab_size": 50,
    "hidden_size": 8,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 16,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 32,
    "type_vocab_size": 2,
    "hidden_act": "gelu",
}


def test_config_from_dict():
    config = BertConfig.from_dict(CONFIG)
    assert (config.num_layers, config.hidden_size, config.num_heads, config.head_dim) == (2, 8, 2, 4)
    assert config.layer_norm_eps == 1e-12 and config.max_position_embeddings == 32


def test_config_of_the_real_model(model_dir):
    config = BertConfig.from_dict(json.loads((model_dir / "config.json").read_text()))
    assert (config.num_layers, config.hidden_size, config.intermediate_size) == (6, 384, 1536)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "distilbert"}, "runs bert, roberta, xlm-roberta encoders.*'distilbert'"),
        ({"architectures": ["GPT2Model"]}, "runs bert, roberta, xlm-roberta encoders"),
        ({"model_type": "xlm-roberta"}, "BertModel"),  # an XLM-RoBERTa config naming a BERT class
        ({"hidden_act": "relu"}, "hidden_act"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
        ({"num_attention_heads": 3}, "not a multiple"),
        ({"hidden_size": "wide"}, "malformed"),
    ],
)
def test_config_rejects_what_it_cannot_run(change, message):
    with pytest.raises(ModelFilesError, match=message):
        BertConfig.from_dict({**CONFIG, **change})


def test_xlm_roberta_config_numbers_positions_past_the_padding_id():
    xlmr = {**CONFIG, "model_type": "xlm-roberta", "architectures": ["XLMRobertaModel"], "pad_token_id": 1}
    config = BertConfig.from_dict({**xlmr, "type_vocab_size": 1})
    assert (config.position_offset, config.pad_token_id, config.weight_prefix) == (2, 1, "roberta.")
    assert BertConfig.from_dict(CONFIG).position_offset == 0


def test_roberta_positions_follow_transformers():
    """Positions start at pad_token_id + 1 in every sequence; a token equal to the padding id (a literal <pad> in a
    text) takes position pad_token_id and is not counted, as transformers' create_position_ids_from_input_ids."""
    from transformers import XLMRobertaConfig
    from transformers.models.xlm_roberta.modeling_xlm_roberta import XLMRobertaEmbeddings

    config = BertConfig.from_dict({**CONFIG, "model_type": "xlm-roberta", "architectures": [], "pad_token_id": 1})
    model = PackedBert(config, {n: torch.zeros(s) for n, s in expected_shapes(config).items()}, torch.device("cpu"))
    batch = [[0, 5, 6, 2], [0, 2], [0, 7, 1, 8, 2]]
    packed = pack(batch, "per_sequence", torch.device("cpu"))
    ours = model.position_ids(packed.ids, packed.rows.slots).tolist()
    embeddings = XLMRobertaEmbeddings(XLMRobertaConfig(pad_token_id=1))
    theirs = [embeddings.create_position_ids_from_input_ids(torch.tensor([ids]), 1)[0].tolist() for ids in batch]
    assert ours == sum(theirs, []) == [2, 3, 4, 5, 2, 3, 2, 3, 1, 4, 5]


def test_config_missing_key():
    config = dict(CONFIG)
    del config["num_hidden_layers"]
    with pytest.raises(ModelFilesError, match="num_hidden_layers"):
        BertConfig.from_dict(config)


def _shapes(prefix: str = "") -> dict[str, tuple[int, ...]]:
    return {prefix + name: shape for name, shape in expected_shapes(BertConfig.from_dict(CONFIG)).items()}


@pytest.mark.parametrize("model_type,prefix", [("bert", ""), ("bert", "bert."), ("xlm-roberta", "roberta.")])
def test_weight_names_with_and_without_prefix(model_type, prefix):
    found = _shapes(prefix) | {prefix + "pooler.dense.weight": (8, 8), prefix + "embeddings.position_ids": (1, 32)}
    found |= {"lm_head.dense.weight": (8, 8)} if model_type != "bert" else {"cls.predictions.bias": (50,)}
    stored = check_weight_names(found, BertConfig.from_dict({**CONFIG, "model_type": model_type, "architectures": []}))
    assert stored["encoder.layer.1.output.dense.weight"] == prefix + "encoder.layer.1.output.dense.weight"
    assert len(stored) == 5 + 2 * 16


def test_weight_errors_list_missing_unexpected_and_mismatched():
    found = _shapes()
    del found["encoder.layer.1.attention.self.key.bias"]
    found["encoder.layer.0.output.dense.weight"] = (8, 15)
    found["decoder.weight"] = (3,)
    with pytest.raises(ModelFilesError) as err:
        check_weight_names(found, BertConfig.from_dict(CONFIG))
    text = str(err.value)
    assert "missing encoder.layer.1.attention.self.key.bias" in text
    assert "unexpected decoder.weight" in text
    assert "encoder.layer.0.output.dense.weight [8, 15] (expected [8, 16])" in text


def test_load_weights_checks_a_real_file(tmp_path):
    from safetensors.torch import save_file

    config = BertConfig.from_dict(CONFIG)
    tensors = {name: torch.zeros(shape) for name, shape in expected_shapes(config).items()}
    save_file(tensors, tmp_path / "ok.safetensors")
    assert set(load_weights(tmp_path / "ok.safetensors", config)) == set(tensors)
    del tensors["embeddings.LayerNorm.bias"]
    save_file(tensors, tmp_path / "bad.safetensors")
    with pytest.raises(ModelFilesError, match="missing embeddings.LayerNorm.bias"):
        load_weights(tmp_path / "bad.safetensors", config)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelFilesError, match="cannot read weights"):
        load_weights(tmp_path / "junk.safetensors", config)


def test_plan_buckets_groups_similar_lengths():
    groups = plan_buckets([10, 100, 90, 12, 11, 60], slack=0.25)
    assert groups == [[1, 2], [5], [3, 4, 0]]
    assert sorted(i for g in groups for i in g) == list(range(6))


@pytest.mark.isa
@pytest.mark.parametrize("strategy", ["per_sequence", "bucketed", "padded"])
def test_pack_indices(strategy):
    batch = [[101, 5, 102], [101, 102], [101, 7, 8, 9, 102]]
    packed = pack(batch, strategy, torch.device("cpu"))
    assert packed.ids.tolist() == [101, 5, 102, 101, 102, 101, 7, 8, 9, 102]
    assert packed.rows.slots.tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3, 4]
    assert packed.rows.sequence.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2, 2]
    assert packed.rows.lengths.tolist() == [3, 2, 5] and packed.rows.count == 3
    assert packed.starts == [0, 3, 5] and packed.lengths == [3, 2, 5]
    # Mean pooling over the layout: each sequence's own rows, nothing elsewhere. The sums go through a kernel whose
    # summation order (and FMA use) follows the CPU, so the means compare within float32 rounding: a 5-term sum of
    # values up to 9 is off by at most 5 * 2**-24 * 35 (~1e-5).
    rows = torch.arange(10.0)[:, None]
    torch.testing.assert_close(
        SentenceHead.pool(rows, packed.rows, "mean").flatten(), torch.tensor([1.0, 3.5, 7.0]), atol=1e-5, rtol=0
    )
    if strategy != "per_sequence":
        # Gathering into blocks and reading back through `unpad` must give every packed row once, in order.
        rows = torch.arange(10.0)[:, None]
        blocks = torch.cat([rows.index_select(0, b.gather) for b in packed.buckets])
        assert blocks.index_select(0, packed.unpad).flatten().tolist() == list(range(10))


def test_pack_with_gears_pads_blocks():
    packed = pack([[1] * 5, [1] * 3], "padded", torch.device("cpu"), gears=round_to_gear)
    assert packed.buckets[0].gather.numel() == 2 * 16
    assert packed.buckets[0].mask.shape == (2, 1, 1, 16)


def test_device_helpers():
    assert round_to_gear(17) == 32 and round_to_gear(600) == 600
    assert [round_to_power_of_two(n) for n in (1, 2, 3, 9)] == [1, 2, 4, 16]
    assert dtype_unsupported_reason(torch.device("cpu"), "float16")
    assert dtype_unsupported_reason(torch.device("cuda", 0), "int8")
    assert dtype_unsupported_reason(torch.device("cpu"), "int8") is None
    assert dtype_unsupported_reason(torch.device("cpu"), "bfloat16") is None


def test_pack_with_row_gears_pads_the_sequence_count_and_reads_back_only_real_rows():
    batch = [[1] * 5, [2] * 3, [3] * 4]
    packed = pack(batch, "padded", torch.device("cpu"), gears=round_to_gear, row_gears=round_to_power_of_two)
    bucket = packed.buckets[0]
    assert len(bucket.lengths) == 4 and bucket.gather.numel() == 4 * 16 and bucket.mask.shape == (4, 1, 1, 16)
    rows = torch.arange(12).float()[:, None]  # packed row r holds value r
    blocks = rows.index_select(0, bucket.gather)
    assert blocks.index_select(0, packed.unpad).flatten().tolist() == list(range(12))


@pytest.mark.parametrize("strategy", ["per_sequence", "bucketed", "padded"])
def test_one_sequence_is_its_own_block(strategy):
    """A lone sequence skips the gather/unpad bookkeeping; a gear that would pad it keeps the general path."""
    packed = pack([[101, 7, 8, 102]], strategy, torch.device("cpu"))
    assert packed.ids.tolist() == [101, 7, 8, 102] and packed.rows.slots.tolist() == [0, 1, 2, 3]
    assert packed.starts == [0] and packed.lengths == [4] and packed.unpad is None
    assert packed.rows.sequence.tolist() == [0] * 4 and packed.rows.lengths.tolist() == [4]
    assert [(b.gather, b.mask, b.lengths) for b in packed.buckets] == (
        [] if strategy == "per_sequence" else [(None, None, [4])]
    )
    geared = pack(
        [[101, 7, 8, 102]], "padded", torch.device("cpu"), gears=round_to_gear, row_gears=round_to_power_of_two
    )
    assert geared.buckets[0].gather.numel() == 16 and geared.buckets[0].mask.shape == (1, 1, 1, 16)


def test_token_gears_are_few_and_pad_little():
    assert [round_tokens_to_gear(n) for n in (1, 9, 16, 17, 19, 100, 450, 626, 1000)] == [
        1,
        9,
        16,
        18,
        20,
        104,
        480,
        640,
        1024,
    ]
    gears = [round_tokens_to_gear(n) for n in range(1, 16385)]
    assert all(gear >= n and gear - n <= n / 8 for n, gear in enumerate(gears, 1))
    # Every token count below 2**14 lands on one of 96 row counts: 16 exact, then 8 per octave.
    assert len(set(gears)) == 96 and all(round_tokens_to_gear(gear) == gear for gear in set(gears))


@pytest.mark.parametrize("strategy", ["per_sequence", "bucketed", "padded"])
def test_pack_with_token_gears_adds_rows_nothing_reads(strategy):
    batch = [[101, 5, 102], [101, 102], [101, 7, 8, 9, 102]]
    packed = pack(batch, strategy, torch.device("cpu"), token_gears=lambda n: 16)
    assert packed.ids.tolist() == [101, 5, 102, 101, 102, 101, 7, 8, 9, 102] + [0] * 6
    assert packed.rows.slots.tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3, 4] + [0] * 6
    assert packed.rows.sequence.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2, 2] + [3] * 6  # 3: no sequence
    assert packed.rows.count == 3 and not packed.rows.dense
    assert packed.starts == [0, 3, 5] and packed.lengths == [3, 2, 5]
    rows = torch.arange(16.0)[:, None]  # packed row r holds r; padding rows 10..15 must weigh nothing
    # (a GEMM over 16 rows may sum in another order than over 10: float32 rounding, not padding, may differ)
    for mode, expected in (("mean", [1.0, 3.5, 7.0]), ("max", [2.0, 4.0, 9.0]), ("lasttoken", [2.0, 4.0, 9.0])):
        pooled = SentenceHead.pool(rows, packed.rows, mode).flatten().tolist()
        assert pooled == pytest.approx(expected, rel=1e-6), mode
    if strategy != "per_sequence":
        assert all(int(b.gather.max()) < 10 for b in packed.buckets)  # no block attends to a padding row
        blocks = torch.cat([rows.index_select(0, b.gather) for b in packed.buckets])
        assert blocks.index_select(0, packed.unpad).flatten().tolist()[:10] == list(range(10))


@pytest.mark.parametrize("strategy", ["per_sequence", "bucketed"])
def test_one_sequence_with_token_gears_leaves_its_padding_out(strategy):
    packed = pack([[101, 7, 8, 102]], strategy, torch.device("cpu"), token_gears=lambda n: 6)
    assert packed.ids.tolist() == [101, 7, 8, 102, 0, 0] and packed.rows.slots.tolist() == [0, 1, 2, 3, 0, 0]
    assert packed.rows.sequence.tolist() == [0, 0, 0, 0, 1, 1] and not packed.rows.dense and packed.unpad is None
    rows = torch.arange(6.0)[:, None]
    for mode, expected in (("mean", 1.5), ("max", 3.0), ("lasttoken", 3.0), ("cls", 0.0)):
        assert SentenceHead.pool(rows, packed.rows, mode).item() == pytest.approx(expected, rel=1e-6), mode
    if strategy == "bucketed":  # the block is the first 4 rows: no gather, no mask
        (bucket,) = packed.buckets
        assert bucket.gather is None and bucket.mask is None and bucket.lengths == [4]
