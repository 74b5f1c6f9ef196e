"""The ``repro`` command: list papers, show one, run chapters, build the book, data, bench."""
from __future__ import annotations

import argparse
import ast
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

EPILOG = """examples:
  repro list                                   papers, their latest record and verdict
  repro show ghostbn                           claim, parameters and tier values of a paper
  repro run ghostbn --tier cpu                 execute the chapter at the cpu tier (published: the book shows cpu)
  repro run msdropout --tier cpu -p seeds "[0, 1, 2]" -p epochs 20     (a run folder only: overrides)
  repro run msdropout --tier cpu --fresh       retrain everything: an independent replication
  repro publish ~/.cache/repro/runs/35-msdropout.cpu.RUNID    publish a run folder into the book
  repro run --all --tier smoke                 every chapter, quickly (never published)
  repro sync msdropout                         rewrite a notebook's parameters cell from its spec
  repro results                                regenerate book/results.md and results/results.csv
  repro book                                   build the HTML book into _build/html
  repro data unpack ../shared/data             assemble the project's verified CIFAR-100 (and CIFAR-10 test) copy
  repro data download                          fetch the official archives (needs network)
  repro bench                                  training images/s in fp32 and bf16 (± channels_last) here
  repro run pld --tier gpu --dry-run           check that the gpu tier runs, one step per fit
  repro teachers                               stored distillation teachers
"""


def _parse_value(text: str) -> Any:
    """A -p value: a Python literal if it parses as one ("3", "0.1", "[0, 1]", "True"), else text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _fail(exc: BaseException, prefix: str = "repro") -> int:
    """Print a user error in one paragraph and return its exit code."""
    from .errors import ReproError

    print(f"{prefix}: {exc}", file=sys.stderr)
    return exc.exit_code if isinstance(exc, ReproError) else 1


def cmd_list(args: argparse.Namespace) -> int:
    from .book import shown_records, shown_verdict
    from .papers import all_specs
    from .records import best_record

    rs = shown_records()
    print(f"{'paper':<18} {'family':<22} {'tier':<6} verdict")
    for spec in all_specs():
        rec = best_record(rs.records, spec.name)
        if rec is None:
            tier, verdict = "—", "not yet run"
        else:
            tier = rec["tier"]
            verdict = shown_verdict(rec) if rec["claims"] else "no claims"
            audit = rec["_audit"]
            if audit.integrity:
                verdict += f" ({'; '.join(audit.integrity)})"
            elif audit.provenance:
                verdict += f" (⚠ {'; '.join(audit.provenance)})"
        print(f"{spec.name:<18} {spec.family:<22} {tier:<6} {verdict}")
    for err in rs.errors:
        print(f"repro list: {err}", file=sys.stderr)
    return 1 if rs.errors else 0


def cmd_show(args: argparse.Namespace) -> int:
    from .errors import ParameterError
    from .papers import load_spec

    try:
        spec = load_spec(args.slug)
    except ParameterError as exc:
        return _fail(exc, "repro show")
    i = spec.info
    print(f"{spec.name}: {spec.title}")
    print(f"  {i.get('authors', '')} ({i.get('venue', '')} {i.get('year', '')}), arXiv {i.get('arxiv', '—')}, "
          f"code: {i.get('code', 'none')}")
    print(f"\nClaim: {i.get('claim', '')}\n\nClaims judged:")
    for c in spec.claims:
        pv = "unknown" if c.paper_value is None else f"{c.paper_value:g} {c.unit}"
        print(f"  - [{c.id}] {c.text} (metric {c.metric}, {c.kind}, paper {pv}, {c.source})")
    if spec.modules:
        print("\nImplemented in: " + ", ".join(spec.modules))
    print("\nParameters (paper-tier defaults):")
    print(spec.help_text())
    for t, over in spec.tiers.items():
        print(f"\nTier {t}: " + ", ".join(f"{k}={v!r}" for k, v in over.items()))
    return 0


class _KernelInterrupter:
    """While a chapter executes, Ctrl-C (SIGINT) or SIGTERM to ``repro run`` is passed on to
    the notebook's kernel as SIGINT: the kernel raises KeyboardInterrupt in the running cell,
    the trainer saves a checkpoint at the batch it was in, and papermill reports the
    interrupt. (The kernel runs in its own session, so a terminal's Ctrl-C never reaches it
    directly.) A second signal stops ``repro run`` at once."""

    def __init__(self) -> None:
        self.count = 0

    def _kernels(self) -> list[int]:
        try:
            import psutil
        except ImportError:  # pragma: no cover - ipykernel depends on psutil
            return []
        return [c.pid for c in psutil.Process().children(recursive=True)]

    def handler(self, signum, frame) -> None:
        self.count += 1
        if self.count > 1:
            raise KeyboardInterrupt
        print("\ninterrupting: saving a checkpoint…", file=sys.stderr)
        for pid in self._kernels():
            try:
                os.kill(pid, signal.SIGINT)
            except OSError:
                pass

    def __enter__(self) -> "_KernelInterrupter":
        self.old = {s: signal.signal(s, self.handler) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)


def execute(name: str, tier: str, overrides: dict[str, Any], folder: Path, run_id: str,
            progress: bool = True) -> Path:
    """Execute ``notebooks/NAME.ipynb`` with papermill into the run folder; returns the
    executed copy (``folder/NAME.ipynb``, stamped with the run id). On failure the partly
    executed copy is kept as ``folder/NAME.failed.ipynb`` and papermill's error propagates."""
    import papermill as pm

    from .papers import load_spec
    from .paths import project_root
    from .publish import stamp_notebook
    from .run import RUN_DIR_ENV, RUN_ID_ENV

    spec = load_spec(name)
    src = project_root() / "notebooks" / f"{spec.name}.ipynb"
    if not src.is_file():
        raise FileNotFoundError(f"no notebook {src}")
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{spec.name}.ipynb"
    tmp = folder / f".{spec.name}.running.ipynb"
    os.environ[RUN_ID_ENV], os.environ[RUN_DIR_ENV] = run_id, str(folder)  # inherited by the kernel
    try:
        with _KernelInterrupter():
            pm.execute_notebook(str(src), str(tmp), parameters={"tier": tier, **overrides},
                                cwd=str(src.parent), progress_bar=progress, kernel_name="python3")
        stamp_notebook(tmp, run_id, tier, overrides)
        os.replace(tmp, out)
    except BaseException:
        if tmp.exists():
            os.replace(tmp, folder / f"{spec.name}.failed.ipynb")
        raise
    finally:
        os.environ.pop(RUN_ID_ENV, None)
        os.environ.pop(RUN_DIR_ENV, None)
    return out


