"""Sinks: the kernel's trace text, and JSON lines. They name addresses from a symbol table (a
lab's, or a recording's). JSON lines and function_graph's text stream as the events (or the
records, in bulk) come; the function (and nop) tracer's text waits for the end of the trace, whose
counts its header shows."""

from __future__ import annotations

import json
import shutil
import tempfile
from typing import Any

from emulator import FtlabError
from emulator.symbols import SymbolTable

from ..kernel_version import MODELLED, KernelVersion
from ..probe_events import ProbeSpec, format_args, format_value
from . import native_text
from .events import Event
from .probe_records import REC_PROBE_EXIT, REC_PROBE_KRETPROBE
from .records import REC_ENTRY, REC_UNCOMMITTED

COMM, PID, CPU = "ftlab", 1, 0
# Irq, need-resched, hardirq, preempt-depth and migrate-disable columns: the lab runs one task
# with no preemption counting, so the last four are '.'. The irqs-off column is what the CPU said
# when the event was recorded: 'd' (TRACE_FLAG_IRQS_OFF, trace_print_lat_fmt() in
# kernel/trace/trace_output.c) inside an int3 / BRK exception handler, entered with interrupts
# masked (x86 IF cleared by the interrupt gate, arm64 DAIF set): kprobes, and arm64's kretprobes
# since 6.9 (BRK #7); '.' in code called from ftrace or a return trampoline.
FLAGS = "....."
IRQS_OFF_FLAGS = "d...."
# trace_print_context, by whether interrupts were masked; then the timestamp and a `func <-parent` line
CONTEXT = {
    irqs_off: f"{COMM:>16}-{PID:<7d} [{CPU:03d}] {flags} "
    for irqs_off, flags in ((False, FLAGS), (True, IRQS_OFF_FLAGS))
}
LINE_PREFIX = CONTEXT[False]
LINE_FORMAT = LINE_PREFIX + "%12d: %s\n"

# s_show() and print_func_help_header_irq() (kernel/trace/trace.c, v6.17), the header of the trace
# file of tracers with no print_header of their own (function, nop): "# tracer: %s", "#", then
# print_event_info()'s "# entries-in-buffer/entries-written: %lu/%lu   #P:%d" and "#", then the
# column legend (irq-info on, record-tgid off). The lab has one CPU.
FUNCTION_HEADER = """\
# tracer: {tracer}
#
# entries-in-buffer/entries-written: {entries}/{written}   #P:1
#
#                                _-----=> irqs-off/BH-disabled
#                               / _----=> need-resched
#                              | / _---=> hardirq/softirq
#                              || / _--=> preempt-depth
#                              ||| / _-=> migrate-disable
#                              |||| /     delay
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |"""


def model_line(arch: str, kernel: KernelVersion) -> str:
    """The lab's line above the kernel's header: the release and the arch the trace models."""
    return f"# ftlab: Linux {kernel} model, {arch}\n"


