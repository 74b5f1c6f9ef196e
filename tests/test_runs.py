"""Runs never overwrite the book, say why they failed, and survive interrupts.

Each test here failed before runs had their own folders: a smoke run replaced the book's
chapter, errors printed an empty message, papermill's list example was refused, ``-p tier``
fought ``--tier``, bad records crashed ``repro list``, and Ctrl-C printed a traceback and saved
nothing. Chapter 35 (msdropout) is the quickest chapter, so it stands in for all of them.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repro import publish as pub
from repro.cli import main
from repro.errors import ParameterError, RecordError

ROOT = Path(__file__).resolve().parent.parent
QUICK = "35-msdropout"


def tree_digest(folder: Path) -> dict[str, str]:
    """Path → sha256 of every file under ``folder`` (mode included)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            out[p.relative_to(folder).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest() + oct(p.stat().st_mode)
    return out


@pytest.fixture
def scratch(tmp_path, monkeypatch, notebook_data_env):
    """Runs, checkpoints and teachers in tmp; the checkout's results and book are the real ones."""
    for k in ("REPRO_RESULTS", "REPRO_BOOK", "REPRO_RUN_DIR", "REPRO_RUN_ID", "REPRO_DRY_RUN", "REPRO_FRESH",
              "REPRO_TIER"):
        monkeypatch.delenv(k, raising=False)
    env = {"REPRO_RUNS": tmp_path / "runs", "REPRO_CHECKPOINTS": tmp_path / "ckpt",
           "REPRO_TEACHERS": tmp_path / "teachers", **notebook_data_env}
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))
    return tmp_path


