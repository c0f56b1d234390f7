"""The `function` tracer: one event per traced function entry, with the ftrace_regs snapshot.

With the counter clock and no verify mode it records through the guest ring buffer: the ops
function is guest code (function_trace_call) and Python only reads records in bulk. Otherwise
(insns clock, verify mode) a Python callback builds each event, with the same result.
"""

from __future__ import annotations

from ..core.ftrace import FtraceOps, OpsFlag
from ..output.decode import FunctionDecoder, StackDepth
from ..output.events import NR_ARGS, Event
from ..output.records import REC_ENTRY
from .tracer import RingTracer


class FunctionTracer(RingTracer):
    name = "function"
    decoder_class = FunctionDecoder

    def __init__(self, lab, sink, **options):
        super().__init__(lab, sink, **options)
        callback = self._record if self.ring else self._callback
        guest = lab.tracer_code.function_trace_call if self.ring else None
        self.ops = FtraceOps(callback, OpsFlag.RECURSION, name=self.name, guest_func=guest)
        self.select(self.ops)
        self.depth = StackDepth()  # the Python path's call depth

    def verified(self) -> tuple:
        return (self.lab.ftrace,)

    def attach(self) -> None:
        self.lab.ftrace.register(self.ops)

    def detach(self) -> None:
        self.lab.ftrace.unregister(self.ops)

    def _record(self, ip, parent_ip, op, fregs) -> None:
        """What function_trace_call does, for when other ops share the sites (the list function).
        The record holds the words of ftrace_caller's fields, as the guest copies them: also where
        another ops's SAVE_REGS made the site call ftrace_regs_caller (a kretprobe's kprobe on
        ftrace), which saves more, and where a -pg site's trampoline stores a member it does not
        capture (arm64's x0), which the decoder leaves out (decode.partial_sites)."""
        member = fregs.member
        self.lab.ring_buffer.write(REC_ENTRY, ip, parent_ip, *(member(m) for m in self.lab.karch.ftrace_regs_saved))

    def _callback(self, ip, parent_ip, op, fregs) -> None:
        self.emit(
            Event(
                self.name,
                "entry",
                ip,
                parent_ip,
                self.depth(fregs.get_stack_pointer()),
                self.clock.now(),
                tuple(fregs.get_argument(n) for n in range(NR_ARGS)),
                fregs.kind,
                fregs.fields,
                tuple(fregs.missing),
                fregs.verify(),
            )
        )