def _notebook_error(exc: BaseException) -> tuple[int, str]:
    """(exit code, one message) for an exception that ended a chapter."""
    from .errors import EXIT_CODES, INTERRUPTED_EXIT, ReproError

    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED_EXIT, "interrupted; re-run the same command to resume"
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename is not None:  # papermill: the notebook's own exception
        code = EXIT_CODES.get(ename, 1)
        if code == INTERRUPTED_EXIT:
            return code, "interrupted; re-run the same command to resume"
        return code, f"{ename}: {evalue}".rstrip(": ")
    if isinstance(exc, ReproError):
        return exc.exit_code, f"{type(exc).__name__}: {exc}"
    return 1, f"{type(exc).__name__}: {exc}"


def cmd_run(args: argparse.Namespace) -> int:
    from .errors import ParameterError
    from .papers import all_specs, load_spec
    from .run import new_run_id, run_folder
    from .modes import DRY_RUN_ENV, FRESH_ENV, dry_run

    if not args.all and not args.slug:
        print("repro run: name a paper (repro list) or pass --all", file=sys.stderr)
        return 2
    if args.all and args.output:
        print("repro run: --output names one notebook; it cannot go with --all", file=sys.stderr)
        return 2
    # Everything about the input is checked before papermill or torch is imported.
    overrides = {k: _parse_value(v) for k, v in (args.param or [])}
    if "tier" in overrides:
        if overrides.pop("tier") != args.tier:
            print(f"repro run: -p tier conflicts with --tier {args.tier}; give the tier once, with --tier",
                  file=sys.stderr)
            return 2
    try:
        names = [s.name for s in all_specs()] if args.all else [load_spec(args.slug).name]
        for name in names:
            load_spec(name).resolve(args.tier, overrides)
    except ParameterError as exc:
        return _fail(exc, "repro run")
    if args.dry_run:  # inherited by the papermill kernel
        os.environ[DRY_RUN_ENV] = "1"
    if args.fresh:
        os.environ[FRESH_ENV] = "1"
    from .publish import publish, should_publish

    try:
        for name in names:
            should_publish(args.tier, overrides, dry_run(), args.publish, name)
    except ParameterError as exc:
        return _fail(exc, "repro run")

    worst = 0
    for name in names:
        t0 = time.time()
        run_id = new_run_id()
        folder = run_folder(name, args.tier, run_id)
        try:
            out = execute(name, args.tier, overrides, folder, run_id)
        except BaseException as exc:  # noqa: BLE001 - every failure is reported the same way
            code, msg = _notebook_error(exc)
            print(f"{name}: {msg}", file=sys.stderr)
            if code != 130:
                print(f"{name}: the partly executed notebook is {folder / (name + '.failed.ipynb')}",
                      file=sys.stderr)
            if code == 130:
                return code
            worst = max(worst, code)
            continue
        if args.output:
            shutil.copyfile(out, args.output)
        ok, why = should_publish(args.tier, overrides, dry_run(), args.publish, name)
        where = f"run folder {folder}"
        if ok:
            try:
                dest = publish(folder)
            except Exception as exc:  # noqa: BLE001
                print(f"{name}: not published: {exc}", file=sys.stderr)
                worst = max(worst, 1)
                continue
            where += f"; published ({why}) → {dest['record']}, {dest['notebook']}"
        else:
            where += f"; not published: {why}"
        print(f"{name}: tier {args.tier} done in {time.time() - t0:.0f} s · {where}")
    return worst


