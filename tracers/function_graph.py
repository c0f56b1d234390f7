"""The `function_graph` tracer: an entry and an exit event per call, durations from the trace clock."""
from __future__ import annotations

import struct

from .events import Event
from .fgraph import FgraphOps
from .tracer import NR_ARGS, Tracer

CALLTIME = struct.Struct("<Q")


class FunctionGraphTracer(Tracer):
    name = "function_graph"

    def __init__(self, lab, sink, clock: str = "counter", filters=(), notrace=(), verify: bool = False,
                 max_depth: int = 0):
        super().__init__(lab, sink, clock, verify)
        self.fgraph = lab.fgraph
        self.max_depth = max_depth            # max_graph_depth; 0 is no limit
        self.gops = FgraphOps(self._entry, self._return, name=self.name)
        if filters:
            lab.ftrace.set_filter(self.gops.ops, list(filters))
        if notrace:
            lab.ftrace.set_notrace(self.gops.ops, list(notrace))
        self.counts = {"entries": 0, "exits": 0}

    def start(self) -> None:
        if self.verify:
            self.lab.ftrace.set_verify(True)
            self.fgraph.set_verify(True)
        self.fgraph.register(self.gops)

    def stop(self) -> None:
        self.fgraph.unregister(self.gops)
        if self.verify:
            self.fgraph.set_verify(False)
            self.lab.ftrace.set_verify(False)

    def summary(self) -> dict:
        out = super().summary()
        out["counters"]["trace_overrun"] = self.fgraph.trace_overrun
        return out

    def _entry(self, trace, gops, fregs) -> int:
        if self.max_depth and trace.depth >= self.max_depth:
            return 0
        now = self.clock.now()
        data = self.fgraph.reserve_data(CALLTIME.size)      # the calltime lives on the shadow stack
        if data is None:
            return 0
        self.lab.machine.write(data, CALLTIME.pack(now))
        self.counts["entries"] += 1
        self.emit(Event(self.name, "entry", trace.func, fregs.get_return_address(), trace.depth, now,
                        tuple(fregs.get_argument(n) for n in range(NR_ARGS)), fregs.kind, fregs.fields,
                        tuple(fregs.missing), fregs.verify()))
        return 1

    def _return(self, trace, gops, fregs) -> None:
        now = self.clock.now()
        addr, _ = self.fgraph.retrieve_data()
        [calltime] = CALLTIME.unpack(self.lab.machine.view(addr, CALLTIME.size))
        self.counts["exits"] += 1
        self.emit(Event(self.name, "exit", trace.func, fregs.get_instruction_pointer(), trace.depth, now,
                        None, fregs.kind, fregs.fields, tuple(fregs.missing), fregs.verify(),
                        retval=trace.retval, duration=now - calltime))
