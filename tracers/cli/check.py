"""`ftlab check OBJ`: the conformance verdict (tracers.conformance), as a table or JSON."""

from __future__ import annotations

from pathlib import Path

from emulator import FtlabError

from .. import trampolines as trampoline_option
from ..conformance import check_object
from ..conformance.calls import read_calls_file
from ..lab import resolve
from .corpus import add_corpus_options, run_corpus_command
from .views import dump_json


def cmd_check(args, out) -> None:
    if args.corpus is not None:
        if args.obj is not None:
            raise FtlabError(f"check: give OBJ ({args.obj}) or --corpus DIR ({args.corpus}), not both")
        run_corpus_command(args, out)
        return
    if args.obj is None:
        raise FtlabError("check: name an object (OBJ) or a tree of them (--corpus DIR)")
    calls = None if args.calls is None else read_calls_file(Path(args.calls))
    trampolines = trampoline_option.trampolines(args.trampoline)
    reports = [
        check_object(
            target,
            calls=calls,
            kernel=args.kernel,
            loads=args.load,
            stubs=args.stub,
            trampolines=trampolines,
            budget=args.budget,
        )
        for target in resolve(args.obj, args.arch)
    ]
    if args.format == "json":
        dump_json([r.to_json() for r in reports] if len(reports) > 1 else reports[0].to_json(), out)
    else:
        for i, r in enumerate(reports):
            out.write("\n" * bool(i) + "\n".join(r.table()) + "\n")
    failed = [r for r in reports if not r.ok]
    if failed:
        lines = sum(len(r.failures) for r in failed)
        raise FtlabError(f"check: {lines} failures in {', '.join(f'{r.name} ({r.arch})' for r in failed)}")


def add_parser(sub, add_target) -> None:
    p = sub.add_parser("check", help="a conformance verdict: every function under every mechanism, checked")
    add_target(p, call=False, obj_optional=True)
    p.add_argument(
        "--calls",
        metavar="FILE",
        help="the calls to make, one CALL (or ';' sequence) a line, '#' comments; default: made up from "
        "the object's DWARF signatures",
    )
    trampoline_option.add_option(p)
    p.add_argument("--format", choices=("text", "json"), default="text")
    add_corpus_options(p)
    p.set_defaults(func=cmd_check)