@pytest.mark.slow
def test_a_smoke_run_leaves_book_and_results_byte_identical(scratch, capsys):
    before = {d: tree_digest(ROOT / d) for d in ("book", "results")}
    assert main(["run", QUICK, "--tier", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "not published: smoke runs are never published" in out
    assert {d: tree_digest(ROOT / d) for d in ("book", "results")} == before
    [folder] = (scratch / "runs").glob(f"{QUICK}.smoke.*")
    rec = json.loads((folder / f"{QUICK}.smoke.json").read_text())
    nb = json.loads((folder / f"{QUICK}.ipynb").read_text())
    assert nb["metadata"]["repro"]["run_id"] == rec["run_id"]
    assert all((folder / rel).is_file() for rel in rec["figures"].values())


def test_smoke_runs_are_never_published_and_overrides_need_publish(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_BOOK", str(tmp_path / "book"))
    with pytest.raises(ParameterError, match="never published"):
        pub.should_publish("smoke", {}, False, True, QUICK)
    assert pub.should_publish("smoke", {}, False, False, QUICK)[0] is False
    assert pub.should_publish("cpu", {}, True, True, QUICK)[0] is False           # a dry run: never
    assert pub.should_publish("cpu", {}, False, False, QUICK) == (True, "a complete cpu run without overrides")
    ok, why = pub.should_publish("cpu", {"epochs": 3}, False, False, QUICK)
    assert not ok and "overridden (epochs)" in why
    assert pub.should_publish("cpu", {"epochs": 3}, False, True, QUICK)[0] is True
    ok, why = pub.should_publish("gpu", {}, False, False, QUICK)
    assert not ok and "the book shows the cpu tier" in why


# -- publishing ------------------------------------------------------------------------------
def fake_run(folder: Path, run_id: str, figure_names=("a", "b")) -> Path:
    """A complete cpu run folder of paper 01-alpha (record, figures, notebook) with ``run_id``."""
    from test_book import fake_record, fake_spec

    rec = fake_record(fake_spec(1, "alpha"), "cpu", [1.0, 1.2, 0.9], run_id=run_id)
    figs = folder / "figures" / "01-alpha" / "cpu"
    figs.mkdir(parents=True)
    for f in figure_names:
        (figs / f"{f}.png").write_bytes(b"png " + run_id.encode())
        (figs / f"{f}.json").write_text(json.dumps({"run_id": run_id}))
        rec["figures"][f] = f"figures/01-alpha/cpu/{f}.png"
    (folder / "01-alpha.cpu.json").write_text(json.dumps(rec))
    (folder / "01-alpha.ipynb").write_text(json.dumps({"cells": [], "nbformat": 4, "nbformat_minor": 5,
                                                       "metadata": {"repro": {"run_id": run_id, "tier": "cpu"}}}))
    return folder


def test_publish_replaces_record_figures_and_chapter_together(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("REPRO_BOOK", str(tmp_path / "book"))
    dest = pub.publish(fake_run(tmp_path / "run1", "r1"))
    assert json.loads(dest["record"].read_text())["run_id"] == "r1"
    assert sorted(p.name for p in dest["figures"].iterdir()) == ["a.json", "a.png", "b.json", "b.png"]
    pub.publish(fake_run(tmp_path / "run2", "r2", figure_names=("a",)))
    assert json.loads(dest["record"].read_text())["run_id"] == "r2"
    assert sorted(p.name for p in dest["figures"].iterdir()) == ["a.json", "a.png"]   # r1's b is gone
    assert json.loads(dest["notebook"].read_text())["metadata"]["repro"]["run_id"] == "r2"
    assert not [p for p in tmp_path.rglob(".*") if "publishing" in p.name or "previous" in p.name]
    from repro import records
    rs = records.audited(tmp_path / "results", tmp_path / "book" / "chapters")
    assert not rs.errors and rs.records[0]["_audit"].trusted


def test_a_failed_publish_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("REPRO_BOOK", str(tmp_path / "book"))
    pub.publish(fake_run(tmp_path / "run1", "r1"))
    before = tree_digest(tmp_path / "results") | tree_digest(tmp_path / "book")
    real_replace = os.replace
    failed = []

    def failing(src, dst):
        if str(dst).endswith("01-alpha.cpu.json") and not failed:   # the last of the three swaps
            failed.append(dst)
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(pub.os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        pub.publish(fake_run(tmp_path / "run2", "r2"))
    monkeypatch.setattr(pub.os, "replace", real_replace)
    assert tree_digest(tmp_path / "results") | tree_digest(tmp_path / "book") == before


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "01-alpha.ipynb").write_text(json.dumps({"cells": [], "metadata": {"repro": {"run_id": "x"}}})),
     "comes from run x"),
    (lambda f: (f / "figures" / "01-alpha" / "cpu" / "a.png").unlink(), "figure 'a'"),
    (lambda f: (f / "01-alpha.ipynb").unlink(), "no executed notebook"),
])
def test_publish_refuses_a_run_that_does_not_hang_together(tmp_path, monkeypatch, damage, message):
    monkeypatch.setenv("REPRO_RESULTS", str(tmp_path / "results"))
    folder = fake_run(tmp_path / "run", "r1")
    damage(folder)
    with pytest.raises(RecordError, match=message):
        pub.publish(folder)
    assert not (tmp_path / "results").exists()


# -- errors carry their cause -----------------------------------------------------------------
@pytest.mark.slow
def test_missing_data_fails_with_the_fix_and_exit_code_3(scratch, monkeypatch, capsys):
    monkeypatch.setenv("REPRO_DATA", str(scratch / "no-data"))
    monkeypatch.delenv("REPRO_ALLOW_FAKE_DATA", raising=False)
    assert main(["run", QUICK, "--tier", "smoke"]) == 3
    err = capsys.readouterr().err
    assert "DataError: CIFAR-100 file missing" in err and "repro data download" in err
    assert "failed.ipynb" in err


def test_tier_given_twice_is_refused(capsys):
    assert main(["run", QUICK, "--tier", "smoke", "-p", "tier", "cpu"]) == 2
    assert "-p tier conflicts with --tier smoke" in capsys.readouterr().err


def test_empty_seeds_and_unknown_paper_are_bad_input(capsys):
    assert main(["run", QUICK, "--tier", "smoke", "-p", "seeds", "[]"]) == 2
    assert "seeds is empty" in capsys.readouterr().err
    assert main(["show", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "no paper 'nosuch'" in err and "Traceback" not in err
    assert main(["run", "nosuch", "--tier", "smoke"]) == 2


def test_parameters_are_checked_before_torch_is_imported():
    code = ("import sys\nfrom repro.cli import main\nrc = main(['run', 'msdropout', '--tier', 'smoke', '-p', "
            "'no_such', '1'])\nprint('torch loaded:', 'torch' in sys.modules, 'papermill loaded:', "
            "'papermill' in sys.modules)\nsys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown parameter(s) no_such" in proc.stderr
    assert "torch loaded: False papermill loaded: False" in proc.stdout


@pytest.mark.slow
def test_readme_papermill_list_example(scratch):
    """``papermill … -p seeds "[0, 1]"`` hands the kernel text; the run reads it as a list."""
    out = scratch / "out.ipynb"
    proc = subprocess.run([str(Path(sys.executable).parent / "papermill"), str(ROOT / "notebooks" / f"{QUICK}.ipynb"),
                           str(out), "-p", "tier", "smoke", "-p", "seeds", "[0, 1]", "--no-progress-bar"],
                          capture_output=True, text=True, timeout=300, env=os.environ,
                          cwd=ROOT / "notebooks")
    assert proc.returncode == 0, proc.stderr[-2000:]
    [rec] = (scratch / "runs").glob(f"{QUICK}.smoke.*/{QUICK}.smoke.json")
    assert json.loads(rec.read_text())["seeds"] == [0, 1]


# -- records -----------------------------------------------------------------------------------
def test_list_reports_bad_records_by_name_and_fails(tmp_path, monkeypatch, capsys):
    from test_book import fake_record, fake_spec

    monkeypatch.setenv("REPRO_RESULTS", str(tmp_path))
    rec = fake_record(fake_spec(35, "msdropout"), "cpu", [1.0, 2.0])
    del rec["verdict"]
    (tmp_path / f"{QUICK}.cpu.json").write_text(json.dumps(rec))
    (tmp_path / "36-hardbatch.cpu.json").write_text('{"schema": 2, "paper"')
    assert main(["list"]) == 1
    out, err = capsys.readouterr()
    assert "35-msdropout.cpu.json: schema 3 record lacks 'verdict'" in err
    assert "36-hardbatch.cpu.json: not valid JSON" in err and "Traceback" not in err
    assert "36-hardbatch" in out                 # the paper is still listed
    assert main(["results"]) == 1
    assert (tmp_path / "book" / "results.md").is_file()   # a scratch results folder gets a scratch page
    assert "Records that could not be read" in (tmp_path / "book" / "results.md").read_text()


# -- interrupts ----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_run_says_how_to_resume_and_keeps_a_checkpoint(scratch, sig):
    cmd = [str(Path(sys.executable).parent / "repro"), "run", QUICK, "--tier", "smoke", "-p", "epochs", "400",
           "-p", "seeds", "[0]"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)
    deadline = time.time() + 240
    while time.time() < deadline and not list((scratch / "ckpt").rglob("last.pt")):
        time.sleep(0.5)
    assert list((scratch / "ckpt").rglob("last.pt")), "training never started"
    time.sleep(1.0)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == f"{QUICK}: interrupted; re-run the same command to resume"
    assert "Traceback" not in err
    import torch
    states = [torch.load(p, weights_only=False) for p in (scratch / "ckpt").rglob("last.pt")]
    assert any(s["epoch"] > 0 or s.get("partial") for s in states)


def test_fresh_runs_do_not_share_checkpoints(monkeypatch, tmp_path):
    from repro.papers import load_spec
    from repro.run import Run

    monkeypatch.setenv("REPRO_RUNS", str(tmp_path))
    monkeypatch.delenv("REPRO_FRESH", raising=False)
    spec = load_spec("msdropout")
    params = spec.resolve("smoke")
    a, b = Run(spec, params, "cpu", run_id="a"), Run(spec, params, "cpu", run_id="b")
    assert a.checkpoint_dir("M1", 0) == b.checkpoint_dir("M1", 0)          # a re-run resumes
    monkeypatch.setenv("REPRO_FRESH", "1")
    assert a.checkpoint_dir("M1", 0) != b.checkpoint_dir("M1", 0)          # --fresh: its own