class TextSink:
    """The `trace` file of the function (and nop) tracer: `comm-pid [cpu] flags ts: func <-parent`.

    The header counts the entries, so the file is what reading `trace` shows once the run is over:
    the event lines are held (in memory, then a temporary file past SPOOL bytes) until the end,
    then written after the header."""

    SPOOL = 8 << 20

    def __init__(self, out, symbols: SymbolTable, model: str = ""):
        self.final, self.sym, self.model = out, symbols, model
        self.out = tempfile.SpooledTemporaryFile(self.SPOOL, mode="w+")
        self.tracer = "function"
        # (ip, parent) -> `func <-parent`
        self._bodies = _Texts(lambda pair: f"{func_name(symbols, pair[0])} <-{func_name(symbols, pair[1])}")
        self._native: native_text.NativeLines | None = None
        self._probe: native_text.NativeProbeLines | None = None
        self._probe_text: tuple[_Texts, _Texts] | None = None  # the probe events' texts (_probe_texts)

    def begin(self, tracer: str, clock: str) -> None:
        self.tracer = tracer

    def event(self, ev: Event) -> None:
        # trace_print_context: "%16s-%-7d [%03d] <flags> %12llu: " for a clock not in ns
        self.out.write(f"{CONTEXT[bool(ev.irqs_off)]}{ev.ts:12d}: {self._body(ev)}\n")
        if ev.verification is not None and ev.mismatch:
            for c in ev.verification.checks:
                if not c.equal:
                    bits = f" (bits that differ: {' '.join(ev.verification.lost_bits(c))})" if c.flags else ""
                    self.out.write(f"# verify: {c.field} saved {c.captured:#x}, true {c.truth:#x}{bits}\n")

    def records(self, chunk: bytes, decoder) -> dict[str, int]:
        """The function tracer's lines for a chunk of its records (a FunctionDecoder's), written in
        C where that was built at install (native_text), else from the records' columns here.
        Returns the count of entries."""
        if native_text.LIB is None:
            return {"entry": self.entries(*decoder.columns(chunk))}
        if self._native is None:
            self._native = native_text.NativeLines(LINE_PREFIX, lambda ip, parent: self._bodies[ip, parent] + "\n")
        text, n = self._native.lines(chunk, decoder.rec.size)
        self.out.write(text)
        return {"entry": n}

    def entries(self, ts: list[int], ips: list[int], parents: list[int]) -> int:
        """The function tracer's lines in bulk, from its records' columns (FunctionDecoder.columns):
        the same text `event` writes, each (ip, parent)'s names looked up once. Returns the count."""
        # C-level loops (map) and printf formatting: each line costs about what emulating the traced
        # call did, so the Python loop and the f-string of a plainer version halve the speed
        bodies = map(self._bodies.__getitem__, zip(ips, parents, strict=True))
        self.out.write("".join(map(LINE_FORMAT.__mod__, zip(ts, bodies, strict=True))))
        return len(ts)

    def probe_records(self, chunk: bytes, decoder, each) -> dict[str, int]:
        """Probe events' lines for a chunk of the guest handlers' records (a ProbeDecoder's), in C
        where that was built at install, else `probe_lines`: the text `event` writes, no Event
        each, but for a Python handler's event (a REC_EVENT record), which each(record) writes in
        its place. Counts each line's event in decoder.counts; returns the entries and exits. The C
        formatter knows the entry and exit records only: a trace with kprobe or kretprobe records
        (p and r events on ftrace sites) takes `probe_lines`, in bulk all the same."""
        if native_text.LIB is None or decoder.kprobes or decoder.kretprobes:
            return self.probe_lines(chunk, decoder, each)
        if self._probe is None:
            contexts, heads = self._probe_texts(decoder)
            self._probe = native_text.NativeProbeLines(
                decoder, contexts.__getitem__, lambda e, ip, parent: heads[e, ip, parent], decoder.symbolize
            )
        size, start, written = decoder.rec.size, 0, {"entry": 0, "exit": 0}
        while True:
            text, start, counts = self._probe.probe_lines(chunk, start)
            self.out.write(text)
            for e, n in enumerate(counts[:-2]):
                decoder.counts[e] += n
            written["entry"] += counts[-2]
            written["exit"] += counts[-1]
            if start * size == len(chunk):
                return written
            each(chunk[start * size : (start + 1) * size])
            start += 1

    def probe_lines(self, chunk: bytes, decoder, each) -> dict[str, int]:
        """`probe_records` in Python: each record's line from its words, its values as
        ProbeDecoder.values reads them, the texts the lines repeat made once."""
        contexts, heads = self._probe_texts(decoder)
        specs, counts, fetch_at, values = decoder.specs, decoder.counts, decoder.fetch_at, decoder.values
        size, written = decoder.rec.size, {"entry": 0, "exit": 0}
        lines: list[str] = []
        for i, w in enumerate(decoder.rec.iter_unpack(chunk)):
            if w[0] not in fetch_at:
                if w[0] != REC_UNCOMMITTED:  # a Python handler's event, after the lines before it
                    self.out.write("".join(lines))
                    lines.clear()
                    each(chunk[i * size : (i + 1) * size])
                continue
            exit_, event = w[0] in (REC_PROBE_EXIT, REC_PROBE_KRETPROBE), w[2]
            spec = specs[event]
            counts[event] += 1
            written["exit" if exit_ else "entry"] += 1
            head = heads[event, w[3], w[4] if exit_ else 0]
            lines.append(f"{contexts[w[6]]}{w[1]:12d}: {head}{format_args(spec.args, values(spec, w))}\n")
        self.out.write("".join(lines))
        return written

    def _probe_texts(self, decoder) -> tuple[_Texts, _Texts]:
        """A flags word's context, and (event, ip, parent) -> the event's head (parent 0 at an
        entry: its head shows none): made once per trace."""
        if self._probe_text is None:
            specs, masked = decoder.specs, decoder.irqs_masked
            self._probe_text = (
                _Texts(lambda flags: CONTEXT[masked(flags)]),
                _Texts(lambda k: probe_head(self.sym, specs[k[0]], specs[k[0]].is_return, k[1], k[2])),
            )
        return self._probe_text

    def _body(self, ev: Event) -> str:
        if ev.text is not None:
            return ev.text
        if ev.probe is not None:
            return probe_text(self.sym, ev)
        assert ev.parent_ip is not None  # the function tracer's events always have their caller
        return self._bodies[ev.ip, ev.parent_ip]

    def end(self, summary: dict) -> None:
        counters = summary["counters"]
        self.final.write(
            self.model
            + FUNCTION_HEADER.format(
                tracer=self.tracer, entries=counters["entries-in-buffer"], written=counters["entries-written"]
            )
            + "\n"
        )
        with self.out as held:
            held.seek(0)
            shutil.copyfileobj(held, self.final)
        # the header shows the entries and, as their difference, what overwriting replaced
        write_summary(self.final, summary, shown=("entries-in-buffer", "entries-written", "overwritten"))


