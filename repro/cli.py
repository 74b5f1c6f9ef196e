"""The ``repro`` command: list papers, show one, run chapters, build the book, data, bench."""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

EPILOG = """examples:
  repro list                                   papers, their latest record and verdict
  repro show ghostbn                           claim, parameters and tier values of a paper
  repro run ghostbn --tier cpu                 execute the chapter (papermill) at the cpu tier
  repro run msdropout --tier cpu -p seeds "[0, 1, 2]" -p epochs 20
  repro run --all --tier smoke                 every chapter, quickly
  repro results                                regenerate book/results.md and results/results.csv
  repro book                                   build the HTML book into _build/html
  repro data unpack ../shared/data             assemble the project's verified CIFAR-100 copy
  repro data download                          fetch the official archive (needs network)
  repro bench                                  training images/s of ResNet-18/20 and a ViT here
  repro run pld --tier gpu --dry-run           check that the gpu tier runs, one step per fit
  repro teachers                               stored distillation teachers
"""


def _parse_value(text: str) -> Any:
    """A -p value: a Python literal if it parses as one ("3", "0.1", "[0, 1]", "True"), else text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def cmd_list(args: argparse.Namespace) -> int:
    from .book import best_record, load_records
    from .papers import all_specs
    from .records import project_root

    records = load_records(project_root())
    print(f"{'paper':<18} {'family':<22} {'tier':<6} verdict")
    for spec in all_specs():
        rec = best_record(records, spec.name)
        tier, verdict = (rec["tier"], rec["verdict"]) if rec else ("—", "not yet run")
        print(f"{spec.name:<18} {spec.family:<22} {tier:<6} {verdict}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .papers import load_spec

    spec = load_spec(args.slug)
    i = spec.info
    print(f"{spec.name}: {spec.title}")
    print(f"  {i.get('authors', '')} ({i.get('venue', '')} {i.get('year', '')}), arXiv {i.get('arxiv', '—')}, "
          f"code: {i.get('code', 'none')}")
    print(f"\nClaim: {i.get('claim', '')}\n\nClaims judged:")
    for c in spec.claims:
        pv = "unknown" if c.paper_value is None else f"{c.paper_value:g} {c.unit}"
        print(f"  - [{c.id}] {c.text} (metric {c.metric}, {c.kind}, paper {pv}, {c.source})")
    print("\nParameters (paper-tier defaults):")
    print(spec.help_text())
    for t, over in spec.tiers.items():
        print(f"\nTier {t}: " + ", ".join(f"{k}={v!r}" for k, v in over.items()))
    return 0


def run_notebook(name: str, tier: str, overrides: dict[str, Any], output: Path | None = None,
                 progress: bool = True) -> Path:
    """Execute ``notebooks/NAME.ipynb`` with papermill; returns the executed copy's path.

    Parameters are validated first (unknown or ill-typed → ParameterError, nothing runs).
    The executed copy goes to ``book/chapters/NAME.ipynb`` unless ``output`` is given;
    it is written to a temporary file and moved into place only if execution succeeded.
    """
    import papermill as pm

    from .papers import load_spec
    from .records import project_root, results_dir

    spec = load_spec(name)
    spec.resolve(tier, overrides)
    root = project_root()
    src = root / "notebooks" / f"{spec.name}.ipynb"
    if not src.is_file():
        raise FileNotFoundError(f"no notebook {src}")
    from .train import dry_run

    # A dry run's executed copy must not replace the book's chapter.
    default_dir = results_dir() / "dry-run" if dry_run() else root / "book" / "chapters"
    out = Path(output) if output else default_dir / f"{spec.name}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.running.ipynb")
    try:
        pm.execute_notebook(str(src), str(tmp), parameters={"tier": tier, **overrides},
                            cwd=str(src.parent), progress_bar=progress, kernel_name="python3")
        os.replace(tmp, out)
    except BaseException:
        failed = out.with_name(f"{out.stem}.failed.ipynb")
        if tmp.exists():
            os.replace(tmp, failed)
            print(f"execution failed; the partly executed copy is {failed}", file=sys.stderr)
        raise
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from .papers import ParameterError, all_specs
    from .train import DRY_RUN_ENV

    if args.dry_run:  # inherited by the papermill kernel
        os.environ[DRY_RUN_ENV] = "1"

    overrides = {k: _parse_value(v) for k, v in (args.param or [])}
    names = [s.name for s in all_specs()] if args.all else [args.slug]
    if not args.all and not args.slug:
        print("repro run: name a paper (repro list) or pass --all", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        t0 = time.time()
        try:
            out = run_notebook(name, args.tier, overrides, Path(args.output) if args.output and not args.all else None)
        except ParameterError as exc:
            print(f"repro run: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:  # keep going with --all, report at the end
            print(f"{name}: FAILED ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                  file=sys.stderr)
            failed.append(name)
            continue
        print(f"{name}: tier {args.tier} done in {time.time() - t0:.0f} s → {out}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from .book import write_results
    from .records import project_root

    print(write_results(project_root()))
    return 0


def cmd_book(args: argparse.Namespace) -> int:
    from .book import build, check_html
    from .records import project_root

    root = project_root()
    index = build(root)
    problems = check_html(root)
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    print(f"book built: open {index}")
    return 1 if problems else 0


def cmd_data(args: argparse.Namespace) -> int:
    from . import data

    root = Path(args.root) if args.root else data.default_root()
    try:
        if args.action == "where":
            print(root)
        elif args.action == "verify":
            for name, kind in data.verify(root).items():
                print(f"{name}: ok ({kind})")
        elif args.action == "download":
            data.download(root)
            print(f"CIFAR-100 ready in {root}")
        elif args.action == "unpack":
            if not args.source:
                print("repro data unpack SOURCE: the folder with cifar-100-python.tar.xz.part0..3", file=sys.stderr)
                return 2
            data.unpack_parts(Path(args.source), root)
            print(f"CIFAR-100 ready in {root}")
    except data.DataError as exc:
        print(f"repro data: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench

    for row in bench(args.models, steps=args.steps, batch_size=args.batch_size, device=args.device):
        print(f"{row['model']:<14} {row['device_name']:<40} bs {row['batch_size']:<4} "
              f"{row['dtype']:<5} {row['images_per_s']:>10,.0f} img/s")
    return 0


def cmd_teachers(args: argparse.Namespace) -> int:
    from . import teachers

    rows = teachers.stored()
    if not rows:
        print(f"no stored teachers (cache: {teachers.cache_dir()}); a distillation chapter trains its "
              "teacher on first use")
        return 0
    for r in rows:
        print(f"{r['where']:<9} {r['arch']:<10} {r['classes']:>3} cls  top-1 {r['test_acc']:5.1f}%  "
              f"{r['bytes'] / 2**20:6.1f} MB  {r['folder']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="repro", description="Test the headline CIFAR-100 claims of "
                                "deep-learning papers: run chapters, keep records, build the book.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("list", help="papers, the tier of their latest record, and its verdict")
    s.set_defaults(func=cmd_list)
    s = sub.add_parser("show", help="a paper's claims, parameters and tier values")
    s.add_argument("slug", help="paper slug or NN-slug, e.g. ghostbn")
    s.set_defaults(func=cmd_show)
    s = sub.add_parser("run", help="execute a chapter with papermill (record → results/, copy → book/chapters/)")
    s.add_argument("slug", nargs="?", help="paper slug (omit with --all)")
    s.add_argument("--tier", required=True, choices=["smoke", "cpu", "gpu", "paper"],
                   help="smoke: seconds (CI) · cpu: ≤ 5 min on 2 cores · gpu: ≤ 10 min on one H100 · paper: full schedule")
    s.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="override a parameter (a Python literal); repeat for several")
    s.add_argument("--all", action="store_true", help="run every chapter")
    s.add_argument("--output", help="where to write the executed notebook (default book/chapters/NN-slug.ipynb)")
    s.add_argument("--dry-run", action="store_true",
                   help="one training step per fit and one batch per evaluation, nothing stored in the book: "
                        "checks that a tier's code path runs (e.g. --tier gpu on a CPU)")
    s.set_defaults(func=cmd_run)
    s = sub.add_parser("results", help="regenerate book/results.md and results/results.csv from the records")
    s.set_defaults(func=cmd_results)
    s = sub.add_parser("book", help="build the HTML book from the stored executed chapters (never trains)")
    s.set_defaults(func=cmd_book)
    s = sub.add_parser("data", help="CIFAR-100: where it is, verify, download, or unpack the verified copy")
    s.add_argument("action", choices=["where", "verify", "download", "unpack"])
    s.add_argument("source", nargs="?", help="for unpack: folder with cifar-100-python.tar.xz.part0..3")
    s.add_argument("--root", help="data folder (default $REPRO_DATA or ~/.cache/repro/data)")
    s.set_defaults(func=cmd_data)
    s = sub.add_parser("bench", help="training images/s of ResNet-18, ResNet-20 and a ViT on this device (recorded)")
    s.add_argument("--models", nargs="+", default=["resnet18", "resnet20", "vit_tiny_p4"])
    s.add_argument("--steps", type=int, default=None, help="timed steps per model (default: 5 on CPU, 50 on GPU)")
    s.add_argument("--batch-size", type=int, default=None, help="default: 128 on CPU, 512 on GPU")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_bench)
    s = sub.add_parser("teachers", help="stored distillation teachers (committed and cached), with accuracy and size")
    s.set_defaults(func=cmd_teachers)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
