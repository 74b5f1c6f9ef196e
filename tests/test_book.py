"""The book: results page, table of contents, the printed rule, the build and a browser look.

The unit tests run in a throw-away project folder with fake records and specs. The build
and browser tests (marked slow) build a copy of the real book once per session.
"""
from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from repro import book, records, verdicts
from repro.errors import RecordError
from repro.papers import Claim, PaperSpec
from repro.tiers import TIERS

PROJECT = Path(__file__).resolve().parent.parent

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# -- fakes -------------------------------------------------------------------------------
def fake_spec(number: int, slug: str, family: str = "distillation") -> PaperSpec:
    claims = [Claim(id="main", text=f"{slug} beats the baseline", metric="delta_top1",
                    kind="effect", direction="higher", paper_value=1.5, tolerance=1.0),
              Claim(id="abs", text=f"{slug} reaches 70% top-1", metric="top1", kind="absolute",
                    paper_value=70.0, tolerance=1.0, unit="%")]
    return PaperSpec(number=number, slug=slug, title=f"The {slug} paper", family=family, info={},
                     params={}, tiers={}, claims=claims)


def fake_record(spec: PaperSpec, tier: str, delta: list[float], status: str = "complete",
                run_id: str | None = None) -> dict:
    """A record shaped like ``repro.run.Run.finish`` writes (schema 2), judged by the real rule."""
    from repro.metrics import mean_ci

    top1 = [60.0 + i for i in range(len(delta))]
    metrics = {}
    for name, vals in (("delta_top1", delta), ("top1", top1)):
        metrics[name] = {"per_seed": {str(i): v for i, v in enumerate(vals)}, **mean_ci(vals)}
    claims = []
    for c in spec.claims:
        ours = {k: metrics[c.metric][k] for k in ("mean", "std", "ci_low", "ci_high", "n")}
        v, reason = verdicts.judge(c, ours, tier) if status == "complete" else (None, "dry run")
        claims.append({**c.__dict__, "ours": ours, "difference": ours["mean"] - c.paper_value,
                       "verdict": v, "reason": reason})
    return {
        "schema": 2, "run_id": run_id or f"run-{spec.slug}-{tier}",
        "paper": {"number": spec.number, "slug": spec.slug, "name": spec.name, "title": spec.title,
                  "family": spec.family},
        "tier": tier, "status": status, "params": {"tier": tier}, "overrides": {},
        "seeds": list(range(len(delta))), "metrics": metrics, "rows": [], "claims": claims,
        "verdict": verdicts.overall([c["verdict"] for c in claims]) if status == "complete" else None,
        "figures": {},
        "cost": {"wall_s": 123.4, "train_s": 100.0, "train_images": 400000, "images_per_s": 4000.0,
                 "peak_mem_mb": 900.0, "device": "CPU x86_64 (2 threads)"},
        "environment": {"python": "3.11", "torch": "2.14.1", "cuda": None, "device_name": "CPU",
                        "repro_version": "0.1.0", "git_commit": "abcdef123456", "git_dirty": False},
        "data": {"train_md5": "0" * 32, "description": "20 classes × 250 images, 16 px"},
        "started": "2025-01-01T00:00:00+00:00", "finished": "2025-01-01T00:05:00+00:00",
    }


def write_record(root: Path, rec: dict) -> Path:
    path = root / "results" / f"{rec['paper']['name']}.{rec['tier']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
    return path


def fake_chapter(root: Path, name: str, run_id: str | None = None, tier: str = "cpu") -> Path:
    path = root / "book" / "chapters" / f"{name}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"repro": {"run_id": run_id, "tier": tier}} if run_id else {}
    path.write_text(json.dumps({"cells": [], "metadata": meta, "nbformat": 4, "nbformat_minor": 5}))
    return path