class _Texts(dict):
    """key -> make(key), made the first time a key is asked for: the names a text repeats."""

    def __init__(self, make):
        super().__init__()
        self.make = make

    def __missing__(self, key):
        text = self[key] = self.make(key)
        return text


def probe_text(symbols: SymbolTable, ev: Event) -> str:
    """A probe event's own text, its trace() (print_fentry_event, print_fexit_event in
    kernel/trace/trace_fprobe.c; print_kprobe_event, print_kretprobe_event in trace_kprobe.c) without
    the newline: its head (probe_head), then its fetchargs."""
    assert ev.probe is not None
    head = probe_head(symbols, ev.probe, ev.type == "exit", ev.ip, ev.parent_ip)
    return head + (format_args(*zip(*ev.fetch, strict=True)) if ev.fetch else "")


def probe_head(symbols: SymbolTable, spec: ProbeSpec, exit_: bool, ip: int, parent: int | None) -> str:
    """`event: (sym+off/size)` at entry, `event: (caller+off/size <- func)` at exit. parent is None
    only at a kprobe inside a function, whose text shows no parent."""
    where = location(symbols, ip)
    if exit_:
        assert parent is not None  # an exit always has where it returned to
        where = f"{location(symbols, parent)} <- {func_name(symbols, ip)}"
    return f"{spec.event}: ({where})"


def func_name(symbols: SymbolTable, addr: int) -> str:
    """%ps: the symbol's name, or the bare address."""
    hit = symbols.lookup(addr)
    return hit[0].name if hit else f"{addr:#x}"


def location(symbols: SymbolTable, addr: int) -> str:
    """%pS: `sym+0x4/0x30`."""
    hit = symbols.lookup(addr)
    return f"{addr:#x}" if hit is None else f"{hit[0].name}+{hit[1]:#x}/{hit[0].size:#x}"