def cmd_publish(args: argparse.Namespace) -> int:
    from .errors import RecordError
    from .publish import publish

    try:
        dest = publish(Path(args.folder))
    except RecordError as exc:
        return _fail(exc, "repro publish")
    print(f"published → {dest['record']}, {dest['figures']}, {dest['notebook']}")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from .errors import ParameterError
    from .notebooks import sync_parameters

    try:
        changed = sync_parameters(args.slug)
    except ParameterError as exc:
        return _fail(exc, "repro sync")
    print(("rewrote the parameters cell of " if changed else "already in step: ") + str(changed or args.slug))
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from .book import shown_records, write_results

    print(write_results())
    errors = shown_records().errors
    for err in errors:
        print(f"repro results: {err}", file=sys.stderr)
    return 1 if errors else 0


def cmd_book(args: argparse.Namespace) -> int:
    from .book import build, check_html
    from .paths import project_root

    root = project_root()
    try:
        index = build(root)
    except RuntimeError as exc:
        return _fail(exc, "repro book")
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
            if (root / data.cifar10.FOLDER10).is_dir():
                for name, kind in data.verify_cifar10(root).items():
                    print(f"cifar-10 {name}: ok ({kind})")
            else:
                print("cifar-10 test set: absent (the OOD chapters 31 and 44 need it: repro data download)")
        elif args.action == "download":
            data.download(root)
            print(f"CIFAR-100 ready in {root}")
            data.download_cifar10(root)
            print(f"CIFAR-10 test set (an OOD set) ready in {root}")
        elif args.action == "unpack":
            if not args.source:
                print("repro data unpack SOURCE: the folder with cifar-100-python.tar.xz.part0..3", file=sys.stderr)
                return 2
            data.unpack_parts(Path(args.source), root)
            print(f"CIFAR-100 ready in {root}")
            if (Path(args.source) / "cifar-10-test.tar.xz").is_file():
                data.unpack_cifar10(Path(args.source), root)
                print(f"CIFAR-10 test set ready in {root}")
    except data.DataError as exc:
        return _fail(exc, "repro data")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench, format_table

    rows = bench(args.models, steps=args.steps, batch_size=args.batch_size, device=args.device,
                 repeats=args.repeats,
                 min_seconds=args.min_seconds if args.min_seconds is not None else 0.0 if args.steps else 2.0)
    print(format_table(rows))
    return 0


