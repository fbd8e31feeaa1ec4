"""Cross-encoders (rerankers), scored exactly as sentence-transformers' ``CrossEncoder`` scores them.

The models are random-weight BERT and XLM-RoBERTa sequence classifiers with one label and with several, saved by
``CrossEncoder.save`` (tests/fixtures/models.py). Pairs mix scripts, empty texts, the tokenizers' special tokens
written out in a text, and texts far longer than each model's limit (both texts of a pair, or one).

Tolerance: float32 scores within 1e-5 of sentence-transformers, scaled by the logits' magnitude where they are not
squashed by Sigmoid (``1e-5 * max(1, max |value|)``). Both sides run the same float32 arithmetic in another order
(packed rows and oneDNN GEMMs against padded batches and MKL), which moves the last bits: measured ~2e-7 on the
one-label models' sigmoid scores, ~1.5e-6 on logits of ~10. A wrong token type, position or head shows as 1e-2 to 1.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from minilm_npu import MiniLMEncoder, Reranker
from minilm_npu.errors import InputError, ModelFilesError
from minilm_npu.samples import MIXED_24
from tests import texts
from tests.fixtures.models import CROSS_ENCODERS

QUERIES = texts.QUERIES
DOCUMENTS = texts.ALL + MIXED_24[:8] + texts.PASSAGES
PAIRS = [[query, document] for query in QUERIES for document in DOCUMENTS]
# Both texts over the limit: the longer one is cut first, then both in turn.
PAIRS += [[texts.LONG[0], texts.MEDIUM[0]], [DOCUMENTS[-1], DOCUMENTS[-2]]]
ONE_LABEL = tuple(name for name in CROSS_ENCODERS if not name.endswith("-labels"))


def assert_close(ours: np.ndarray, theirs: np.ndarray, name: str = "") -> None:
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, name
    scale = max(1.0, float(np.abs(theirs).max()))
    difference = float(np.abs(ours - theirs).max())
    assert difference <= 1e-5 * scale, f"{name}: max |difference| {difference:.3g} (scale {scale:.3g})"


@pytest.fixture(scope="module")
def st(st_model_dir):
    """``st(name)``: sentence-transformers' CrossEncoder, float32 on CPU (loaded once per module)."""
    from sentence_transformers import CrossEncoder

    loaded = {}

    def get(name: str):
        if name not in loaded:
            loaded[name] = CrossEncoder(str(st_model_dir(name)), device="cpu")
        return loaded[name]

    return get


@pytest.fixture(scope="module")
def ours(st_model_dir):
    """``ours(name, dtype="float32")``: our reranker on CPU (built once per module)."""
    built = {}

    def get(name: str, dtype: str = "float32") -> Reranker:
        if (name, dtype) not in built:
            built[name, dtype] = Reranker(model_path=str(st_model_dir(name)), device="cpu", dtype=dtype)
        return built[name, dtype]

    return get


@pytest.mark.parametrize("name", CROSS_ENCODERS)
def test_model_is_read_as_cross_encoder_reads_it(name, st, ours):
    """Limit, labels, activation, and the pair token ids and token types themselves (truncation included)."""
    theirs, reranker = st(name), ours(name)
    assert reranker.max_seq_length == theirs.max_seq_length
    assert reranker.num_labels == theirs.num_labels
    assert type(reranker.activation_fn) is type(theirs.activation_fn)
    features = theirs.preprocess(PAIRS)
    ids = reranker.tokenize_pairs([tuple(pair) for pair in PAIRS])
    masks = features["attention_mask"].bool()
    assert ids == [row[mask].tolist() for row, mask in zip(features["input_ids"], masks)]
    if "token_type_ids" in features:
        types = [row[mask].tolist() for row, mask in zip(features["token_type_ids"], masks)]
        assert [[int(i >= seq.second) for i in range(len(seq))] for seq in ids] == types
        assert any(seq.second < len(seq) for seq in ids)
    else:
        assert all(seq.second == len(seq) for seq in ids)
    assert max(len(seq) for seq in ids) == theirs.max_seq_length  # the long pairs reach the limit


@pytest.mark.parametrize("name", CROSS_ENCODERS)
def test_predict_equals_cross_encoder(name, st, ours):
    theirs, reranker = st(name), ours(name)
    assert_close(reranker.predict(PAIRS, batch_size=8), theirs.predict(PAIRS, batch_size=8), name)
    assert_close(reranker.predict(PAIRS[3]), theirs.predict(PAIRS[3]), f"{name}, one pair")
    identity = torch.nn.Identity()
    assert_close(
        reranker.predict(PAIRS[:20], activation_fn=identity),
        theirs.predict(PAIRS[:20], activation_fn=identity),
        f"{name}, logits",
    )
    if reranker.num_labels > 1:
        assert_close(
            reranker.predict(PAIRS[:20], apply_softmax=True), theirs.predict(PAIRS[:20], apply_softmax=True), name
        )