def write_summary(out, summary: dict, shown=()) -> None:
    """A trace's closing comment lines: the counters the header has not shown (if any), per-probe
    hits and misses, the verify tally, and last, for a trace an error stopped, why."""
    counters = {k: v for k, v in summary["counters"].items() if k not in shown}
    if counters:
        out.write("# " + ", ".join(f"{k}: {v}" for k, v in counters.items()) + "\n")
    for event, c in summary.get("probes", {}).items():
        out.write(f"# {event}: hits {c['hits']} nmissed {c['nmissed']}\n")
    if "verify" in summary:
        v = summary["verify"]
        out.write(
            f"# verify: {v['snapshots'] - v['mismatching']} of {v['snapshots']} snapshots equal the "
            f"true registers in every captured field\n"
        )
        if v.get("differing"):
            out.write(
                "# verify: fields that differ: " + ", ".join(f"{f} ({n})" for f, n in v["differing"].items()) + "\n"
            )
    if "stopped" in summary:
        out.write(f"# stopped: {summary['stopped']}\n")


GRAPH_HEADER = """\
# tracer: function_graph
#
# CPU  DURATION                  FUNCTION CALLS
# |     |   |                     |   |   |   |"""
# The kernel's durations are trace_clock_local() nanoseconds whatever trace_clock says
# (trace_graph_entry/trace_graph_return); the lab's are counts of the trace's own clock.
UNITS = {"counter": "ev", "insns": "insn"}
# trace_find_mark: + > 10 us, ! > 100 us, # > 1 ms, * > 10 ms, @ > 100 ms, $ > 1 s. The lab's clocks
# count events or instructions, not nanoseconds; the same thresholds apply to those counts.
MARKS = ((1_000_000_000, "$"), (100_000_000, "@"), (10_000_000, "*"), (1_000_000, "#"), (100_000, "!"), (10_000, "+"))


def graph_retval(value: int) -> str:
    """funcgraph-retval: decimal for an error code (-4095..-1, also as a 32-bit int), else hex."""
    if value >> 31 & 1 and value >> 32 == 0:
        value |= 0xFFFFFFFF00000000
    signed = value - (1 << 64) if value >> 63 else value
    return str(signed) if -4095 <= signed < 0 else f"{value:#x}"


def function_arg_items(params, args, unsigned_hex: bool = True) -> list[str]:
    """print_function_args() (kernel/trace/trace_output.c, 533c20b062d7; v6.17): the items of its
    '(name=value, ...)', from a function's BTF prototype and the entry's recorded argument words
    (FTRACE_REGS_MAX_ARGS of them: past those, '...'). params are (name, kind, size, signed) with
    typedefs and qualifiers passed (btf_type_skip_modifiers). Each value is the whole register, not
    cut to its type's size: a signed int or an enum as %ld, an unsigned int as 0x%lx (as %ld before
    3ca824369b71), a pointer as 0x%lx, anything else as '(KIND)[0x..]' with one more word per 8 bytes."""
    out: list[str] = []
    a = 0
    for name, kind, size, signed in params:
        if a == len(args):
            out.append("...")
            break
        arg = args[a]
        if kind == "enum" or (kind == "int" and (signed or not unsigned_hex)):
            text = str(arg - (1 << 64) if arg >> 63 else arg)
        elif kind in ("int", "pointer"):
            text = f"0x{arg:x}"
        else:  # the kernel's "This does not handle complex arguments": btf_type_str() and words
            words = [f"0x{arg:x}"]
            for _ in range(8, size, 8):
                a += 1
                if a == len(args):  # out of words: "...]" ends the list
                    out.append(f"{name}=({kind.upper()})[{':'.join([*words, '...'])}]")
                    return out
                words.append(f"0x{args[a]:x}")
            text = f"({kind.upper()})[{':'.join(words)}]"
        out.append(f"{name}={text}")  # btf_name_by_offset() gives "" for a nameless parameter
        a += 1
    return out


