"""The `function_graph` tracer: an entry and an exit event per call, durations from the trace clock.

With the counter clock and no verify mode it records through the guest ring buffer, and when it
is fgraph's only user the entry and the exit both run as guest code (graph_trace_entry,
graph_trace_return): no Python per call. With other users it is called from fgraph.py and
writes the same records. Otherwise (insns clock, verify mode) Python builds each event directly.
"""

from __future__ import annotations

import struct

from ..core.fgraph import FgraphOps
from ..output.decode import GraphDecoder
from ..output.events import NR_ARGS, Event
from ..output.records import REC_ENTRY, REC_EXIT
from .tracer import RingTracer

CALLTIME = struct.Struct("<Q")


class FunctionGraphTracer(RingTracer):
    name = "function_graph"
    decoder_class = GraphDecoder

    def __init__(self, lab, sink, max_depth: int = 0, **options):
        super().__init__(lab, sink, **options)
        self.fgraph = lab.fgraph
        self.max_depth = max_depth  # max_graph_depth; 0 is no limit
        if self.ring:
            code = lab.tracer_code
            guest = (code.graph_trace_entry, code.graph_trace_return)
            self.gops = FgraphOps(self._entry_record, self._return_record, name=self.name, guest=guest)
        else:
            self.gops = FgraphOps(self._entry, self._return, name=self.name)
        self.select(self.gops.ops)

    def verified(self) -> tuple:
        return (self.lab.ftrace, self.fgraph)  # entry and exit snapshots

    def attach(self) -> None:
        if self.ring:
            self.fgraph.set_max_depth(self.max_depth)  # the guest path's own check
        self.fgraph.register(self.gops)

    def detach(self) -> None:
        self.fgraph.unregister(self.gops)
        if self.ring:
            self.fgraph.set_max_depth(0)

    def stats(self) -> dict:
        return {**super().stats(), "trace_overrun": self.fgraph.trace_overrun}

    # -- the Python paths ---------------------------------------------------------------------

    def _reserve(self, trace, now_value) -> bool:
        if self.max_depth and trace.depth >= self.max_depth:
            return False
        # the calltime lives in reserved shadow-stack data, as trace_graph_entry's fgraph_times do
        # since 6.13 (commit f1f36e22bee9, kernel/trace/trace_functions_graph.c)
        data = self.fgraph.reserve_data(CALLTIME.size)
        if data is None:
            return False
        self.lab.machine.write(data, CALLTIME.pack(now_value()))
        return True

    def _calltime(self) -> int | None:
        """None when this frame holds none of ours: trace_graph_return then records nothing (the
        user at index 0 is called for every hooked frame, BIT(0); kernel/trace/
        trace_functions_graph.c, gregkh/linux 000aa47a5123)."""
        reserved = self.fgraph.retrieve_data()
        return None if reserved is None else CALLTIME.unpack(self.lab.machine.view(reserved[0], CALLTIME.size))[0]

    def _entry(self, trace, gops, fregs) -> int:
        now = []
        if not self._reserve(trace, lambda: now.append(self.clock.now()) or now[0]):
            return 0
        self.emit(
            Event(
                self.name,
                "entry",
                trace.func,
                fregs.get_return_address(),
                trace.depth,
                now[0],
                tuple(fregs.get_argument(n) for n in range(NR_ARGS)),
                fregs.kind,
                fregs.fields,
                tuple(fregs.missing),
                fregs.verify(),
            )
        )
        return 1

    def _return(self, trace, gops, fregs) -> None:
        now, calltime = self.clock.now(), self._calltime()
        if calltime is None:
            return
        self.emit(
            Event(
                self.name,
                "exit",
                trace.func,
                fregs.get_instruction_pointer(),
                trace.depth,
                now,
                None,
                fregs.kind,
                fregs.fields,
                tuple(fregs.missing),
                fregs.verify(),
                retval=trace.retval,
                duration=now - calltime,
            )
        )

    # -- the ring-buffer path (what graph_trace_entry / graph_trace_return do) --------------------
    # The records' words after the header, in Records.graph_entry's and graph_exit's order.

    def _entry_record(self, trace, gops, fregs) -> int:
        rb = self.lab.ring_buffer
        saved = (fregs.member(m) for m in self.lab.karch.ftrace_regs_saved)  # as function.py's _record
        return int(
            self._reserve(
                trace,
                lambda: rb.write(REC_ENTRY, trace.func, fregs.get_return_address(), trace.depth, *saved) or 0,
            )
        )

    def _return_record(self, trace, gops, fregs) -> None:
        calltime = self._calltime()
        if calltime is None:
            return
        self.lab.ring_buffer.write(
            REC_EXIT, trace.func, fregs.get_instruction_pointer(), trace.depth, *fregs.fields.values(), calltime
        )