@pytest.mark.parametrize("name", ONE_LABEL)
def test_rank_equals_cross_encoder(name, st, ours):
    theirs, reranker = st(name), ours(name)
    for query in QUERIES:
        expected = theirs.rank(query, DOCUMENTS, return_documents=True)
        got = reranker.rank(query, DOCUMENTS, return_documents=True)
        scores = sorted(r["score"] for r in expected)
        if min(b - a for a, b in zip(scores, scores[1:])) > 1e-5:  # no near-tie the tolerance could reorder
            assert [r["corpus_id"] for r in got] == [r["corpus_id"] for r in expected]
        assert [r["text"] for r in got] == [DOCUMENTS[r["corpus_id"]] for r in got]
        by_id = {r["corpus_id"]: r["score"] for r in expected}
        assert_close(np.array([r["score"] for r in got]), np.array([by_id[r["corpus_id"]] for r in got]), query)
    top = reranker.rank(QUERIES[0], DOCUMENTS, top_k=3)
    assert [r["corpus_id"] for r in top] == [r["corpus_id"] for r in theirs.rank(QUERIES[0], DOCUMENTS, top_k=3)]
    assert set(top[0]) == {"corpus_id", "score"}


def test_rank_needs_one_label(ours):
    with pytest.raises(InputError, match="one label; this one has 3"):
        ours("ce-bert-labels").rank("q", ["a", "b"])


def test_bad_pairs_are_refused(ours):
    reranker = ours("ce-bert")
    with pytest.raises(InputError, match=r"pairs\[1\] must be two strings"):
        reranker.predict([["a", "b"], ["only one"]])
    with pytest.raises(InputError, match="list of"):
        reranker.predict("a b")
    assert reranker.predict([]).shape == (0,)


def _copy(st_model_dir, name, tmp_path):
    copy = tmp_path / name
    shutil.copytree(st_model_dir(name), copy)
    return copy


def _edit_config(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **changes}))


def test_unsupported_architectures_and_heads_are_refused(st_model_dir, tmp_path):
    copy = _copy(st_model_dir, "ce-bert", tmp_path)
    _edit_config(copy, architectures=["BertForTokenClassification"])
    with pytest.raises(ModelFilesError, match="no sequence-classification head this engine runs"):
        Reranker(model_path=str(copy), device="cpu")
    _edit_config(copy, architectures=["DistilBertForSequenceClassification"], model_type="distilbert")
    with pytest.raises(ModelFilesError, match="model_type 'distilbert'"):
        Reranker(model_path=str(copy), device="cpu")
    # Two labels in config.json, one in the weights: the head's shape is checked before anything is loaded.
    _edit_config(
        copy, architectures=["BertForSequenceClassification"], model_type="bert", id2label={"0": "a", "1": "b"}
    )
    with pytest.raises(ModelFilesError, match=r"wrong shape classifier.weight \[1, 32\] \(expected \[2, 32\]\)"):
        Reranker(model_path=str(copy), device="cpu")


def test_cross_encoder_and_embedding_model_each_name_the_other(st_model_dir):
    with pytest.raises(ModelFilesError, match="CrossEncoder model.*minilm_npu.Reranker"):
        MiniLMEncoder(model_path=str(st_model_dir("ce-xlmr")), device="cpu")
    with pytest.raises(ModelFilesError, match="SentenceTransformer model.*minilm_npu.MiniLMEncoder"):
        Reranker(model_path=str(st_model_dir("bert-mean-raw")), device="cpu")


@pytest.mark.parametrize("name", ["ce-bert", "ce-xlmr-labels"])
def test_int8_scores_stay_close(name, ours):
    """int8 on CPU against our float32 (random-weight models are harsher on int8 than trained ones)."""
    reference = ours(name).predict(PAIRS, activation_fn=torch.nn.Identity())
    reduced = ours(name, "int8").predict(PAIRS, activation_fn=torch.nn.Identity())
    correlation = np.corrcoef(reference.ravel(), reduced.ravel())[0, 1]
    assert correlation > 0.95, correlation