def check_graph_options(kernel: KernelVersion, retval: bool, args) -> None:
    """funcgraph-retval and funcgraph-args, refused for a release that did not have them."""
    if retval and not kernel.has("funcgraph_retval"):
        raise FtlabError(f"--funcgraph-retval: Linux {kernel} has no funcgraph-retval option (it came in 6.5)")
    if args is not None and not kernel.has("funcgraph_args"):
        raise FtlabError(f"--funcgraph-args: Linux {kernel} has no funcgraph-args option (it came in 6.15)")


class GraphTextSink:
    """The function_graph tracer's trace file: `CPU) DURATION | func() {` ... `}`, `func();` for
    leaves. A leaf is an entry followed at once by its own exit, so one entry is held back until
    the next event shows which it is; nothing else is buffered. Any other event (a probe event in
    the same buffer) is a comment in the graph, `/* text */`, as print_graph_comment() prints it.

    Without funcgraph-args the tracer's records are written in bulk (`records`, formats.bulk_writer):
    in C where that was built at install (native_text), else from the records' columns here, each
    through the same entry/exit steps as an event. With funcgraph-args, whose items need the
    entry's Event (CallCheck.function_args), every record goes through an Event (`event`)."""

    def __init__(
        self,
        out,
        symbols: SymbolTable,
        retval: bool = False,
        tail: bool = False,
        kernel: KernelVersion = MODELLED,
        model: str = "",
        args=None,
    ):
        check_graph_options(kernel, retval, args)
        self.out, self.sym, self.model = out, symbols, model
        self.retval, self.tail = retval, tail
        # funcgraph-args: args(name, ev) gives the items of the '(n=10)' after the name (tracers.calls
        # CallCheck.function_args); without it, '()'
        self.args = args
        # print_graph_retval (kernel/trace/trace_functions_graph.c): since 6.13 (commit 21e92806d39c,
        # "function_graph: Support recording and printing the function return address") the value
        # follows "ret=": "f(); /* ret=0x31 */", "} /* f ret=-22 */"; before, "/* = 0x31 */",
        # "} /* f = -22 */".
        self.ret = "ret=" if kernel.has("funcgraph_retval_ret") else "= "
        self.unit = "ev"
        self._names = _Texts(lambda ip: func_name(symbols, ip))
        # the entry held back: its ip, its depth and its `func(args)`
        self._held: tuple[int, int, str] | None = None
        # fgraph_cpu_data.depth: where the last line printed leaves a comment (graph_trace_open: 0)
        self._depth = 0
        self._native: native_text.NativeGraph | None = None

    def begin(self, tracer: str, clock: str) -> None:
        self.unit = UNITS.get(clock, clock)
        self.out.write(self.model + GRAPH_HEADER + "\n")

    def _line(self, duration: int | None, depth: int, text: str) -> None:
        if duration is None:
            column = " " * 14
        else:
            mark = next((m for limit, m in MARKS if duration > limit), " ")
            column = f"{mark} {f'{duration} {self.unit} ':<12}"
        self.out.write(f" {CPU}) {column}|  {'  ' * depth}{text}\n")

    def _call(self, ev: Event) -> str:
        """The function and its arguments as print_graph_entry_nested/_leaf print them."""
        name = self._names[ev.ip]
        return name + "(" + ("" if self.args is None else ", ".join(self.args(name, ev))) + ")"

    def _open(self) -> None:
        """The held entry's line, now that it is known to be no leaf."""
        if self._held is not None:
            _, depth, call = self._held
            self._held = None
            self._depth = depth  # print_graph_entry_nested: the comments inside go one deeper
            self._line(None, depth, f"{call} {{")

    def _comment(self, ev: Event) -> None:
        """print_graph_comment() (kernel/trace/trace_functions_graph.c): the CPU, an empty duration
        column (FLAGS_FILL_FULL), (depth + 1) * TRACE_GRAPH_INDENT spaces only when depth > 0, then
        "/* ", the event's trace() output with its ending newline stripped, " */"."""
        self._line(None, self._depth + 1 if self._depth > 0 else 0, f"/* {probe_text(self.sym, ev)} */")

    def event(self, ev: Event) -> None:
        if ev.probe is not None:
            self._open()  # an event between an entry and its exit: the entry is no leaf
            self._comment(ev)
        elif ev.type == "entry":
            self._entry(ev.ip, ev.depth, self._call(ev))
        else:
            assert ev.retval is not None  # every exit carries its return value
            self._exit(ev.ip, ev.depth, ev.duration, ev.retval)

    def _entry(self, ip: int, depth: int, call: str) -> None:
        self._open()
        self._held = (ip, depth, call)

    def _exit(self, ip: int, depth: int, duration: int | None, retval: int) -> None:
        held = self._held
        if held is not None and held[0] == ip and held[1] == depth:
            self._held = None
            text = f"{held[2]};" + (f" /* {self.ret}{graph_retval(retval)} */" if self.retval else "")
        else:
            self._open()
            name = self._names[ip]
            text = "}" + (
                f" /* {name} {self.ret}{graph_retval(retval)} */"
                if self.retval
                else f" /* {name} */"
                if self.tail
                else ""
            )
        # print_graph_entry_leaf and print_graph_return: comments after it at its own level
        self._depth = depth - 1
        self._line(duration, depth, text)

    def records(self, chunk: bytes, decoder) -> dict[str, int]:
        """The lines of a chunk of the tracer's records (a GraphDecoder's), without funcgraph-args:
        in C where that was built at install, else `columns`. Returns the entries and exits."""
        if native_text.LIB is None:
            return self.columns(*decoder.columns(chunk))
        if self._native is None:
            options = native_text.GraphOptions(
                decoder.ret_word, decoder.calltime_word, self.retval, self.tail, len(self.unit), len(self.ret)
            )
            options.unit, options.ret = self.unit.encode(), self.ret.encode()
            self._native = native_text.NativeGraph(f" {CPU}) ", self._names.__getitem__, options)
        state = self._native.state
        # the held entry and the comment depth pass between the two paths (a probe event's comment
        # goes through `event`)
        state.held, state.depth = self._held is not None, self._depth
        if self._held is not None:
            state.held_ip, state.held_depth, _ = self._held
        text, entries, exits = self._native.graph_lines(chunk, decoder.rec.size)
        self.out.write(text)
        self._depth = state.depth
        self._held = (state.held_ip, state.held_depth, self._names[state.held_ip] + "()") if state.held else None
        return {"entry": entries, "exit": exits}

    def columns(self, kinds, ts, ips, depths, retvals, calltimes) -> dict[str, int]:
        """The lines of committed records' columns (GraphDecoder.columns), each record through the
        steps its event would take, without the Event. Returns the entries and exits."""
        names, entry, exit_ = self._names, self._entry, self._exit
        for kind, t, ip, depth, retval, calltime in zip(kinds, ts, ips, depths, retvals, calltimes, strict=True):
            if kind == REC_ENTRY:
                entry(ip, depth, names[ip] + "()")
            else:  # any other type is an exit, as GraphDecoder.events reads it
                exit_(ip, depth, t - calltime, retval)
        entries = kinds.count(REC_ENTRY)
        return {"entry": entries, "exit": len(kinds) - entries}

    def end(self, summary: dict) -> None:
        self._open()
        write_summary(self.out, summary)


