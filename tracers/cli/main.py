"""ftlab: run real x86_64 and arm64 functions under emulation and trace them as the kernel does."""

from __future__ import annotations

import argparse
import io
import os
import re
import sys

from emulator import FtlabError
from emulator.machine import DEFAULT_BUDGET

from .. import trampolines as trampoline_option
from ..builtin.function import FunctionTracer
from ..builtin.function_graph import FunctionGraphTracer
from ..builtin.probe import ProbeEventTracer
from ..builtin.trace_clock import CLOCKS
from ..call_syntax import DEFAULT_TYPE, RESULT_TYPES, RET_ALIASES, parse_calls, ret_type
from ..core.fprobe import DESIGNS
from ..core.ring_buffer import DEFAULT_RECORDS
from ..kernel_version import MODELLED, OLDEST, KernelVersion
from ..lab import Lab, resolve
from ..output.chrome import ChromeDocument
from ..output.formats import FORMATS, TRACE_FORMATS, make_sink
from ..output.golden import Golden
from ..output.outfile import OutputFile
from ..output.record import Recorder, replay
from ..output.sinks import CountSink
from .bench import bench
from .bpf import add_parser as add_bpf
from .bpf_routes import route_captures
from .check import add_parser as add_check
from .demo import demo
from .layout import add_parser as add_layout
from .mechanisms import capture_all
from .report import add_parser as add_report
from .step import add_parser as add_step
from .views import compare, dump_json, parse_at, regs_json, regs_table, site_rows

U64_MAX, UINT_MAX = (1 << 64) - 1, (1 << 32) - 1
TRACERS = {"function": FunctionTracer, "function_graph": FunctionGraphTracer}
TRACE_FORMATS_HELP = (
    "text (the kernel's trace file), json (a record a line), folded (flame-graph stacks; function_graph) "
    "or chrome (trace-event JSON for Perfetto and chrome://tracing)"
)


def _labs(args, obj=None):
    """The labs of OBJ (or obj), one per arch --arch names."""
    for target in resolve(args.obj if obj is None else obj, args.arch):
        lab = Lab(
            target,
            stubs=args.stub,
            budget=args.budget,
            ring_records=getattr(args, "buffer_size", None),
            kernel=args.kernel,
            loads=args.load,
            trampolines=trampoline_option.trampolines(getattr(args, "trampoline", ())),
        )
        args.consoles.append(lab)
        if args.cmd in ("trace", "record") and not args.event and not lab.sites:  # an empty trace says nothing
            names = ", ".join(obj.path.name for obj in (*lab.loaded, lab.obj))
            raise FtlabError(f"{names}: {lab.no_sites()} (`ftlab run` calls its functions untraced)")
        yield lab


def _print_console(args) -> None:
    """What the guest printk()ed, after the command's output, on stderr as `dmesg -r` shows it
    (`<6>text`; prefixed by the arch when there are several): kernel messages go to the log, not
    into the trace, so stdout stays the same whether the code prints or not."""
    labs = getattr(args, "consoles", [])
    for lab in labs:
        prefix = f"{lab.arch.name}: " if len(labs) > 1 else ""
        for line in lab.machine.console.lines:
            print(f"{prefix}{line}", file=sys.stderr)


def _banner(args, lab, out):
    if args.arch == "all":
        out.write(f"# arch: {lab.arch.name}\n")


def cmd_run(args, out):
    calls = parse_calls(args.call)
    for lab in _labs(args):
        prefix = f"{lab.arch.name}: " if args.arch == "all" else ""
        for line in lab.run_calls(calls, args.ret).lines():
            out.write(f"{prefix}{line}\n")


def cmd_sites(args, out):
    for lab in _labs(args):
        _banner(args, lab, out)
        why = f": {lab.no_sites()}" if not lab.sites else ""
        out.write(f"# {lab.target.path.name}: {len(lab.sites)} patch sites ({lab.arch.name}){why}\n")
        for func, ip, states in site_rows(lab):
            sym_off = ip - lab.machine.symbols.get(func).addr
            out.write(f"{func}+{sym_off:#x} at {ip:#x}\n")
            for state, code, text in states:
                out.write(f"    {state:<9} {code.hex(' '):<24} {text}\n")


def _probe_events(args, lab, sink):
    return ProbeEventTracer(lab, sink, args.event, clock=args.clock, verify=args.verify, design=args.fprobe_design)


