"""Fast tests of the verification suite's pieces: parsing, metrics, file readers, Ascend settings (no model)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from minilm_npu.errors import InputError
from minilm_npu.verify import accuracy as acc
from minilm_npu.verify.ascend import (
    ascend_settings,
    parse_visible_devices,
    precision_mode_setting,
    visible_devices_setting,
)
from minilm_npu.verify.environment import cann_version, fingerprint, versions
from minilm_npu.verify.report import to_json


# -- ASCEND_RT_VISIBLE_DEVICES as the runtime parses it ------------------------------------------------------------
@pytest.mark.parametrize(
    "value, cards, ignored",
    [
        (None, None, ""),
        ("0", [0], ""),
        ("0,1,2,3", [0, 1, 2, 3], ""),
        ("1, 2,3", [1], " 2,3"),  # the space stops parsing: only card 1
        ("1,2x,3", [1], "2x,3"),
        ("4,5,", [4, 5], ""),
        ("0,0,1", [0], "0,1"),  # a repeated card stops the list
        ("a,1", [], "a,1"),
        ("", [], ""),
    ],
)
def test_visible_devices_parsing_stops_at_first_bad_character(value, cards, ignored):
    assert parse_visible_devices(value) == (cards, ignored)


def test_visible_devices_setting_explains_the_trap():
    bad = visible_devices_setting({"ASCEND_RT_VISIBLE_DEVICES": "1, 2,3"})
    assert bad.warning and "[1] only" in bad.meaning and "' 2,3'" in bad.meaning
    good = visible_devices_setting({"ASCEND_RT_VISIBLE_DEVICES": "2,3"})
    assert not good.warning and "npu:0 = card 2" in good.meaning and "npu:1 = card 3" in good.meaning
    unset = visible_devices_setting({})
    assert unset.value == "(unset)" and not unset.warning
    assert visible_devices_setting({"ASCEND_RT_VISIBLE_DEVICES": ""}).warning


def test_precision_mode_default_depends_on_the_chip():
    old = precision_mode_setting(None, "Ascend910A")
    assert old.warning and "allow_fp32_to_fp16" in old.value and "fp16" in old.meaning
    a2 = precision_mode_setting(None, "Ascend910B3")
    assert not a2.warning and "must_keep_origin_dtype" in a2.value
    unknown = precision_mode_setting(None, None)
    assert "chip default" in unknown.value and "allow_fp32_to_fp16" in unknown.meaning
    forced = precision_mode_setting("allow_fp32_to_fp16", "Ascend910B3")
    assert forced.warning and "set by the process" in forced.value


def test_ascend_settings_without_npu_read_only_the_environment():
    settings = ascend_settings(False, None, {"ASCEND_RT_VISIBLE_DEVICES": "0"})
    names = [s.name for s in settings]
    assert names[0] == "ASCEND_RT_VISIBLE_DEVICES" and "precision mode" in names and "jit compile" in names
    assert all(s.meaning for s in settings)
    assert any(
        "ACL_PRECISION_MODE" in s.value or "must_keep" in s.value
        for s in ascend_settings(False, None, {"ACL_PRECISION_MODE": "must_keep_origin_dtype"})
    )


# -- environment ---------------------------------------------------------------------------------------------------
def test_cann_version_read_from_toolkit_home(tmp_path):
    home = tmp_path / "ascend-toolkit" / "latest"
    home.mkdir(parents=True)
    (home / "version.cfg").write_text("# comment\nruntime_running_version=[8.0.RC2.10:8.0.RC2]\n")
    found = cann_version({"ASCEND_TOOLKIT_HOME": str(home)}, default_home=str(tmp_path / "none"))
    assert found == {"version": "8.0.RC2.10", "file": str(home / "version.cfg")}
    (home / "version.cfg").write_text("Version=7.0.0\n")
    assert cann_version({"ASCEND_HOME_PATH": str(home)}, default_home=str(tmp_path / "none"))["version"] == "7.0.0"
    assert cann_version({}, default_home=str(tmp_path / "none")) is None


def test_fingerprint_has_versions_machine_and_date():
    env = fingerprint(device="cpu", dtype="float32", backend="packed", model="m", device_name="CPU X", cann=None)
    assert env.versions["python"] and env.versions["torch"]
    assert set(versions()) >= {"python", "torch", "torch_npu", "transformers", "tokenizers", "cann"}
    assert env.date.endswith("+00:00") and env.machine.cpu_count >= 1
    data = json.loads(to_json(env))
    assert list(data)[:6] == ["date", "device", "device_name", "dtype", "backend", "model"]
    assert list(data)[-1] == "cann" and data["cann"] is None  # an extra field keeps its key, even when null


# -- metrics -------------------------------------------------------------------------------------------------------
def test_spearman_and_pearson_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 6, 200).astype(float)  # many ties, as STS scores have
    b = a + rng.normal(0, 2, 200)
    assert acc.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert acc.pearson(a, b) == pytest.approx(stats.pearsonr(a, b).statistic, abs=1e-12)


def test_compare_identical_and_perturbed():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(10, 384))
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    same = acc.compare(ref, ref.copy())
    assert same["mean_cosine"] == pytest.approx(1.0) and same["error_rate_pct"] == pytest.approx(0.0, abs=1e-9)
    assert same["max_abs_error"] == 0 and same["mse"] == 0 and same["similarity_pearson_r"] == pytest.approx(1.0)
    test = ref.copy()
    test[3] = -test[3]  # one text points the other way: cosine -1 for that row
    bad = acc.compare(ref, test)
    assert bad["min_cosine"] == pytest.approx(-1.0)
    assert bad["mean_cosine"] == pytest.approx(0.8)
    assert bad["error_rate_pct"] == pytest.approx(20.0)
    assert bad["max_abs_error"] == pytest.approx(2 * np.abs(ref[3]).max())


# -- input files ---------------------------------------------------------------------------------------------------
def test_load_sts_reads_tabs_and_csv_quoting(tmp_path):
    # stsb-dev.tsv puts CSV-style quotes around a field that itself holds quotes; reading it without quote
    # handling leaves them in the sentences and moves the Spearman from 0.8672 to 0.8662.
    path = tmp_path / "sts.tsv"
    path.write_text(
        'sentence1\tsentence2\tscore\n"""Hi"" he said"\t"He said ""hi"""\t4.5\nA\tB\t0\nC\tD\t2.5\n', encoding="utf-8"
    )
    first, second, scores = acc.load_sts(path)
    assert first[0] == '"Hi" he said' and second[0] == 'He said "hi"' and scores.tolist() == [4.5, 0.0, 2.5]
    with pytest.raises(InputError, match="at least 3"):
        acc.load_sts(path, limit=2)


def test_load_sts_errors_are_clear(tmp_path):
    missing = tmp_path / "bad.tsv"
    missing.write_text("a\tb\n1\t2\n")
    with pytest.raises(InputError, match="lacks column"):
        acc.load_sts(missing)
    wrong = tmp_path / "wrong.tsv"
    wrong.write_text("sentence1\tsentence2\tscore\nA\tB\tfive\n")
    with pytest.raises(InputError, match="line 2.*not a number"):
        acc.load_sts(wrong)
    with pytest.raises(InputError, match="cannot read"):
        acc.load_sts(tmp_path / "absent.tsv")


def test_load_texts_skips_blank_lines(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("\ufeffone\r\n\r\n  \ntwo\n".encode())
    assert acc.load_texts(path) == ["one", "two"]
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(InputError, match="no texts"):
        acc.load_texts(tmp_path / "empty.txt")
    (tmp_path / "bin.txt").write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(InputError, match="line 2"):
        acc.load_texts(tmp_path / "bin.txt")


def test_builtin_texts_are_the_24_mixed_sentences():
    texts = acc.builtin_texts()
    assert len(texts) == 24 and all(isinstance(t, str) and t for t in texts)


def test_json_is_strict():
    text = to_json({"a": float("nan"), "b": [np.float32(1.5), np.int64(3)], "c": math.inf})
    assert json.loads(text) == {"a": None, "b": [1.5, 3], "c": None}


# -- command-line argument types -----------------------------------------------------------------------------------
def test_cli_argument_types():
    import argparse

    from minilm_npu.cli.accuracy import parse_dtypes
    from minilm_npu.cli.bench import batch_sizes
    from minilm_npu.cli.common import non_negative_float
    from minilm_npu.config import DTYPES

    assert parse_dtypes("all") == list(DTYPES)
    assert parse_dtypes("float32, float32,bfloat16") == ["float32", "bfloat16"]
    with pytest.raises(InputError, match="unknown dtype"):
        parse_dtypes("float64")
    assert batch_sizes("1,4,16") == [1, 4, 16]
    for bad in ("0,1", "a", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            batch_sizes(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        non_negative_float("-1")