class JsonSink:
    """One JSON object per event per line, then one `summary` record with the counters (and for a
    trace an error stopped, a `stopped` record with the reason)."""

    def __init__(self, out, symbols: SymbolTable, arch: str, kernel: KernelVersion):
        self.out, self.sym, self.arch, self.kernel = out, symbols, arch, kernel
        self.tracer: str | None = None

    def begin(self, tracer: str, clock: str) -> None:
        self.tracer = tracer

    def event(self, ev: Event) -> None:
        hit = self.sym.lookup(ev.ip)
        record: dict[str, Any] = {
            "arch": self.arch,
            "tracer": ev.tracer,
            "type": ev.type,
            "func": hit[0].name if hit else None,
            "ip": ev.ip,
            "parent_ip": ev.parent_ip,
            "parent": None if ev.parent_ip is None else self.sym.name(ev.parent_ip),
            "depth": ev.depth,
            "args": None if ev.args is None else list(ev.args),
            "ts": ev.ts,
            "regs": {"kind": ev.regs_kind, "fields": ev.regs, "missing": list(ev.missing), "mismatch": ev.mismatch},
        }
        if ev.type == "exit":
            record["retval"], record["duration"] = ev.retval, ev.duration
        if ev.text is not None:
            record["text"] = ev.text
        if ev.probe is not None:
            record["event"] = f"{ev.probe.group}/{ev.probe.event}"
            record["fetch"] = {a.name: _json_value(a, v) for a, v in ev.fetch}
        if ev.verification is not None:
            record["regs"]["truth"] = {c.field: c.truth for c in ev.verification.checks}
        self.out.write(json.dumps(record) + "\n")

    def end(self, summary: dict) -> None:
        """The summary record, then for a trace an error stopped a last record saying why."""
        head = {"arch": self.arch, "tracer": self.tracer, "type": "summary", "kernel": str(self.kernel)}
        summary = dict(summary)
        stopped = summary.pop("stopped", None)
        self.out.write(json.dumps({**head, **summary}) + "\n")
        if stopped is not None:
            self.out.write(json.dumps({**head, "type": "stopped", "reason": stopped}) + "\n")


