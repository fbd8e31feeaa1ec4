"""Reading a model's sentence-transformers files (modelconfig.py): each setting from the file and key that
sentence-transformers 2.x-6.x take it from, and a clear error naming whatever we do not run.

Fast: the files are written here by hand (weights are not read). The same settings on models saved by
sentence-transformers itself are checked against the installed sentence-transformers in
tests/integration/test_model_family.py.
"""

from __future__ import annotations

import json

import pytest

from minilm_npu.modelconfig import ModelFilesError, read_max_seq_length
from minilm_npu.modelfiles import read_model_dir

BERT = {"model_type": "bert", "hidden_size": 32, "max_position_embeddings": 512}
XLMR = {"model_type": "xlm-roberta", "hidden_size": 32, "max_position_embeddings": 514, "pad_token_id": 1}
MODULE = "sentence_transformers.sentence_transformer.modules.pooling."
MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": MODULE + "Pooling"},
]
NORMALIZE = {"idx": 9, "name": "9", "path": "9_Normalize", "type": "sentence_transformers.models.Normalize"}


def write_model(directory, config=BERT, modules=MODULES, pooling=None, files=None):
    """A model directory with the given JSON files (weights and tokenizer are empty placeholders)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "model.safetensors"):
        (directory / name).write_text("{}")
    contents = {"config.json": config, "modules.json": modules, "1_Pooling/config.json": pooling or {}}
    for name, data in {**contents, **(files or {})}.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(json.dumps(data))
    return directory


@pytest.mark.parametrize(
    "st_config,tokenizer_config,expected",
    [
        ({"max_seq_length": 256}, {"model_max_length": 512}, 256),  # 2.x-5.x: the module's own setting wins
        ({}, {"model_max_length": 384}, 384),  # 6.x saves it in tokenizer_config.json
        ({}, {}, 512),  # neither: the positions the model has
        ({"max_seq_length": None}, {"model_max_length": 1e30}, 512),  # transformers' "no limit"
        ({"max_seq_length": 4096}, {}, 512),  # more than the position table: capped
        ({"processor_kwargs": {"model_max_length": 64}, "max_seq_length": 100}, {}, 64),
        ({"tokenizer_args": {"model_max_length": 72}}, {"model_max_length": 100}, 72),
    ],
)
def test_max_seq_length_as_sentence_transformers_derives_it(tmp_path, st_config, tokenizer_config, expected):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    assert read_max_seq_length(tmp_path, st_config, BERT) == expected


def test_roberta_family_limit_is_positions_past_the_padding_id(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1e30}))
    assert read_max_seq_length(tmp_path, {}, XLMR) == 512  # 514 positions, the first two unused


def test_legacy_config_file_names_are_read(tmp_path):
    files = {"sentence_xlm-roberta_config.json": {"max_seq_length": 200, "do_lower_case": True}}
    model = read_model_dir(write_model(tmp_path / "m", config=XLMR, files=files))
    assert model.max_seq_length == 200 and model.do_lower_case


@pytest.mark.parametrize(
    "pooling,modes,dimension",
    [
        ({"pooling_mode": "max"}, ("max",), 32),
        ({"pooling_mode": ["cls", "mean"], "include_prompt": False}, ("cls", "mean"), 64),
        ({"pooling_mode_mean_sqrt_len_tokens": True}, ("mean_sqrt_len_tokens",), 32),
        # 2.x flags, several set: concatenated in sentence-transformers' order, not the file's
        ({"pooling_mode_lasttoken": True, "pooling_mode_cls_token": True}, ("cls", "lasttoken"), 64),
        ({"pooling_mode_weightedmean_tokens": True, "word_embedding_dimension": 32}, ("weightedmean",), 32),
        ({}, ("mean",), 32),
    ],
)
def test_pooling_modes(tmp_path, pooling, modes, dimension):
    model = read_model_dir(write_model(tmp_path / "m", pooling=pooling))
    assert model.pooling_modes == modes and model.dimension == dimension
    assert model.include_prompt is pooling.get("include_prompt", True)
    assert not model.normalize and model.dense == ()


def test_dense_and_normalize(tmp_path):
    dense = {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    files = {
        "2_Dense/config.json": {"in_features": 32, "out_features": 8, "bias": False},
        "2_Dense/model.safetensors": {},
    }
    model = read_model_dir(write_model(tmp_path / "m", modules=MODULES + [dense, NORMALIZE], files=files))
    (layer,) = model.dense
    assert (layer.in_features, layer.out_features, layer.bias) == (32, 8, False)
    assert layer.activation == "torch.nn.modules.activation.Tanh"  # sentence-transformers' default
    assert model.normalize and model.dimension == 8


def test_dense_with_pickled_weights_is_refused(tmp_path):
    dense = {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    files = {"2_Dense/config.json": {"in_features": 32, "out_features": 8}, "2_Dense/pytorch_model.bin": {}}
    with pytest.raises(ModelFilesError, match="2_Dense has no model.safetensors.*never loaded"):
        read_model_dir(write_model(tmp_path / "m", modules=MODULES + [dense], files=files))


def test_prompts_and_default_prompt(tmp_path):
    files = {
        "config_sentence_transformers.json": {
            "prompts": {"query": "query: ", "passage": "passage: "},
            "default_prompt_name": "query",
            "model_type": "SentenceTransformer",
        }
    }
    model = read_model_dir(write_model(tmp_path / "m", files=files))
    assert model.prompts == {"query": "query: ", "document": "", "passage": "passage: "}
    assert model.default_prompt_name == "query" and model.default_prompt == "query: "
    assert model.similarity_fn_name == "cosine"  # sentence-transformers' default when none is named


def test_plain_transformers_checkpoint_gets_mean_pooling(tmp_path):
    directory = write_model(tmp_path / "m")
    (directory / "modules.json").unlink()
    model = read_model_dir(directory)
    assert model.pooling == "mean" and not model.normalize and model.default_prompt == ""


@pytest.mark.parametrize(
    "modules,files,config,message",
    [
        (
            MODULES + [{"path": "2", "type": "sentence_transformers.sparse_encoder.modules.SpladePooling"}],
            {},
            BERT,
            "module 'sentence_transformers.sparse_encoder.modules.SpladePooling' is not supported",
        ),
        (MODULES[:1], {}, BERT, r"modules \['Transformer'\] are not supported"),
        ([MODULES[0], NORMALIZE, MODULES[1]], {}, BERT, "the order must be Transformer, Pooling"),
        (MODULES, {"config_sentence_transformers.json": {"model_type": "CrossEncoder"}}, BERT, "a CrossEncoder model"),
        (MODULES, {"config_sentence_transformers.json": {"default_prompt_name": "x"}}, BERT, "names no prompt|not one"),
        (MODULES, {}, {"model_type": "mpnet", "architectures": ["MPNetModel"]}, "model_type 'mpnet'.*MPNetModel"),
        (MODULES, {"config_sentence_transformers.json": {"similarity_fn_name": "jaccard"}}, BERT, "'jaccard'"),
    ],
)
def test_what_we_do_not_run_is_named(tmp_path, modules, files, config, message):
    with pytest.raises(ModelFilesError, match=message):
        read_model_dir(write_model(tmp_path / "m", config=config, modules=modules, files=files))