@pytest.fixture
def project(tmp_path: Path, monkeypatch):
    """A project folder with three fake papers: A has cpu + smoke records and a chapter from
    its cpu run, B only a smoke record, C nothing but a chapter. REPRO_RESULTS and REPRO_BOOK
    point into it."""
    monkeypatch.setenv("REPRO_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("REPRO_BOOK", str(tmp_path / "book"))
    specs = [fake_spec(1, "alpha"), fake_spec(2, "beta", "robustness"), fake_spec(3, "gamma")]
    cpu = fake_record(specs[0], "cpu", [0.8, 1.1, 0.9])
    write_record(tmp_path, cpu)
    write_record(tmp_path, fake_record(specs[0], "smoke", [-5.0, -6.0]))
    write_record(tmp_path, fake_record(specs[1], "smoke", [2.0, 2.5]))
    fake_chapter(tmp_path, specs[0].name, cpu["run_id"])
    fake_chapter(tmp_path, specs[2].name)
    return tmp_path, specs


# -- records -----------------------------------------------------------------------------
def test_load_records_reports_broken_files_by_name(project):
    root, specs = project
    (root / "results" / "bench.json").write_text(json.dumps({"runs": []}))      # not a record name
    (root / "results" / "09-broken.cpu.json").write_text('{"schema": 2, "paper": {"numb')   # truncated
    rs = records.load_records(root / "results")
    assert sorted((r["paper"]["name"], r["tier"]) for r in rs.records) == [
        ("01-alpha", "cpu"), ("01-alpha", "smoke"), ("02-beta", "smoke")]
    assert all(r["_file"].endswith(".json") for r in rs.records)
    [err] = rs.errors
    assert "09-broken.cpu.json" in str(err) and "not valid JSON" in str(err)


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("verdict"), "lacks 'verdict'"),
    (lambda r: r.update(schema=99), "unknown schema 99"),
    (lambda r: r.update(status="dry-run"), "dry-run record carries a verdict"),
    (lambda r: r["claims"][0].pop("metric"), "lacks 'metric'"),
    (lambda r: r.update(seeds="0,1"), "'seeds' is a str, expected list"),
])
def test_invalid_records_are_refused_with_the_file_name(tmp_path, change, message):
    rec = fake_record(fake_spec(1, "alpha"), "cpu", [1.0, 2.0])
    change(rec)
    path = write_record(tmp_path, rec)
    with pytest.raises(RecordError, match=re.escape(message)) as err:
        records.read_record(path)
    assert str(path) in str(err.value)


def test_a_record_with_made_up_claims_is_unverified(project):
    root, specs = project
    forged = fake_record(specs[0], "paper", [0.1, 0.2, 0.3], run_id="forged")
    forged["claims"][1]["verdict"] = "reproduced"          # an absolute claim the numbers don't support
    write_record(root, forged)
    rs = records.audited(root / "results", root / "book" / "chapters")
    rec = records.best_record(rs.records, "01-alpha")
    assert rec["tier"] == "paper"
    problems = " ".join(rec["_audit"].integrity)
    assert "comes from run" in problems                       # the chapter is another run's
    assert "verdict 'reproduced' does not follow" in problems
    md = book.write_results(None, specs).read_text()
    assert md.count("verdict-unverified") >= 3 and "verdict-reproduced\">reproduced" not in md


def test_record_from_an_unknown_commit_is_flagged(project):
    root, specs = project
    rs = records.audited(root / "results", root / "book" / "chapters")
    rec = records.best_record(rs.records, "01-alpha")
    assert rec["_audit"].trusted
    assert "commit abcdef123456 is not in this repository's history" in rec["_audit"].provenance


def test_best_record_prefers_the_largest_tier_and_never_smoke(project):
    root, specs = project
    write_record(root, fake_record(specs[0], "gpu", [1.0, 1.2]))
    write_record(root, fake_record(specs[0], "paper", [1.4], status="dry-run"))
    recs = records.load_records(root / "results").records
    assert records.best_record(recs, "01-alpha")["tier"] == "gpu"
    assert records.best_record(recs, "02-beta") is None          # smoke only
    assert records.best_record(recs, "03-gamma") is None