def cmd_teachers(args: argparse.Namespace) -> int:
    from .families.distillation import teachers

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
    s = sub.add_parser("run", help="execute a chapter in its own run folder; publish it into the book when it "
                       "is a complete run at the tier the book shows",
                       description="Execute a chapter with papermill. Every run writes its executed notebook, "
                       "figures and record into its own run folder ($REPRO_RUNS, default ~/.cache/repro/runs). "
                       "A complete run at the tier the book shows for that chapter, without -p overrides, is then "
                       "published: record, figures and chapter replace the book's together. Smoke runs, dry runs "
                       "and runs with overrides never touch the book unless --publish is given (never for smoke). "
                       "Exit codes: 0 done, 1 failed, 2 bad input, 3 data missing or corrupt, 130 interrupted "
                       "(re-run the same command to resume from the last checkpoint).")
    s.add_argument("slug", nargs="?", help="paper slug (omit with --all)")
    s.add_argument("--tier", required=True, choices=["smoke", "cpu", "gpu", "paper"],
                   help="smoke: seconds (CI) · cpu: ≤ 5 min on 2 cores · gpu: ≤ 10 min on one H100 · paper: full schedule")
    s.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="override a parameter (a Python literal); repeat for several")
    s.add_argument("--all", action="store_true", help="run every chapter")
    s.add_argument("--publish", action="store_true",
                   help="publish the finished run into the book even with overrides or at another tier")
    s.add_argument("--fresh", action="store_true",
                   help="ignore earlier checkpoints and cached teachers: retrain everything (an independent replication)")
    s.add_argument("--output", help="also copy the executed notebook here")
    s.add_argument("--dry-run", action="store_true",
                   help="one training step per fit and one batch per evaluation, never published: "
                        "checks that a tier's code path runs (e.g. --tier gpu on a CPU)")
    s.set_defaults(func=cmd_run)
    s = sub.add_parser("publish", help="publish a finished run folder into the book (record, figures, chapter together)")
    s.add_argument("folder", help="the run folder repro run printed")
    s.set_defaults(func=cmd_publish)
    s = sub.add_parser("sync", help="rewrite a chapter notebook's parameters cell from its spec")
    s.add_argument("slug", help="paper slug or NN-slug")
    s.set_defaults(func=cmd_sync)
    s = sub.add_parser("results", help="regenerate book/results.md and results/results.csv from the records")
    s.set_defaults(func=cmd_results)
    s = sub.add_parser("book", help="build the HTML book from the stored executed chapters (never trains)")
    s.set_defaults(func=cmd_book)
    s = sub.add_parser("data", help="CIFAR-100 (and the CIFAR-10 test set, an OOD set): where, verify, download, or unpack the verified copy")
    s.add_argument("action", choices=["where", "verify", "download", "unpack"])
    s.add_argument("source", nargs="?", help="for unpack: folder with cifar-100-python.tar.xz.part0..3")
    s.add_argument("--root", help="data folder (default $REPRO_DATA or ~/.cache/repro/data)")
    s.set_defaults(func=cmd_data)
    s = sub.add_parser("bench", help="training images/s of small CNNs, ResNets and a ViT on this device in fp32 "
                       "and bf16 autocast, each with and without channels_last (recorded in results/bench.json)")
    s.add_argument("--models", nargs="+", default=["cnn3", "resnet20", "resnet18", "vit_tiny_p4"])
    s.add_argument("--steps", type=int, default=None, help="timed steps per model (default: 5 on CPU, 50 on GPU)")
    s.add_argument("--batch-size", type=int, default=None, help="default: 128 on CPU, 512 on GPU")
    s.add_argument("--min-seconds", type=float, default=None,
                   help="each timed run lasts at least this long in the fastest precision: more steps for small "
                        "models (default: 2, or 0 when --steps is given)")
    s.add_argument("--repeats", type=int, default=3,
                   help="timed runs per precision, in turns; the fastest is kept (a shared machine only slows runs down)")
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