def cmd_trace(args, out):
    calls = parse_calls(args.call)
    # --format chrome: one document for every arch traced, written when the trace is over (also
    # when an error stops it, as the text format keeps what was traced)
    document = ChromeDocument() if args.format == "chrome" else None
    shared = {} if document is None else {"document": document}
    try:
        for lab in _labs(args):  # the sink's first line names the arch
            lab.check_calls(calls)  # a refused call prints no trace
            _trace(args, lab, calls, out, shared)
    finally:
        if document is not None:
            document.write(out)


def _trace(args, lab, calls, out, shared: dict) -> None:
    """One lab's trace of the calls, into a sink of args.format (`shared`: options every arch's sink gets)."""
    if args.event and not args.tracer:  # the nop tracer: the probe events alone
        sink = make_sink(args.format, "nop", out, lab.machine.symbols, lab.arch.name, lab.kernel, **shared)
        tracer = _probe_events(args, lab, sink)
    else:
        tracer_name = args.tracer or "function"
        graph = tracer_name == "function_graph"
        options = {"retval": args.funcgraph_retval, "tail": args.funcgraph_tail} if graph else {}
        if args.format == "folded" and args.arch == "all":  # both arches' stacks, each under its own root
            options["root"] = lab.arch.name
        if graph and args.funcgraph_args:
            options["args"] = lab.calls.function_args
        sink = make_sink(
            args.format, tracer_name, out, lab.machine.symbols, lab.arch.name, lab.kernel, **options, **shared
        )
        extra = {"buffer_mode": args.buffer_mode, **({"max_depth": args.max_graph_depth} if graph else {})}
        tracer = TRACERS[tracer_name](
            lab, sink, clock=args.clock, filters=args.filter, notrace=args.notrace, verify=args.verify, **extra
        )
        if args.event:  # current_tracer and the dynamic events, into one buffer
            tracer.add_events(_probe_events(args, lab, sink))
    with tracer:  # one trace of every call of the sequence
        outcome = lab.run_calls(calls, args.ret)
    if args.format == "text":
        out.writelines(f"# {line}\n" for line in outcome.lines())


def cmd_regs(args, out):
    calls = parse_calls(args.call)
    reports = []
    for lab in _labs(args):
        lab.check_calls(calls)
        func, offset = parse_at(lab, args.at)
        captures = capture_all(lab, func, calls, offset)
        if offset is None:  # at the function's entry: what each BPF route's program is handed too
            captures += route_captures(lab, func, calls)
        if args.format == "json":
            reports.append(regs_json(lab, captures))
        else:
            out.write(f"# {lab.arch.name}: one hit at {args.at.strip()} during {calls.text}\n\n")
            regs_table(lab, captures, out)
    if reports:
        dump_json(reports if len(reports) > 1 else reports[0], out)


def cmd_compare(args, out):
    calls = parse_calls(args.call)
    labs = list(_labs(args))
    for lab in labs:
        lab.check_calls(calls)
    func = args.at or calls.calls[0].name
    beside = [] if args.beside is None else _beside_labs(args, labs, calls, func)
    text = out if args.format == "text" else io.StringIO()
    rows = compare(labs, func, calls, text, beside)
    if args.format == "json":
        dump_json(rows, out)


def _beside_labs(args, labs, calls, func: str) -> list:
    """--beside OBJ: its lab on each arch of OBJ's, where the same calls run and func is a function."""
    try:
        found = {lab.arch.name: lab for lab in _labs(args, args.beside)}
        for arch in (lab.arch.name for lab in labs):
            if arch not in found:
                raise FtlabError(f"no {arch} build of it (OBJ's arch)")
            lab = found[arch]
            if func not in lab.calls.functions:
                raise FtlabError(f"no function '{func}' in {lab.target.path.name}")
            lab.check_calls(calls)
    except FtlabError as err:
        raise FtlabError(f"--beside {args.beside}: {err}") from None
    return [found[lab.arch.name] for lab in labs]


def cmd_record(args, out):
    if args.event:
        raise FtlabError(
            "record: probe events (-e) cannot be recorded: a recording holds the tracer's ring-buffer "
            "records only; trace them with `ftlab trace --tracer TRACER -e SPEC`"
        )
    if args.arch == "all":
        raise FtlabError("record: --arch all: a recording holds one arch; record each (--arch x86_64, --arch arm64)")
    calls = parse_calls(args.call)
    with OutputFile(args.output, binary=True) as output:  # checked before any work; in place when complete
        [lab] = list(_labs(args))
        lab.check_calls(calls)
        rec = Recorder(
            output, lab.karch, lab.kernel, lab.machine.symbols, args.tracer, calls.text, lab.ftrace.uncaptured()
        )
        # the tracer's events are the file's records: it writes them and decodes none
        options = {"max_depth": args.max_graph_depth} if args.tracer == "function_graph" else {}
        tracer = TRACERS[args.tracer](
            lab, CountSink(), filters=args.filter, notrace=args.notrace, ring=True, consumer=rec, **options
        )
        try:
            with tracer:
                outcome = lab.run_calls(calls, args.ret)
        except FtlabError as err:  # nothing recorded is lost: the records so far, and why it stopped
            rec.finish(tracer.stats(), None, stopped=str(err))
            output.commit()
            raise
        rec.finish(tracer.stats(), outcome)