# -- results page ------------------------------------------------------------------------
def _table_rows(md: str) -> list[list[str]]:
    """Body rows of the results table (between the ':::{table}' fence and its end)."""
    block = md.split(":::{table}", 1)[1].split("\n:::", 1)[0]
    lines = [ln for ln in block.splitlines() if ln.startswith("|")][2:]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in lines]


def test_write_results_one_row_per_claim_without_smoke(project):
    root, specs = project
    path = book.write_results(None, specs)
    assert path == root / "book" / "results.md"
    md = path.read_text()
    rows = _table_rows(md)
    assert len(rows) == 2                                  # the two claims of 01-alpha's cpu record
    header = ["paper", "claim", "metric", "paper value", "ours", "difference", "verdict", "tier",
              "seeds", "cost"]
    assert all(len(r) == len(header) for r in rows)
    effect, absolute = rows
    assert effect[0] == "{doc}`01-alpha <chapters/01-alpha>`"     # a chapter exists: linked
    assert effect[1].startswith("alpha beats the baseline")
    assert effect[2] == "`delta_top1`"
    assert effect[3] == "+1.5 pts"
    assert effect[4].startswith("+0.93 ± 0.15<br><small>[")
    assert effect[5] == "-0.57"
    assert effect[6] == '<span class="verdict verdict-reproduced">reproduced</span>'
    assert effect[7:9] == ["cpu", "3"]
    assert "123 s" in effect[9] and "4,000 img/s" in effect[9]
    assert absolute[6] == '<span class="verdict verdict-budget-limited">budget-limited</span>'
    # Smoke records never show: not their values, nor beta's only (smoke) record.
    assert "-5.50" not in md and "smoke" not in "".join(r[7] for r in rows)
    missing = md.split("## Papers without a record yet", 1)[1].split("\n## ", 1)[0]
    assert "02-beta" in missing and "03-gamma" in missing and "not yet run" in missing
    assert "01-alpha" not in missing
    assert "generated from `results/01-alpha.cpu.json`, run `run-alpha-cpu` at commit `abcdef123456`" in md
    # the CSV has the same rows
    with open(root / "results" / "results.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [(r["paper"], r["claim_id"], r["tier"], r["verdict"]) for r in csv_rows] == [
        ("01-alpha", "main", "cpu", "reproduced"), ("01-alpha", "abs", "cpu", "budget-limited")]
    assert float(csv_rows[0]["ours_mean"]) == pytest.approx(0.9333, abs=1e-3)
    assert csv_rows[0]["record"] == "results/01-alpha.cpu.json"


def test_write_results_without_records_and_with_bench(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("REPRO_BOOK", str(tmp_path / "book"))
    specs = [fake_spec(7, "delta")]
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "bench.json").write_text(json.dumps({"runs": [
        {"model": "resnet20", "device": "cpu", "device_name": "CPU (2 threads)", "dtype": "fp32",
         "batch_size": 128, "images_per_s": 450.3, "when": "2025-01-02T03:04:05+00:00"}]}))
    md = book.write_results(None, specs).read_text()
    assert ":::{table}" not in md and "No finished cpu, gpu or paper run yet" in md
    assert "| 07-delta | The delta paper | distillation | not yet run |" in md
    assert "| resnet20 | CPU (2 threads) | fp32 | 128 | 450 | 2025-01-02 |" in md
    assert (tmp_path / "results" / "results.csv").read_text().startswith("paper,title,")
    assert not list(tmp_path.rglob("*.tmp"))                # atomic writes leave nothing behind


def test_verdict_badges_have_styles():
    css = (PROJECT / "book" / "_static" / "verdicts.css").read_text()
    for v in (*verdicts.VERDICTS, book.UNVERIFIED):
        badge = book.verdict_badge(v)
        cls = re.search(r'class="verdict (verdict-[a-z-]+)"', badge).group(1)
        assert f".{cls} " in css, f"no style for {cls}"