@pytest.mark.parametrize("layout", ["per_sequence", "padded", "padded-gears", "dense-linear"])
@pytest.mark.parametrize("name", ["ce-bert", "ce-xlmr-labels"])
def test_every_engine_layout_is_exact(name, layout, st, monkeypatch, st_model_dir):
    """The accelerators' layouts (one padded block, static-shape gears and square masks) and the plain F.linear
    path, run on the CPU: the token types and the head follow each token wherever attention puts it."""
    from minilm_npu.engine import packed
    from minilm_npu.engine.classifier import PackedReranker
    from minilm_npu.engine.policy import AttentionPlan, round_to_gear, round_to_power_of_two
    from minilm_npu.rerankfiles import resolve_reranker

    if layout == "dense-linear":
        monkeypatch.setattr(packed, "onednn_linear_supported", lambda: False)
        monkeypatch.setattr("minilm_npu.engine.cpu_linears.onednn_linear_supported", lambda: False)
    plan = {
        "per_sequence": AttentionPlan("per_sequence"),
        "padded": AttentionPlan("padded"),
        "padded-gears": AttentionPlan("padded", square_mask=True, gears=round_to_gear, row_gears=round_to_power_of_two),
        "dense-linear": AttentionPlan("bucketed"),
    }[layout]
    files = resolve_reranker(str(st_model_dir(name)))
    backend = PackedReranker(files, torch.device("cpu"), "float32", attention=plan)
    reranker = Reranker(model_path=str(st_model_dir(name)), device="cpu")
    ids = reranker.tokenize_pairs([tuple(pair) for pair in PAIRS])
    logits = torch.cat([backend.embed(ids[i : i + 16]) for i in range(0, len(ids), 16)]).numpy()
    expected = st(name).predict(PAIRS, activation_fn=torch.nn.Identity())
    assert_close(logits.reshape(len(PAIRS), -1), expected.reshape(len(PAIRS), -1), f"{name} {layout}")


@pytest.mark.parametrize("name", ["ce-bert", "ce-xlmr"])
def test_npu_varlen_path_is_exact(name, st, st_model_dir, fake_torch_npu, monkeypatch):
    """The NPU's choices (TND varlen attention over packed pairs, npu_gelu) through the stand-in torch_npu."""
    from minilm_npu import devices
    from minilm_npu.engine import packed
    from minilm_npu.engine.classifier import PackedReranker
    from minilm_npu.engine.policy import AttentionPlan
    from minilm_npu.rerankfiles import resolve_reranker

    monkeypatch.setattr(packed, "exact_gelu", lambda _type: devices.exact_gelu("npu"))
    monkeypatch.setattr(packed, "varlen_attention", lambda _type: devices.varlen_attention("npu"))
    monkeypatch.setattr(packed, "onednn_linear_supported", lambda: False)  # DenseLinear, with the device's GELU
    monkeypatch.setattr("minilm_npu.engine.cpu_linears.onednn_linear_supported", lambda: False)
    files = resolve_reranker(str(st_model_dir(name)))
    backend = PackedReranker(files, torch.device("cpu"), "float32", attention=AttentionPlan("varlen"))
    ids = Reranker(model_path=str(st_model_dir(name)), device="cpu").tokenize_pairs([tuple(p) for p in PAIRS])
    logits = torch.cat([backend.embed(ids[i : i + 16]) for i in range(0, len(ids), 16)]).numpy()
    assert fake_torch_npu.gelu_calls and backend.model.varlen is not None
    expected = st(name).predict(PAIRS, activation_fn=torch.nn.Identity())
    assert_close(logits.reshape(len(PAIRS), -1), expected.reshape(len(PAIRS), -1), name)


@pytest.mark.parametrize(
    "where,path",
    [
        ("st-config", "torch.nn.modules.activation.Tanh"),
        ("config.json", "torch.nn.modules.activation.Tanh"),  # sentence-transformers 4.x-5.x
        ("legacy", "torch.nn.modules.linear.Identity"),  # before 4.0
        ("st-config", "my_package.MyActivation"),  # not a torch class: the default, as without trust_remote_code
        ("none", None),
    ],
)
def test_activation_is_found_where_cross_encoder_finds_it(where, path, st_model_dir, tmp_path):
    from sentence_transformers import CrossEncoder

    copy = _copy(st_model_dir, "ce-bert", tmp_path)
    st_config = json.loads((copy / "config_sentence_transformers.json").read_text())
    st_config.pop("activation_fn", None)
    if where == "st-config":
        st_config["activation_fn"] = path
    elif where == "config.json":
        _edit_config(copy, sentence_transformers={"activation_fn": path})
    elif where == "legacy":
        _edit_config(copy, sbert_ce_default_activation_function=path)
    (copy / "config_sentence_transformers.json").write_text(json.dumps(st_config))
    theirs = CrossEncoder(str(copy), device="cpu")
    ours = Reranker(model_path=str(copy), device="cpu")
    assert type(ours.activation_fn) is type(theirs.activation_fn)
    assert_close(ours.predict(PAIRS[:12]), theirs.predict(PAIRS[:12]), f"{where} {path}")
