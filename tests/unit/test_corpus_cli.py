"""Command-line plumbing that needs no model: argument errors and the Ray install hint."""

from __future__ import annotations

import sys

import pytest

from minilm_npu.cli.main import main
from minilm_npu.errors import InputError


def test_embed_argument_errors_are_one_line(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("a\n", encoding="utf-8")
    assert main(["embed", str(src), "-o", str(tmp_path / "o"), "--ray-address", "auto"]) == 2
    assert capsys.readouterr().err.strip() == "error: --ray-address needs --engine ray"
    assert main(["embed", str(tmp_path / "missing.txt"), "-o", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "in.xlsx").write_text("x", encoding="utf-8")
    assert main(["embed", str(tmp_path / "in.xlsx"), "-o", str(tmp_path / "o")]) == 2
    assert "unsupported input type" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["embed", str(src), "-o", str(tmp_path / "o"), "--on-error", "ignore"])


def test_missing_ray_gives_the_install_command(monkeypatch):
    from minilm_npu.corpus.ray_engine import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InputError, match=r"pip install 'minilm-npu\[ray\]'"):
        import_ray()
