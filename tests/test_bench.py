"""``repro bench``: four precisions per model, their ratios, and the record they leave."""
from __future__ import annotations

import json
import os

import pytest

from repro.bench import bench, format_table, ratios, timed_steps
from repro.modes import CPU_PRECISION_ENV
from repro.provenance import environment


def _row(model, dtype, cl, ips, device_name="CPU test"):
    return {"model": model, "device": "cpu", "device_name": device_name, "dtype": dtype, "channels_last": cl,
            "batch_size": 8, "images_per_s": ips}


def test_ratios_by_hand():
    rows = [_row("a", "fp32", False, 100.0), _row("a", "fp32", True, 150.0), _row("a", "bf16", False, 200.0),
            _row("a", "bf16", True, 290.0), _row("b", "bf16", True, 50.0)]  # b: no fp32/NCHW baseline
    assert ratios(rows) == {"CPU test": {"a": {"fp32": 1.0, "fp32+cl": 1.5, "bf16": 2.0, "bf16+cl": 2.9}}}
    table = format_table(rows)
    assert "290 (2.90×)" in table and "150 (1.50×)" in table


def test_bench_times_four_precisions_and_records_them(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_RESULTS", str(tmp_path))
    monkeypatch.delenv(CPU_PRECISION_ENV, raising=False)
    here = environment("cpu")["device_name"]
    (tmp_path / "bench.json").write_text(json.dumps({"runs": [
        _row("cnn3", "fp32", False, 1.0, device_name="elsewhere"),  # another device: kept
        _row("cnn3", "fp32", False, 1.0, device_name=here)]}))      # an older run here: replaced
    rows = bench(["cnn3"], steps=1, batch_size=8, device="cpu", repeats=2)
    assert os.environ.get(CPU_PRECISION_ENV) is None  # the bench leaves the switch as it found it
    assert [(r["dtype"], r["channels_last"]) for r in rows] == [
        ("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]
    assert all(r["images_per_s"] > 0 and len(r["images_per_s_each"]) == 2 for r in rows)
    saved = json.loads((tmp_path / "bench.json").read_text())
    name = rows[0]["device_name"]
    assert name == here
    mine = [r for r in saved["runs"] if r["device_name"] == name]
    assert mine == rows and any(r["device_name"] == "elsewhere" for r in saved["runs"])
    base = rows[0]["images_per_s"]
    assert saved["ratios"][name]["cnn3"] == {
        "fp32": 1.0, "fp32+cl": pytest.approx(rows[1]["images_per_s"] / base, abs=0.005),
        "bf16": pytest.approx(rows[2]["images_per_s"] / base, abs=0.005),
        "bf16+cl": pytest.approx(rows[3]["images_per_s"] / base, abs=0.005)}
    assert saved["ratios"]["elsewhere"]["cnn3"] == {"fp32": 1.0}
    # a second run replaces this device's rows instead of adding to them
    bench(["cnn3"], steps=1, batch_size=8, device="cpu", repeats=1)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert len([r for r in saved["runs"] if r["device_name"] == name]) == 4


def test_book_still_reads_the_bench_record(tmp_path, monkeypatch):
    from repro.book.results import _bench_table

    monkeypatch.setenv("REPRO_RESULTS", str(tmp_path))
    bench(["cnn3"], steps=1, batch_size=8, device="cpu", repeats=1)
    lines = _bench_table()
    assert len(lines) == 2 + 4 and all("cnn3" in line for line in lines[2:])


def test_small_models_get_enough_steps_to_last_min_seconds():
    assert timed_steps(5, 2.0, images_per_s=1000.0, batch_size=100) == 20   # 2 s × 1000 / 100
    assert timed_steps(5, 2.0, images_per_s=40.0, batch_size=128) == 5      # 5 steps already last 16 s
    assert timed_steps(5, 0.0, images_per_s=1e6, batch_size=8) == 5         # 0: exactly ``steps``
