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

import numpy as np
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
    """A record shaped like ``repro.run.Run.finish`` writes (schema 3), judged by the real rule."""
    top1 = [60.0 + i for i in range(len(delta))]
    metrics = {}
    for name, vals in (("delta_top1", delta), ("top1", top1)):
        iv = verdicts.interval(vals)
        metrics[name] = {"per_seed": {str(i): v for i, v in enumerate(vals)},
                         **{k: iv[k] for k in ("mean", "std", "ci_low", "ci_high", "n")}}
    claims = []
    for c in spec.claims:
        iv = verdicts.interval(list(metrics[c.metric]["per_seed"].values()))
        ours = {k: iv[k] for k in ("mean", "std", "ci_low", "ci_high", "n")}
        ev = verdicts.Evidence(dict(metrics[c.metric]["per_seed"]))
        v, reason = verdicts.judge(c, ev, tier) if status == "complete" else (None, "dry run")
        comp = verdicts.comparable(c, tier)
        claims.append({**c.__dict__, "tiers": list(c.tiers), "comparable": comp,
                       "comparable_tiers": list(c.comparable), "key": c.key, "ours": ours,
                       "difference": ours["mean"] - c.paper_value if comp else None,
                       "verdict": v, "reason": reason, "evidence": {"test_var": 0.0, "flags": []},
                       "mde": verdicts.smallest_detectable(iv["std"], 0.0, iv["n"]),
                       "seeds_needed": verdicts.seeds_needed(c.paper_value, iv["std"], 0.0)})
    return {
        "schema": 3, "run_id": run_id or f"run-{spec.slug}-{tier}",
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
def _tables(md: str) -> dict[str, list[list[str]]]:
    """Body rows of every ':::{table}' block of a page, by the block's :name:."""
    out = {}
    for block in md.split(":::{table}")[1:]:
        block = block.split("\n:::", 1)[0]
        name = re.search(r"^:name: (\S+)", block, re.M).group(1)
        lines = [ln for ln in block.splitlines() if ln.startswith("|")][2:]
        out[name] = [[c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in lines]
    return out


def _paper(cell_text: str) -> str:
    m = re.match(r"\{doc\}`(\S+) <", cell_text)
    return m.group(1) if m else cell_text


def test_write_results_summary_then_claims_by_family(project):
    root, specs = project
    path = book.write_results(None, specs)
    assert path == root / "book" / "results.md"
    md = path.read_text()
    tables = _tables(md)
    assert md.index(":name: results-summary") < md.index("## Claims by family") < md.index(":name: results-distillation")
    # verdict counts per tier: one cpu paper with two claims
    [tier_row] = tables["results-tiers"]
    assert tier_row[:2] == ["cpu", "1"] and tier_row[3] == "2"
    assert tier_row[2] == '<span class="verdict verdict-reproduced">reproduced</span> 1'
    assert "budget-limited</span> 1" in tier_row[4]
    # the summary: one row per paper, from its headline claim
    [summary] = tables["results-summary"]
    assert len(summary) == len(book.results.SUMMARY_HEADER)
    assert summary[0] == "{doc}`01-alpha <chapters/01-alpha>`"            # a chapter exists: linked
    assert summary[1] == '<span title="alpha beats the baseline">alpha beats the baseline</span>'
    assert summary[2] == '<span class="verdict verdict-reproduced">reproduced</span>'
    assert summary[3:5] == ["cpu", "3"]
    mde = verdicts.smallest_detectable(float(np.std([0.8, 1.1, 0.9], ddof=1)), 0.0, 3)
    assert summary[5].startswith(f"{mde:.2f} pts")
    # every claim, grouped by family
    effect, absolute = tables["results-distillation"]
    assert len(effect) == len(book.results.CLAIM_HEADER)
    assert effect[1].startswith("alpha beats the baseline<br><small>95% CI")
    assert effect[2] == "`delta_top1`" and effect[3] == "+1.5 pts"
    assert effect[4].startswith("+0.93 ± 0.15<br><small>[")
    assert effect[5] == "—"                      # the cpu tier is not comparable: no difference vs paper
    assert effect[7] == '<span class="verdict verdict-reproduced">reproduced</span>' and effect[8] == "3"
    assert absolute[7] == '<span class="verdict verdict-budget-limited">budget-limited</span>'
    # Smoke records never show: not their values, nor beta's only (smoke) record.
    assert "-5.50" not in md and [_paper(r[0]) for r in tables["results-summary"]] == ["01-alpha"]
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
    assert csv_rows[0]["record"] == "results/01-alpha.cpu.json" and csv_rows[0]["difference"] == ""
    assert float(csv_rows[0]["mde"]) == pytest.approx(mde) and csv_rows[0]["synthesis"] == "False"


def test_results_count_tiers_and_synthesis_apart_and_compare_only_comparable_settings(project):
    root, specs = project
    synth = PaperSpec(number=42, slug="compare", title="Alpha and gamma compared", family="distillation",
                      info={"synthesis": True}, params={}, tiers={}, claims=fake_spec(42, "compare").claims)
    specs = [*specs, synth]
    write_record(root, fake_record(specs[2], "paper", [1.2, 1.6, 1.4]))        # gamma at the paper tier
    write_record(root, fake_record(synth, "cpu", [-0.5, -0.7, -0.6]))
    fake_chapter(root, specs[2].name, "run-gamma-paper", "paper")
    fake_chapter(root, synth.name, "run-compare-cpu")
    md = book.write_results(None, specs).read_text()
    tables = _tables(md)
    assert "**2 papers with a record (4 claims)**, and 1 synthesis chapter" in md
    assert [r[:2] for r in tables["results-tiers"]] == [["paper", "1"], ["cpu", "1"]]
    assert [_paper(r[0]) for r in tables["results-summary"]] == ["01-alpha", "03-gamma"]
    [srow] = tables["results-synthesis"]
    assert _paper(srow[0]) == "42-compare" and srow[2] == '<span class="verdict verdict-not-reproduced">not reproduced</span>'
    gamma = [r for r in tables["results-distillation"] if "03-gamma" in r[0]]
    assert [r[5] for r in gamma] == ["-0.10", "-9.00"]   # the paper tier is comparable: ours − paper
    assert all(r[5] == "—" for r in tables["results-distillation"] if "01-alpha" in r[0])


def test_shorten_keeps_the_claim_and_drops_its_parenthesis():
    shorten = book.results.shorten
    assert shorten("LB+RA ends as accurate as SB (final test top-1, RA − SB)") == "LB+RA ends as accurate as SB"
    long = "word " * 40
    assert shorten(long).endswith("…") and len(shorten(long)) <= 91


def test_schema_1_records_still_render(project):
    root, specs = project
    old = json.loads((root / "results" / "01-alpha.cpu.json").read_text())
    old["schema"] = 1
    for k in ("run_id", "overrides", "rows"):
        old.pop(k)
    for c in old["claims"]:
        for k in ("mde", "seeds_needed", "comparable", "margin", "evidence"):
            c.pop(k, None)
    write_record(root, old)
    tables = _tables(book.write_results(None, specs).read_text())
    [summary] = tables["results-summary"]
    assert summary[5] == "—" and all(r[5] == "—" and r[6] == "—" for r in tables["results-distillation"])


# -- the chapter's verdict box, collapsed cells, figure captions -------------------------
def _nb(*cells: dict) -> dict:
    return {"cells": list(cells), "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def _md(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def _code(text: str, tags=(), outputs=()) -> dict:
    return {"cell_type": "code", "metadata": {"tags": list(tags)}, "source": text, "outputs": list(outputs),
            "execution_count": 1}


def test_verdict_box_says_verdict_reason_tier_seeds_and_run(project):
    rec = fake_record(fake_spec(1, "alpha"), "cpu", [0.8, 1.1, 0.9])
    box = book.verdict_box(rec)
    assert box.startswith('<div class="verdict-box" data-verdict="reproduced">')
    assert '<span class="verdict verdict-reproduced">reproduced</span>' in box
    reason = rec["claims"][0]["reason"]
    assert reason[:1].upper() + reason[1:] + "." in box.replace("&gt;", ">")
    assert "tier <b>cpu</b> · 3 seeds · run <code>run-alpha-cpu</code>" in box
    assert "<code>results/01-alpha.cpu.json</code>" in box and 'href="../protocol.html#verdict-rule"' in box
    bad = {**rec, "_audit": records.Audit(integrity=["its figures come from another run"])}
    assert 'data-verdict="unverified"' in book.verdict_box(bad)
    assert "This record fails its audit: its figures come from another run." in book.verdict_box(bad)


def test_refresh_chapter_inserts_the_box_collapses_parameters_and_captions_figures(tmp_path):
    rec = fake_record(fake_spec(1, "alpha"), "cpu", [0.8, 1.1, 0.9])
    rec["figures"] = {"top1_by_arm": "figures/01-alpha/cpu/top1_by_arm.png"}
    side = tmp_path / "figures" / "01-alpha" / "cpu" / "top1_by_arm.json"
    side.parent.mkdir(parents=True)
    side.write_text(json.dumps({"title": "Top-1 by arm", "setting": "01-alpha · tier cpu · seeds 0,1,2",
                                "alt": "Bars of top-1 (%) for CE and KD."}))
    png = {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBOR", "text/plain": "<Figure>"}}
    table = {"output_type": "display_data", "metadata": {},
             "data": {"text/markdown": "| claim | verdict |\n| --- | --- |\n| a | **reproduced** |\n| b | **inconclusive** |"}}
    nb = _nb(_md("# 01 · Alpha\n\nThe claim."), _code('tier = "paper"', ["parameters"]),
             _code('tier = "cpu"', ["injected-parameters"]), _md("## Evidence\n\nTop-1 per **arm**, $x$."),
             _code('run.figure(fig, "top1_by_arm", data)\nplt.show()', outputs=[png]),
             _code("run.report()", outputs=[table]))
    book.refresh_chapter(nb, rec, tmp_path)
    cells = nb["cells"]
    assert cells[1]["metadata"]["tags"] == ["verdict-box"] and cells[1]["source"] == book.verdict_box(rec)
    assert cells[2]["metadata"]["tags"] == ["parameters", "hide-cell"]
    assert cells[3]["metadata"]["tags"] == ["injected-parameters", "hide-cell"]
    assert cells[5]["metadata"]["mystnb"] == {
        "figure": {"caption": "Top-1 by arm. 01-alpha · tier cpu · seeds 0,1,2", "name": "fig-01-alpha-top1-by-arm"},
        "image": {"alt": "Bars of top-1 (%) for CE and KD."}}
    md = cells[6]["outputs"][0]["data"]["text/markdown"]
    assert '| <span class="verdict verdict-reproduced">reproduced</span> |' in md
    assert '| <span class="verdict verdict-inconclusive">inconclusive</span> |' in md
    # idempotent, and refreshed from a changed record
    again = json.loads(json.dumps(nb))
    book.refresh_chapter(again, rec, tmp_path)
    assert again == nb
    rec2 = fake_record(fake_spec(1, "alpha"), "cpu", [-0.8, -1.1, -0.9], run_id="run-2")
    rec2["figures"] = rec["figures"]
    book.refresh_chapter(again, rec2, tmp_path)
    boxes = [c for c in again["cells"] if "verdict-box" in c["metadata"].get("tags", [])]
    assert len(boxes) == 1 and 'data-verdict="not reproduced"' in boxes[0]["source"] and "run-2" in boxes[0]["source"]
    assert again["cells"][2]["metadata"]["tags"].count("hide-cell") == 1


def test_refresh_chapter_without_sidecar_captions_from_the_prose(tmp_path):
    rec = fake_record(fake_spec(1, "alpha"), "cpu", [0.8, 1.1, 0.9])
    rec["figures"] = {"curves": "figures/01-alpha/cpu/curves.png"}
    png = {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBOR"}}
    nb = _nb(_md("# Alpha"), _md("Test accuracy per epoch, one line per arm. More text."),
             _code('run.figure(fig, "curves")', outputs=[png]))
    book.refresh_chapter(nb, rec, tmp_path)
    meta = nb["cells"][3]["metadata"]["mystnb"]
    assert meta["figure"]["caption"] == "Curves"
    assert meta["image"]["alt"] == "Figure: Curves. Test accuracy per epoch, one line per arm. More text."


def test_stored_chapters_are_refreshed_and_current():
    """Every stored chapter carries the box and the collapsed parameters (``repro book``
    refreshes them; a refresh from the current records changes nothing more)."""
    for path in sorted((PROJECT / "book" / "chapters").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        tags = [c["metadata"].get("tags", []) for c in nb["cells"]]
        assert sum("verdict-box" in t for t in tags) == 1, path.name
        assert all("hide-cell" in t for t in tags if "parameters" in t or "injected-parameters" in t), path.name


def test_stamping_a_run_adds_the_box_from_the_record_beside_the_notebook(tmp_path):
    from repro.publish import stamp_notebook

    rec = fake_record(fake_spec(1, "alpha"), "cpu", [0.8, 1.1, 0.9], run_id="r-42")
    (tmp_path / "01-alpha.cpu.json").write_text(json.dumps(rec))
    path = tmp_path / "01-alpha.ipynb"
    path.write_text(json.dumps(_nb(_md("# Alpha"), _code('tier = "paper"', ["parameters"]))))
    stamp_notebook(path, "r-42", "cpu", {})
    nb = json.loads(path.read_text())
    assert nb["metadata"]["repro"] == {"run_id": "r-42", "tier": "cpu", "overrides": {}}
    assert nb["cells"][1]["metadata"]["tags"] == ["verdict-box"] and "run <code>r-42</code>" in nb["cells"][1]["source"]
    assert nb["cells"][2]["metadata"]["tags"] == ["parameters", "hide-cell"]


# -- the catalogue and the intro's list of papers ----------------------------------------
def test_catalog_lists_the_41_papers():
    cat = book.load_catalog()
    assert [e.number for e in cat] == list(range(1, 42))
    assert len({e.slug for e in cat}) == 41 and all(e.title and e.family for e in cat)
    ghost = cat[40]
    assert (ghost.name, ghost.family) == ("41-ghostbn", "training")
    assert ghost.title.startswith("Train longer, generalize better")


def test_paper_list_marks_chapters_with_verdicts_and_planned_papers(project):
    root, specs = project
    text = book.results.paper_list(records.audited(root / "results", root / "book" / "chapters").records, specs)
    rows = [ln for ln in text.splitlines() if re.match(r"\| \d+ \|", ln)]
    assert len(rows) == 41
    first = rows[0]          # catalogue paper 1 is 01-oca: neither a fake chapter nor a record here
    assert first.startswith("| 1 | Backward-Compatible") and first.endswith("| planned |")
    text_real = (PROJECT / "book" / "_generated" / "papers.md").read_text()
    assert "planned" in text_real and "chapter (<span class=\"verdict" in text_real
    assert "```{include} _generated/papers.md" in (PROJECT / "book" / "intro.md").read_text()


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
    assert "| resnet20 | CPU (2 threads) | fp32 | NCHW | 128 | 450 | 2025-01-02 |" in md
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
    """The Protocol page includes the rule from one source, repro.verdicts.RULE_MARKDOWN,
    through the file ``repro book`` generates; it holds no hand-written copy."""
    protocol = (PROJECT / "book" / "protocol.md").read_text()
    assert "```{include} _generated/verdict-rule.md" in protocol
    generated = (PROJECT / "book" / "_generated" / "verdict-rule.md").read_text()
    assert generated.endswith(book.rule_markdown())
    rule = getattr(verdicts, "RULE_MARKDOWN", None) or verdicts.__doc__.split("\n", 1)[1]
    assert _squash(rule) in _squash(generated)
    assert "*partly* — m is on the claimed side" not in protocol      # the old hand-written copy is gone


def test_generated_rule_follows_the_code(project, monkeypatch):
    monkeypatch.setattr(verdicts, "RULE_MARKDOWN", "A rule.\n\n| verdict | meaning |\n| --- | --- |\n", raising=False)
    root, specs = project
    book.write_results(None, specs)
    assert (root / "book" / "_generated" / "verdict-rule.md").read_text().endswith(
        "A rule.\n\n| verdict | meaning |\n| --- | --- |\n")


def test_css_keeps_wide_content_inside_the_page():
    css = (PROJECT / "book" / "_static" / "verdicts.css").read_text()
    assert re.search(r"\.pst-scrollable-table-container[^{]*\{[^}]*overflow-x: auto", css)
    assert re.search(r"mjx-container\[display=\"true\"\][^{]*\{[^}]*overflow-x: auto", css)
    assert ".verdict-box {" in css
    config = yaml.safe_load((PROJECT / "_config.yml").read_text())["sphinx"]["config"]
    assert config["html_theme_options"]["navbar_persistent"] == []   # one search field: the sidebar's
    assert config["numfig"] is True


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


def test_verdict_box_explains_partly():
    """A paper reads *partly* when its headline holds and another judged claim does not
    (repro.verdicts.overall); the box names that claim."""
    from repro.book.chapter import verdict_box

    rec = {"paper": {"name": "24-wa"}, "tier": "cpu", "verdict": "partly", "seeds": [0, 1, 2], "run_id": "r",
           "claims": [{"id": "gain", "verdict": "reproduced", "reason": "95% CI [+1.00, +2.00] excludes 0",
                       "ours": {"n": 3}},
                      {"id": "norms", "verdict": "not reproduced", "reason": "wrong side"}]}
    box = verdict_box(rec)
    assert 'data-verdict="partly"' in box
    assert "excludes 0. The headline claim holds, but norms is not reproduced." in box
