"""`ftlab check --corpus DIR`: its options and what the command does (tracers.conformance.corpus)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emulator import FtlabError

from ..cluster import engine
from ..conformance.corpus import Corpus, state_path, summary
from ..kernel_version import MODELLED

DEFAULT_REPORT = "ftlab-corpus.json"


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: at least one worker")
    return value


def add_corpus_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("a corpus: every object of a tree, as independent tasks")
    g.add_argument(
        "--corpus",
        metavar="DIR",
        help="check every .o and .ko under DIR, each on its own arch, on a Dask cluster (pip install "
        "'ftlab[cluster]') or else a local process pool",
    )
    g.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="an existing Dask cluster's scheduler (tcp://HOST:8786), whose workers see DIR at the same "
        "path (default: a local cluster on this machine's cores)",
    )
    g.add_argument("--workers", type=_workers, metavar="N", help="local workers (default: this machine's cores)")
    g.add_argument(
        "--report",
        default=DEFAULT_REPORT,
        metavar="FILE",
        help="the JSON report (default %(default)s); a run resumes the objects FILE or FILE.state "
        "already holds, if it was for the same tree and options",
    )


def corpus_options(args: argparse.Namespace) -> dict:
    """The check's options from the command line, as each task receives them."""
    options = {}
    if getattr(args, "budget", None) is not None:
        options["budget"] = args.budget
    if getattr(args, "stub", None):
        options["stubs"] = list(args.stub)
    if getattr(args, "load", None):
        options["loads"] = list(args.load)
    if getattr(args, "calls", None):
        raise FtlabError("--calls names one object's calls; with --corpus, calls come from each object's DWARF")
    if getattr(args, "trampoline", None):
        options["trampolines"] = {name: str(path) for name, path in args.trampoline}
    return options


def run_corpus_command(args: argparse.Namespace, out) -> None:
    if args.scheduler and args.workers:
        raise FtlabError(f"--workers: the cluster at --scheduler {args.scheduler} has its own workers")
    report = Path(args.report)
    corpus = Corpus(Path(args.corpus), report, kernel=getattr(args, "kernel", MODELLED), options=corpus_options(args))
    try:
        runner = engine(args.workers, args.scheduler)
    except BaseException:
        corpus.output.abort()
        raise
    try:
        result = corpus.run(runner, progress=sys.stderr)
    except KeyboardInterrupt:
        raise FtlabError(
            f"interrupted: the objects checked so far are in {state_path(report)}; the same command resumes"
        ) from None
    finally:
        runner.close()
    summary(result, out)
    totals = result.totals()
    if totals["ok"] != totals["objects"]:
        raise FtlabError(f"{totals['objects'] - totals['ok']} of {totals['objects']} objects not ok (report: {report})")
