"""The book: its results page (:mod:`repro.book.results`) and the site built around the executed
chapters (:mod:`repro.book.site`)."""
from .results import (UNVERIFIED, chapter_path, result_rows, shown_records, shown_verdict, verdict_badge,
                      write_results)
from .site import build, check_html, ensure_mathjax, toc_documents, write_toc

__all__ = ["UNVERIFIED", "build", "chapter_path", "check_html", "ensure_mathjax", "result_rows", "shown_records",
           "shown_verdict", "toc_documents", "verdict_badge", "write_results", "write_toc"]