def test_ensure_mathjax_copies_from_node_modules_or_explains(tmp_path, monkeypatch):
    monkeypatch.setattr(book.site.shutil, "which", lambda name: None)  # no npm here
    with pytest.raises(RuntimeError, match="install Node.js/npm or copy tex-svg.js"):
        book.ensure_mathjax(tmp_path)
    src = tmp_path / ".cache-npm" / "node_modules" / "mathjax" / "es5" / "tex-svg.js"
    src.parent.mkdir(parents=True)
    src.write_text("/* mathjax */")
    dest = book.ensure_mathjax(tmp_path)
    assert dest == tmp_path / "book" / "_static" / "mathjax" / "tex-svg.js"
    assert dest.read_text() == "/* mathjax */"


# -- table of contents -------------------------------------------------------------------
def test_write_toc_lists_only_existing_chapters(project):
    root, specs = project
    toc = yaml.safe_load(book.write_toc(root, specs).read_text())
    assert toc["format"] == "jb-book" and toc["root"] == "book/intro"
    parts = toc["parts"]
    assert [c["file"] for c in parts[0]["chapters"]] == ["book/protocol", "book/results"]
    assert [(p["caption"], [c["file"] for c in p["chapters"]]) for p in parts[1:]] == [
        ("Distillation", ["book/chapters/01-alpha", "book/chapters/03-gamma"])]   # no beta chapter
    assert book.toc_documents(root)[0] == "book/intro"


