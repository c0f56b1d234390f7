"""The `function` tracer: one event per traced function entry, with the ftrace_regs snapshot."""
from __future__ import annotations

from .events import Event
from .ftrace import FtraceOps, OpsFlag
from .tracer import NR_ARGS, Tracer


class FunctionTracer(Tracer):
    name = "function"

    def __init__(self, lab, sink, clock: str = "counter", filters=(), notrace=(), verify: bool = False):
        super().__init__(lab, sink, clock, verify)
        self.ops = FtraceOps(self._callback, OpsFlag.RECURSION, name=self.name)
        if filters:
            lab.ftrace.set_filter(self.ops, list(filters))
        if notrace:
            lab.ftrace.set_notrace(self.ops, list(notrace))
        self._sps: list[int] = []
        self.counts = {"entries-written": 0}

    def start(self) -> None:
        if self.verify:
            self.lab.ftrace.set_verify(True)
        self.lab.ftrace.register(self.ops)

    def stop(self) -> None:
        self.lab.ftrace.unregister(self.ops)
        if self.verify:
            self.lab.ftrace.set_verify(False)

    def _depth(self, sp: int) -> int:
        """Call depth from the stack: entries whose sp is at or below this one have returned."""
        while self._sps and self._sps[-1] <= sp:
            self._sps.pop()
        self._sps.append(sp)
        return len(self._sps) - 1

    def _callback(self, ip, parent_ip, op, fregs) -> None:
        self.counts["entries-written"] += 1
        self.emit(Event(
            self.name, "entry", ip, parent_ip, self._depth(fregs.get_stack_pointer()), self.clock.now(),
            tuple(fregs.get_argument(n) for n in range(NR_ARGS)), fregs.kind, fregs.fields,
            tuple(fregs.missing), fregs.verify()))
