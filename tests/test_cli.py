"""The repro command line."""
from __future__ import annotations

import json

import pytest

from repro.cli import _parse_value, build_parser, main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("list", "show", "run", "results", "book", "data", "bench"):
        assert cmd in out


def test_parameter_values_parse_as_literals():
    assert _parse_value("3") == 3 and _parse_value("0.1") == 0.1
    assert _parse_value("[0, 1]") == [0, 1] and _parse_value("True") is True
    assert _parse_value("resnet20") == "resnet20"


def test_list_and_show(capsys):
    from repro.papers import all_specs

    spec = all_specs()[0]
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert spec.name in out
    assert main(["show", spec.slug]) == 0
    assert "Parameters" in capsys.readouterr().out


def test_data_where_and_verify_errors(tmp_path, capsys):
    assert main(["data", "where", "--root", str(tmp_path)]) == 0
    assert str(tmp_path) in capsys.readouterr().out
    assert main(["data", "verify", "--root", str(tmp_path)]) == 3   # exit code 3: data
    assert "repro data download" in capsys.readouterr().err


def test_bench_records_images_per_second(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_RESULTS", str(tmp_path))
    assert main(["bench", "--models", "cnn3", "--steps", "2", "--batch-size", "16"]) == 0
    runs = json.loads((tmp_path / "bench.json").read_text())["runs"]
    assert runs[0]["model"] == "cnn3" and runs[0]["images_per_s"] > 0