def cmd_replay(args, out):
    info = replay(args.file, args.format, out, retval=args.funcgraph_retval, tail=args.funcgraph_tail)
    if info["stopped"] is not None:  # as the traced run ended: its events, '# stopped:', the error
        raise FtlabError(info["stopped"])
    if args.format == "text":
        out.writelines(f"# {line}\n" for line in info["outcome"].lines())


def _run_golden(args) -> None:
    """--golden FILE: the output of trace, replay or bpf compared with FILE, or (--update-golden) written
    to it, instead of printed. FILE is checked before any work; a run that fails is not compared and
    leaves FILE untouched: its output and its error show as without --golden."""
    if args.golden is None:
        raise FtlabError("--update-golden writes the --golden FILE: name it")
    if getattr(args, "output", None) is not None:
        raise FtlabError("-o and --golden: the output is compared with (or written to) the --golden FILE; give one")
    golden = Golden(args.golden, update=args.update_golden)
    text = io.StringIO()
    try:
        args.func(args, text)
    except FtlabError:
        sys.stdout.write(text.getvalue())
        raise
    else:
        golden.finish(text.getvalue(), diff_to=sys.stdout)
    finally:
        golden.abort()  # a no-op once FILE is written


def cmd_demo(args, out):
    demo(out)


def cmd_bench(args, out):
    json_file = None if args.json is None else OutputFile(args.json)  # checked before the 40 s of measuring
    try:
        bench(out, json_file)
    finally:
        if json_file is not None:
            json_file.abort()  # a no-op once bench() has put it in place


def _whole(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None


def _budget(text: str) -> int:
    """--budget: instructions per call, 0 for none; unicorn counts them in 64 bits."""
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative (0 means no budget)")
    if value > U64_MAX:
        raise argparse.ArgumentTypeError(f"{value} is more than unicorn counts ({U64_MAX}; 0 means no budget)")
    return value


def _records(text: str) -> int:
    """--buffer-size: at least one record, as buffer_size_kb refuses 0 (tracing_entries_write)."""
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: the ring buffer needs at least one record")
    return value


def _graph_depth(text: str) -> int:
    """--max-graph-depth as the kernel's max_graph_depth file takes it: graph_depth_write()
    (kernel/trace/trace_functions_graph.c) parses a decimal unsigned long (kstrtoul: no sign, no
    0x) into the unsigned int fgraph_max_depth, 0 meaning no limit. A value above UINT_MAX, which the
    kernel would silently cut to its low 32 bits, is refused."""
    value = int(text) if re.fullmatch(r"\+?[0-9]+", text.strip()) else None
    if value is None:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a decimal depth >= 0 (kstrtoul: 0 traces every depth, N the first N levels)"
        )
    if value > UINT_MAX:
        raise argparse.ArgumentTypeError(
            f"{value} does not fit fgraph_max_depth, an unsigned int (at most {UINT_MAX}; 0 is no limit)"
        )
    return value


def _kernel(text: str) -> KernelVersion:
    """--kernel: the release whose behaviour the lab shows."""
    try:
        return KernelVersion.parse(text)
    except FtlabError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _ret_type(text: str) -> str:
    """--ret: how to read the results of the calls that give no :TYPE."""
    try:
        return ret_type(text)
    except FtlabError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_ret(p):
    p.add_argument(
        "--ret",
        type=_ret_type,
        metavar="TYPE",
        help=f"the result type of every call that gives no :TYPE: {' '.join(RESULT_TYPES)} "
        f"(default {DEFAULT_TYPE}; {', '.join(f'{a} is {k}' for a, k in RET_ALIASES.items())})",
    )


def _add_golden(p):
    p.add_argument(
        "--golden",
        metavar="FILE",
        help="compare the output with FILE instead of printing it: silent when they are equal, else a "
        "unified diff on stdout and exit status 1",
    )
    p.add_argument(
        "--update-golden",
        action="store_true",
        help="write the output to the --golden FILE instead (whole or not at all)",
    )


