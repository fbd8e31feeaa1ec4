"""`minilm-npu embed` then `minilm-npu search` with the real model: the expected neighbours come first."""

from __future__ import annotations

import json

import pytest

from minilm_npu.cli.main import main

pytestmark = pytest.mark.slow

DOCS = [
    "A man is playing a guitar.",
    "A woman is slicing an onion.",
    "The stock market fell sharply today.",
    "Someone plays an acoustic guitar on stage.",
    "A chef chops vegetables in the kitchen.",
    "Investors worry about falling share prices.",
    "A cat sleeps on the sofa.",
    "Kittens are napping.",
]


def test_embed_then_search(tmp_path, capsys):
    src = tmp_path / "docs.csv"
    src.write_text("doc_id,body\n" + "".join(f'd{i},"{t}"\n' for i, t in enumerate(DOCS)), encoding="utf-8")
    out = tmp_path / "corpus"
    assert (
        main(
            [
                "embed",
                str(src),
                "-o",
                str(out),
                "--device",
                "cpu",
                "--text-field",
                "body",
                "--id-field",
                "doc_id",
                "--keep-text",
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            ["search", str(out), "musician with a guitar", "a cat taking a nap", "-k", "2", "--json", "--device", "cpu"]
        )
        == 0
    )
    results = json.loads(capsys.readouterr().out)
    assert {h["id"] for h in results[0]["results"]} == {"d0", "d3"}
    assert {h["id"] for h in results[1]["results"]} == {"d6", "d7"}
    assert results[0]["results"][0]["text"] in (DOCS[0], DOCS[3])
    assert main(["search", str(out), "shares dropped", "-k", "1", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "rank" in table and ("d2" in table or "d5" in table)
    assert main(["search", str(tmp_path / "nothing"), "x"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