class CountSink:
    """Counts events and keeps none: for measuring, and for recording (the file is the output)."""

    def __init__(self):
        self.n = 0

    def begin(self, tracer: str, clock: str) -> None:
        pass

    def event(self, ev: Event) -> None:
        self.n += 1

    def end(self, summary: dict) -> None:
        pass


class ListSink:
    """Keeps the events (and the summary) in memory: for tests, the demo and the Python API."""

    def __init__(self):
        self.events: list[Event] = []
        self.summary: dict | None = None

    def begin(self, tracer: str, clock: str) -> None:
        pass

    def event(self, ev: Event) -> None:
        self.events.append(ev)

    def end(self, summary: dict) -> None:
        self.summary = summary


class FoldedSink:
    """Brendan Gregg's folded stacks, as flamegraph.pl and speedscope read them: one line per call
    path, `caller;callee COUNT`, from function_graph's entries and exits (probe events left out).
    Weighted by the trace clock: with `counter` each call counts 1 on its path, so the counts sum
    to the calls; with `insns` each call counts its own instructions (its duration less its
    children's). `root` names a first frame (the arch, when a trace covers several)."""

    def __init__(self, out, symbols: SymbolTable, root: str = ""):
        self.out, self.sym, self.root = out, symbols, root
        self.stack: list[list] = []  # [name, the children's durations]
        self.counts: dict[str, int] = {}
        self.by_insns = False

    def begin(self, tracer: str, clock: str) -> None:
        self.by_insns = clock == "insns"

    def event(self, ev: Event) -> None:
        if ev.probe is not None or ev.text is not None:
            return
        if ev.type == "entry":
            del self.stack[ev.depth :]  # a call whose exit never came (a tail call's) ends here
            self.stack.append([func_name(self.sym, ev.ip), 0])
            if not self.by_insns:
                self._add(1)
        elif ev.type == "exit" and len(self.stack) > ev.depth:
            del self.stack[ev.depth + 1 :]
            duration = ev.duration or 0
            if self.by_insns:
                self._add(duration - self.stack[-1][1])
            self.stack.pop()
            if self.stack:
                self.stack[-1][1] += duration

    def _add(self, weight: int) -> None:
        path = ";".join([self.root] * bool(self.root) + [name for name, _ in self.stack])
        self.counts[path] = self.counts.get(path, 0) + weight

    def end(self, summary: dict) -> None:
        for path in sorted(self.counts):
            self.out.write(f"{path} {self.counts[path]}\n")


def _json_value(arg, value):
    """Numbers as numbers (typed as the fetcharg says); strings, symbols and faults as text."""
    return value if isinstance(value, int) else format_value(arg, value)