def _add_target(p, call=True, obj_optional=False):
    p.add_argument(
        "--arch",
        help="x86_64, arm64, or all (a bundled fixture on both); optional when OBJ is an object file, "
        "required for a .S source",
    )
    p.add_argument(
        "obj",
        metavar="OBJ",
        nargs="?" if obj_optional else None,
        help="an object file (.o, .ko), an assembly source (.S) or a bundled fixture name (funcs, ...)",
    )
    if call:
        p.add_argument(
            "call",
            metavar="CALL",
            help='the call to run, e.g. "fib(20)" or \'crc32_bitwise(0, b"123456789", 9):x32\', or several '
            'sharing named buffers: \'arc4_setkey(ctx=buf(1032), b"Key", 3); arc4_crypt(ctx, out=buf(9), '
            'b"Plaintext", 9)\'',
        )
    p.add_argument(
        "--load",
        action="append",
        default=[],
        metavar="OBJ",
        help="an object to load first, as insmod of a dependency: its global symbols resolve OBJ's, "
        "its patch sites are initialised too (repeatable, loaded in order)",
    )
    p.add_argument(
        "--stub",
        action="append",
        default=[],
        metavar="NAME[=data]",
        help="supply an undefined symbol: a function returning 0, or 4 KiB of zeroed data; '*' supplies "
        "every undefined symbol, each as its use says (data where the code reads or writes it)",
    )
    p.add_argument(
        "--kernel",
        type=_kernel,
        default=MODELLED,
        metavar="VERSION",
        help=f"the kernel release whose behaviour to show (default {MODELLED}, the one the lab models; "
        f"older releases back to {OLDEST} where a mechanism changed)",
    )
    p.add_argument(
        "--budget",
        type=_budget,
        default=DEFAULT_BUDGET,
        help="instructions per call before it is stopped, counted per block: the run stops at the first "
        "block boundary past it (default %(default)s; 0: no budget)",
    )


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ftlab",
        description=f"{__doc__} The lab models Linux {MODELLED} (--kernel selects an older release where a "
        "mechanism changed).",
    )
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    p = sub.add_parser("run", help="run a function and print its result")
    _add_target(p)
    _add_ret(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("sites", help="list patch sites: compiled, after init, enabled")
    _add_target(p, call=False)
    p.set_defaults(func=cmd_sites)
    p = sub.add_parser("trace", help="run a function under a tracer")
    _add_target(p)
    _add_ret(p)
    p.add_argument(
        "--tracer",
        choices=sorted(TRACERS),
        help="function (the default) or function_graph; with -e, the probe events go into its trace",
    )
    p.add_argument(
        "-e",
        "--event",
        action="append",
        default=[],
        metavar="SPEC",
        help="a probe event in dynamic_events syntax: 'f:[GRP/]EVENT SYM[%%return] FETCHARGS' "
        "or 'r[MAXACTIVE]:[GRP/]EVENT SYM FETCHARGS' (repeatable)",
    )
    p.add_argument(
        "--fprobe-design",
        choices=DESIGNS,
        help="fprobe on fgraph (6.14+, ftrace_regs) or on ftrace+rethook (5.18-6.13, pt_regs); "
        "default: the --kernel release's",
    )
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="GLOB",
        help="trace only matching functions (set_ftrace_filter; !GLOB removes)",
    )
    p.add_argument("--notrace", action="append", default=[], metavar="GLOB", help="never trace these")
    p.add_argument(
        "--verify", action="store_true", help="compare every snapshot with the true registers at the patch site"
    )
    p.add_argument(
        "--format",
        choices=TRACE_FORMATS,
        default="text",
        help=TRACE_FORMATS_HELP,
    )
    p.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="counter",
        help="trace_clock: counter (one per event) or insns (emulated instructions)",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write the trace here instead of stdout")
    p.add_argument(
        "--buffer-size",
        type=_records,
        metavar="RECORDS",
        help=f"the ring buffer of the function and function_graph tracers, in records (default {DEFAULT_RECORDS})",
    )
    p.add_argument(
        "--buffer-mode",
        choices=("stream", "overwrite", "drop"),
        default="stream",
        help="when the ring buffer is full: drain it to the output (stream), or as the kernel's "
        "buffer with no reader, overwrite the oldest or drop the newest (both counted)",
    )
    g = p.add_argument_group("function_graph options (the kernel's trace_options)")
    g.add_argument("--funcgraph-retval", action="store_true", help="show return values")
    g.add_argument("--funcgraph-tail", action="store_true", help="name the function at each closing brace")
    g.add_argument(
        "--funcgraph-args", action="store_true", help="show each call's arguments (6.15+; needs the object's DWARF)"
    )
    g.add_argument(
        "--max-graph-depth",
        type=_graph_depth,
        default=0,
        metavar="N",
        help="trace only N levels deep (max_graph_depth: 0, the default, is no limit)",
    )
    _add_golden(p)
    trampoline_option.add_option(p)
    p.set_defaults(func=cmd_trace)
    p = sub.add_parser("record", help="record a function trace to a file at ring-buffer speed")
    _add_target(p)
    _add_ret(p)
    p.add_argument("-o", "--output", required=True, metavar="FILE")
    p.add_argument("--tracer", choices=("function", "function_graph"), default="function")
    p.add_argument("-e", "--event", action="append", default=[], metavar="SPEC", help="not recordable (refused)")
    p.add_argument("--max-graph-depth", type=_graph_depth, default=0, metavar="N")
    p.add_argument(
        "--buffer-size", type=_records, metavar="RECORDS", help=f"ring buffer size (default {DEFAULT_RECORDS})"
    )
    p.add_argument("--filter", action="append", default=[], metavar="GLOB")
    p.add_argument("--notrace", action="append", default=[], metavar="GLOB")
    p.set_defaults(func=cmd_record)
    p = sub.add_parser("replay", help="format a recording exactly as `ftlab trace` would have")
    p.add_argument("file", metavar="FILE")
    p.add_argument(
        "--format",
        choices=TRACE_FORMATS,
        default="text",
        help=TRACE_FORMATS_HELP,
    )
    p.add_argument("--funcgraph-retval", action="store_true")
    p.add_argument("--funcgraph-tail", action="store_true")
    _add_golden(p)
    p.set_defaults(func=cmd_replay)
    p = sub.add_parser("regs", help="one probe hit: every applicable mechanism's snapshot against the truth")
    _add_target(p)
    p.add_argument(
        "--at",
        required=True,
        metavar="SPEC",
        help="SYM (the function's entry: every mechanism) or SYM+OFFS (a kprobe there)",
    )
    p.add_argument("--format", choices=FORMATS, default="text")
    trampoline_option.add_option(p)
    p.set_defaults(func=cmd_regs)
    p = sub.add_parser("compare", help="x86_64 and arm64 side by side: sites, snapshots, costs")
    _add_target(p)
    p.add_argument("--at", metavar="SYM", help="the function to attach to (default: the one CALL calls)")
    p.add_argument(
        "--beside",
        metavar="OBJ",
        help="a second build of the same code (funcs-mcount beside funcs): each arch's two objects side by "
        "side, and what moved from its mcount sites to the entry sites",
    )
    p.add_argument("--format", choices=FORMATS, default="text")
    p.set_defaults(func=cmd_compare, arch="all")
    add_check(sub, _add_target)
    add_bpf(sub, _add_target, _add_ret, _add_golden, _labs)
    add_step(sub, _add_target, _labs)
    add_report(sub, _add_target, _labs)
    add_layout(sub, _kernel)
    p = sub.add_parser("demo", help="sites, a trace and a verified snapshot on both arches")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("bench", help="emulation and tracing speed on both arches")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.set_defaults(func=cmd_bench)
    return ap


