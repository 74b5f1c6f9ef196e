"""The book: its results page (:mod:`repro.book.results`), what it adds to each executed
chapter (:mod:`repro.book.chapter`), the catalogue of its papers (:mod:`repro.book.catalog`)
and the site built around the executed chapters (:mod:`repro.book.site`)."""
from .catalog import load_catalog
from .chapter import refresh_chapter, refresh_chapter_file, refresh_chapters, verdict_box
from .results import (UNVERIFIED, chapter_path, result_rows, rule_markdown, shown_papers, shown_records,
                      shown_verdict, verdict_badge, write_generated, write_results)
from .site import build, check_html, ensure_mathjax, toc_documents, write_toc

__all__ = ["UNVERIFIED", "build", "chapter_path", "check_html", "ensure_mathjax", "load_catalog", "refresh_chapter",
           "refresh_chapter_file", "refresh_chapters", "result_rows", "rule_markdown", "shown_papers", "shown_records",
           "shown_verdict", "toc_documents", "verdict_badge", "verdict_box", "write_generated", "write_results",
           "write_toc"]