def test_write_toc_without_chapters(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_BOOK", str(tmp_path / "book"))
    toc = yaml.safe_load(book.write_toc(tmp_path, [fake_spec(1, "alpha")]).read_text())
    assert toc == {"format": "jb-book", "root": "book/intro",
                   "chapters": [{"file": "book/protocol"}, {"file": "book/results"}]}


# -- the pages say what the code does ----------------------------------------------------
def _squash(text: str) -> str:
    return " ".join(text.split())


def test_protocol_prints_the_verdict_rule_the_code_applies():
    rule = verdicts.__doc__.split("\n", 1)[1].strip()        # after the one-line summary
    protocol = _squash((PROJECT / "book" / "protocol.md").read_text())
    paragraphs = [p for p in re.split(r"\n\s*\n|\n(?=\* )", rule) if p.strip()]
    assert len(paragraphs) >= 6
    for p in paragraphs:
        assert _squash(p) in protocol, f"protocol.md does not print this part of the rule:\n{p}"


def test_intro_tiers_table_matches_repro_tiers():
    intro = (PROJECT / "book" / "intro.md").read_text()
    for tier, text in TIERS.items():
        assert f"| {tier} | {text} |" in intro
    protocol = (PROJECT / "book" / "protocol.md").read_text()
    for tier in TIERS:
        assert f"| {tier} |" in protocol


def test_check_html_flags_error_output(tmp_path):
    html = tmp_path / "_build" / "html"
    (html / "book").mkdir(parents=True)
    (html / "index.html").write_text("<html><body><p>Error bars are fine in prose.</p></body></html>")
    (html / "book" / "clean.html").write_text(
        '<div class="cell_output docutils container"><div class="output text_plain">'
        "<pre>top-1 error rate 23.1</pre></div></div>")
    (html / "book" / "bad.html").write_text(
        '<div class="cell_output docutils container">'
        '<div class="output stderr highlight-myst-ansi"><pre>warning</pre></div>'
        '<div class="output text_plain"><pre><span class="-Color -Color-Red">ValueError: boom</span>'
        "</pre></div></div><pre>Traceback (most recent call last)</pre>")
    problems = book.check_html(tmp_path)
    assert problems and all(p.startswith("book/bad.html") for p in problems)
    joined = "\n".join(problems)
    for what in ("traceback", "stderr", "red ANSI", "ValueError"):
        assert what in joined


# -- the real build (slow) ---------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A copy of the project's book, results and config, built once (plus one fake record,
    so the results table and its badges are always exercised)."""
    book.ensure_mathjax(PROJECT)
    root = tmp_path_factory.mktemp("book")
    shutil.copy2(PROJECT / "_config.yml", root / "_config.yml")
    shutil.copytree(PROJECT / "book", root / "book",
                    ignore=shutil.ignore_patterns(".*", "*.failed.ipynb", "__pycache__"))
    if (PROJECT / "results").is_dir():
        shutil.copytree(PROJECT / "results", root / "results")
    write_record(root, fake_record(fake_spec(99, "fakepaper"), "cpu", [0.5, -0.1, 0.3]))
    index = book.build(root)
    return root, index


@pytest.mark.slow
def test_book_builds_without_errors(built):
    root, index = built
    assert index == root / "_build" / "html" / "index.html" and index.is_file()
    assert book.check_html(root) == []
    for doc in book.toc_documents(root):
        assert (root / "_build" / "html" / f"{doc}.html").is_file(), doc
    results = (root / "_build" / "html" / "book" / "results.html").read_text()
    assert '<span class="verdict verdict-partly">partly</span>' in results
    assert "99-fakepaper" in results and "verdicts.css" in results
    # every executed chapter shows its claim-vs-ours table as a table, not as pipes in a paragraph
    for page in sorted((root / "_build" / "html" / "book" / "chapters").glob("*.html")):
        text = page.read_text()
        assert re.search(r"<table[^>]*>.*?verdict.*?</table>", text, re.S), f"{page.name}: no claims table"
        assert "| --- |" not in text and "| — |" not in text, f"{page.name}: a Markdown table was not rendered"


@pytest.mark.slow
def test_mathjax_is_served_locally(built):
    root, _ = built
    html = root / "_build" / "html"
    assert (html / "_static" / "mathjax" / "tex-svg.js").stat().st_size > 1_000_000
    protocol = (html / "book" / "protocol.html").read_text()
    assert re.search(r'<script[^>]+src="\.\./_static/mathjax/tex-svg\.js', protocol)
    for page in html.rglob("*.html"):
        text = page.read_text()
        assert not re.search(r"(cdn\.jsdelivr|cdnjs|mathjax\.org|polyfill\.io)", text), page
        assert not re.search(r'<(script|link)[^>]+(src|href)="(https?:)?//', text), page


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _browse(url: str, *extra: str) -> subprocess.CompletedProcess:
    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium on PATH (apt-get install -y chromium; .ci/run installs it)")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
                              capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_page_renders_in_a_browser(built, tmp_path):
    import matplotlib.image as mpimg
    import numpy as np

    root, _ = built
    html = root / "_build" / "html"
    chapters = sorted((html / "book" / "chapters").glob("*.html"))
    page = chapters[0] if chapters else html / "book" / "results.html"
    shot = tmp_path / "shot.png"
    proc = _browse(page.as_uri(), f"--screenshot={shot}", "--window-size=1280,2000",
                   "--virtual-time-budget=3000")
    assert shot.is_file(), proc.stderr[-2000:]
    img = np.asarray(mpimg.imread(shot))[..., :3]
    assert img.shape[:2] == (2000, 1280)
    assert img.std() > 0.05, "the screenshot is (nearly) one colour"
    non_white = (img < 0.94).any(axis=-1).mean()
    assert non_white > 0.02, f"only {non_white:.1%} of the pixels are not white"


@pytest.mark.slow
def test_math_is_typeset_by_the_local_mathjax(built):
    root, _ = built
    page = root / "_build" / "html" / "book" / "protocol.html"
    proc = _browse(page.as_uri(), "--dump-dom", "--virtual-time-budget=5000")
    assert "<mjx-container" in proc.stdout, "MathJax did not typeset the protocol page"
    assert 'jax="SVG"' in proc.stdout