def _drop_stdout() -> None:
    """After a BrokenPipeError on stdout: what is left in its buffer goes to /dev/null, so the
    interpreter's last flush at exit neither fails nor prints a traceback of its own."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # not a file descriptor (in-process callers' streams)
        pass


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    args.consoles = []  # the labs made, whose printk lines follow the output
    try:
        if args.cmd in ("trace", "replay", "bpf") and (args.golden is not None or args.update_golden):
            _run_golden(args)
        elif args.cmd == "trace" and args.output is not None:
            with OutputFile(args.output) as output:  # checked before any work; in place when complete
                try:
                    args.func(args, output.fh)
                except OSError as err:  # writing the trace (a full disk)
                    raise FtlabError(f"{args.output}: {err.strerror or err}") from None
                except FtlabError:
                    if output.fh.tell():  # a trace the error stopped: its events and '# stopped: why' stay
                        output.commit()
                    raise
        else:
            args.func(args, sys.stdout)
        sys.stdout.flush()
        _print_console(args)
    except FtlabError as err:
        try:
            sys.stdout.flush()  # what came before the error, then the error
        except BrokenPipeError:
            _drop_stdout()
        _print_console(args)  # what the guest printed before it went wrong
        print(f"ftlab: error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (`ftlab ... | head -1`): stop quietly, as coreutils do
        _drop_stdout()
        return 0
    except Exception as err:  # a lab bug: one line, the traceback on request
        if os.environ.get("FTLAB_DEBUG"):
            raise
        print(
            f"ftlab: internal error: {type(err).__name__}: {err} (FTLAB_DEBUG=1 shows the traceback)", file=sys.stderr
        )
        return 2
    return 0
