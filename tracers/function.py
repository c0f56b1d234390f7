"""The `function` tracer: one event per traced function entry, with the ftrace_regs snapshot."""
from __future__ import annotations

from .events import Event
from .ftrace import Ftrace, FtraceOps, OpsFlag
from .trace_clock import CLOCKS

NR_ARGS = 6


class FunctionTracer:
    name = "function"

    def __init__(self, ftrace: Ftrace, sink, clock: str = "counter", filters=(), notrace=(),
                 verify: bool = False):
        self.ftrace, self.sink, self.verify = ftrace, sink, verify
        self.clock_name = clock
        self.clock = None
        self.ops = FtraceOps(self._callback, OpsFlag.RECURSION, name=self.name)
        if filters:
            ftrace.set_filter(self.ops, list(filters))
        if notrace:
            ftrace.set_notrace(self.ops, list(notrace))
        self.entries = 0
        self.mismatching = 0
        self._sps: list[int] = []

    def __enter__(self):
        self.clock = CLOCKS[self.clock_name](self.ftrace.m)
        self.sink.begin(self.name, self.clock_name)
        if self.verify:
            self.ftrace.set_verify(True)
        self.ftrace.register(self.ops)
        return self

    def __exit__(self, *exc):
        self.ftrace.unregister(self.ops)
        if self.verify:
            self.ftrace.set_verify(False)
        self.clock.close()
        self.sink.end(self.summary())

    def summary(self) -> list[str]:
        lines = [f"entries-written: {self.entries}"]
        if self.verify:
            lines.append(f"verify: {self.entries - self.mismatching} of {self.entries} snapshots equal the "
                         f"true registers in every captured field")
        return lines

    def _depth(self, sp: int) -> int:
        """Call depth from the stack: entries whose sp is at or below this one have returned."""
        while self._sps and self._sps[-1] <= sp:
            self._sps.pop()
        self._sps.append(sp)
        return len(self._sps) - 1

    def _callback(self, ip, parent_ip, op, fregs) -> None:
        verification = fregs.verify()
        if verification is not None and verification.mismatch:
            self.mismatching += 1
        self.entries += 1
        self.sink.event(Event(
            self.name, "entry", ip, parent_ip, self._depth(fregs.get_stack_pointer()), self.clock.now(),
            tuple(fregs.get_argument(n) for n in range(NR_ARGS)), fregs.kind, fregs.fields,
            tuple(fregs.missing), verification))
