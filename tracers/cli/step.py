"""`ftlab step OBJ CALL --at SYM[+OFF] [--mechanism NAME]`: every instruction the lab's kernel code
runs for one hit of one mechanism, with the registers each changed and what each stored, named by
the struct and field it fills (tracers.views.step); with --arch all, both arches side by side,
aligned by what each step does."""

from __future__ import annotations

import argparse

from emulator import FtlabError

from ..builtin.function import FunctionTracer
from ..builtin.function_graph import FunctionGraphTracer
from ..call_syntax import parse_calls
from ..output.records import records_of
from ..output.sinks import CountSink
from ..views.step import Hit, StepRecorder
from ..views.step_text import step_json, step_text
from .mechanisms import MECHANISMS, capture, first_probeable
from .views import dump_json, parse_at

# the built-in tracers' guest code: its ring-buffer records and (function_graph) shadow-stack words
TRACERS = {
    "function": (FunctionTracer, "the function tracer: ftrace_caller, then its guest code writing a record"),
    "function_graph": (FunctionGraphTracer, "the function_graph tracer: its guest fgraph entry, and the return"),
}
STEP_MECHANISMS = {**MECHANISMS, **{name: title for name, (_, title) in TRACERS.items()}}
RETURNS = ("rethook", "fgraph_exit", "function_graph")  # mechanisms that hook the return too


def record(lab, mechanism: str, func: str, offset: int | None, calls) -> Hit:
    """One hit of the mechanism at func (at func+offset: a kprobe there), watched."""
    m = lab.machine
    site, sym = lab.ftrace.site(func), m.symbols.get(func)
    if offset is not None and sym.addr + offset == site.ip and mechanism != "kprobe":
        offset = None  # the site itself: the function's entry
    if offset is not None and mechanism != "kprobe":
        raise FtlabError(f"--at {func}+{offset:#x}: only a kprobe stands inside a function (--mechanism kprobe)")
    if mechanism == "kprobe":
        start = sym.addr + (offset if offset is not None else first_probeable(lab, sym, site))
        window, at = start + len(lab.karch.kprobes.BREAKPOINT), m.symbols.name(start)
    else:
        start, window, at = site.addr, site.ip + site.encoding.size, m.symbols.name(site.ip)
    recorder = StepRecorder(lab, start, window, mechanism in RETURNS, _slot_names(lab))
    note = None
    if mechanism in TRACERS:
        tracer_class, title = TRACERS[mechanism]
        recorder.use_records(records_of(lab.karch, lab.kernel), mechanism == "function_graph")
        with tracer_class(lab, CountSink(), filters=[func], ring=True), recorder:
            lab.run_calls(calls)
    else:
        c = capture(lab, mechanism, func, calls, offset, watch=recorder)
        if c.refused:
            raise FtlabError(f"{lab.arch.name}: {mechanism} at {func}: {c.refused}")
        title, note = c.title, c.note
    if not recorder.walks and recorder.entry is None:
        raise FtlabError(f"{calls.text} never reached {at}")
    recorder.annotate()
    return Hit(lab, title, note, at, recorder)


def _slot_names(lab):
    """kprobes' instruction slots by name: the copied instruction of the probe at ADDR, and the
    breakpoint after it that ends the single step."""
    kprobes = lab.kprobes

    def name(addr: int) -> str | None:
        for point in kprobes.points.values():
            if point.slot is not None and point.slot <= addr <= point.slot + point.insn.size:
                what = "insn slot" if addr < point.slot + point.insn.size else "insn slot's breakpoint"
                return f"{what} of {lab.machine.symbols.name(point.addr)}"
        return None

    return name


def cmd_step(args, out, labs) -> None:
    calls = parse_calls(args.call)
    if args.beside is not None and args.arch == "all":
        raise FtlabError("--beside puts two builds of one arch side by side: give --arch x86_64 or --arch arm64")
    targets = [args] if args.beside is None else [args, argparse.Namespace(**{**vars(args), "obj": args.beside})]
    results = []
    for target in targets:
        for lab in labs(target):
            lab.check_calls(calls)
            func, offset = parse_at(lab, args.at)
            hit = record(lab, args.mechanism, func, offset, calls)
            hit.column = lab.arch.name if args.beside is None else f"{lab.arch.name} {lab.target.path.stem}"
            results.append(hit)
    if args.format == "json":
        docs = [step_json(hit, args.mechanism, calls.text) for hit in results]
        dump_json(docs if len(docs) > 1 else docs[0], out)
    else:
        step_text(results, args.mechanism, calls.text, out)


def add_parser(sub, add_target, labs) -> None:
    p = sub.add_parser(
        "step", help="every instruction one hit runs, from the patch site through the trampoline and back"
    )
    add_target(p)
    p.add_argument(
        "--at",
        required=True,
        metavar="SYM[+OFF]",
        help="the traced function (its patch site), or SYM+OFF: a kprobe on that instruction",
    )
    p.add_argument(
        "--mechanism",
        choices=list(STEP_MECHANISMS),
        default="ftrace_caller",
        help="what to watch (default ftrace_caller): "
        + "; ".join(f"{name}: {title}" for name, title in STEP_MECHANISMS.items()),
    )
    p.add_argument(
        "--beside",
        metavar="OBJ",
        help="another build of the same code (e.g. funcs-mcount beside funcs): the two walks side by side",
    )
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=lambda args, out: cmd_step(args, out, labs))
