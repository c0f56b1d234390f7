"""--format chrome: the Chrome Trace Event Format's JSON Object Format, which Perfetto UI and
chrome://tracing load: `{"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}`.

Each arch is a process (pid 1, 2 in the order traced), named by a process_name metadata event, with
one thread (tid = pid) named by the task's comm as the text format prints it. A function_graph call
is a span: "B" at its entry, "E" at its exit, both at the event's own timestamp. B/E rather than
"X" (ts, dur): the events are written in the order the trace recorded them, so a span's children
are inside it by position as well as by time, even where two events share a timestamp (the insns
clock gives one instruction count to every event a dispatch emits). The function tracer's entries
and probe events are instant events ("i", scope "t").

The timestamps are the trace clock's, one microsecond a tick: one event (counter) or one
instruction (insns); otherData says which, and holds each arch's tracer, release and summary.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from typing import Any

from emulator.symbols import SymbolTable

from ..kernel_version import KernelVersion
from ..probe_events import format_value
from .events import Event
from .sinks import COMM, check_graph_options, func_name, graph_retval, location

TICK = {"counter": "1 event", "insns": "1 instruction"}  # what one unit of each trace clock counts


class ChromeDocument:
    """One document for a trace of one arch or of several: each sink adds its arch as a process,
    and the document is written once, when the trace is over (a trace that never began writes
    nothing)."""

    def __init__(self) -> None:
        self.clock = "counter"
        self.processes: list[tuple[str, list[dict]]] = []  # (arch, its events)
        self.about: dict[str, dict] = {}  # arch -> its tracer, release and summary

    def add(self, arch: str, events: list[dict], clock: str) -> int:
        """A process for arch whose events are `events` (filled in by its sink); its pid."""
        self.clock = clock
        self.processes.append((arch, events))
        return len(self.processes)

    def write(self, out) -> None:
        if not self.processes:
            return
        events: list[dict] = []
        for pid, (arch, own) in enumerate(self.processes, 1):
            events.append(_metadata("process_name", pid, arch))
            events.append(_metadata("thread_name", pid, COMM))
            events.extend(own)
        other = {"clock": self.clock, "ts_unit": f"1 us = {TICK[self.clock]}", "arches": self.about}
        out.write(
            '{"traceEvents": [\n'
            + ",\n".join(json.dumps(e) for e in events)
            + f'\n],\n"displayTimeUnit": "ms",\n"otherData": {json.dumps(other)}}}\n'
        )


def _metadata(name: str, pid: int, value: str) -> dict:
    return {"name": name, "ph": "M", "pid": pid, "tid": pid, "args": {"name": value}}


class ChromeSink:
    """One arch's events into a ChromeDocument: function_graph's calls as B/E spans (the arguments
    on the B with funcgraph-args, the return value on the E with funcgraph-retval, each as the
    text format prints it), the function tracer's entries and probe events as instants.

    A call whose exit the trace does not hold (the trace ended first, or a full buffer dropped the
    exit) ends, marked unfinished, at the next event at its depth or shallower, or at the trace's
    last timestamp. An exit whose entry the trace does not hold (overwritten, the oldest records
    lost first) begins at its entry's time, the exit's timestamp less its duration, marked
    entry_lost: every event kept before that exit happened inside its call, so the span encloses
    them. Without a document of its own to share, the sink writes one at its end."""

    def __init__(
        self,
        out,
        symbols: SymbolTable,
        arch: str,
        kernel: KernelVersion,
        document: ChromeDocument | None = None,
        retval: bool = False,
        args=None,
    ):
        check_graph_options(kernel, retval, args)
        self.out, self.sym, self.arch, self.kernel = out, symbols, arch, kernel
        self.retval, self.args = retval, args  # args(name, ev): funcgraph-args' items (CallCheck.function_args)
        self.own = document is None
        self.doc = ChromeDocument() if document is None else document
        self.events: list[dict] = []
        self.open: list[tuple[int, str]] = []  # the calls entered and not yet exited: (depth, name)
        self.tracer, self.pid, self.last_ts = "", 0, 0

    def begin(self, tracer: str, clock: str) -> None:
        self.tracer = tracer
        self.pid = self.doc.add(self.arch, self.events, clock)

    def event(self, ev: Event) -> None:
        self.last_ts = ev.ts
        if ev.probe is not None:
            self.events.append(self._event(ev.probe.event, ev.tracer, "i", ev.ts, self._probe_args(ev)))
        elif self.tracer != "function_graph":
            assert ev.parent_ip is not None  # the function tracer's entries always have their caller
            parent = {"parent_ip": f"{ev.parent_ip:#x}", "parent": self.sym.name(ev.parent_ip)}
            self.events.append(self._event(func_name(self.sym, ev.ip), ev.tracer, "i", ev.ts, parent))
        elif ev.type == "entry":
            self._close(ev.depth, ev.ts)
            name = func_name(self.sym, ev.ip)
            args = {} if self.args is None else {"args": self.args(name, ev)}
            self.events.append(self._event(name, ev.tracer, "B", ev.ts, args))
            self.open.append((ev.depth, name))
        else:
            self._exit(ev)

    def _exit(self, ev: Event) -> None:
        self._close(ev.depth + 1, ev.ts)
        name = func_name(self.sym, ev.ip)
        if self.open and self.open[-1][0] == ev.depth:
            self.open.pop()
        else:
            assert ev.duration is not None  # every exit carries its duration
            entry_ts = ev.ts - ev.duration
            begin = self._event(name, ev.tracer, "B", entry_ts, {"entry_lost": True})
            self.events.insert(bisect_right(self.events, entry_ts, key=lambda e: e["ts"]), begin)
        assert ev.retval is not None  # every exit carries its return value
        ret = {"retval": graph_retval(ev.retval)} if self.retval else {}
        self.events.append(self._event(name, ev.tracer, "E", ev.ts, ret))

    def _close(self, depth: int, ts: int) -> None:
        """End, unfinished at ts, the open calls at depth or deeper."""
        while self.open and self.open[-1][0] >= depth:
            _, name = self.open.pop()
            self.events.append(self._event(name, self.tracer, "E", ts, {"unfinished": True}))

    def _probe_args(self, ev: Event) -> dict[str, Any]:
        """The probe's fetched fields as its text prints them, after where it fired, named as the
        kernel's own fields of these events (__probe_ip; __probe_func and __probe_ret_ip at an exit),
        which no fetcharg may be named (traceprobe_conflict_field_name, kernel/trace/trace_probe.c)."""
        if ev.type == "exit":
            assert ev.parent_ip is not None  # an exit always has where it returned to
            where = {"__probe_func": func_name(self.sym, ev.ip), "__probe_ret_ip": location(self.sym, ev.parent_ip)}
        else:
            where = {"__probe_ip": location(self.sym, ev.ip)}
        return {**where, **{arg.name: format_value(arg, value) for arg, value in ev.fetch}}

    def _event(self, name: str, cat: str, ph: str, ts: int, args: dict) -> dict:
        event: dict[str, Any] = {"name": name, "cat": cat, "ph": ph, "ts": ts, "pid": self.pid, "tid": self.pid}
        if ph == "i":
            event["s"] = "t"
        if args:
            event["args"] = args
        return event

    def end(self, summary: dict) -> None:
        self._close(0, self.last_ts)
        self.doc.about[self.arch] = {"pid": self.pid, "tracer": self.tracer, "kernel": str(self.kernel), **summary}
        if self.own:
            self.doc.write(self.out)
