"""The `function` tracer: one event per traced function entry, with the ftrace_regs snapshot.

With the counter clock and no verify mode it records through the guest ring buffer: the ops
function is guest code (function_trace_call) and Python only reads records in bulk. Otherwise
(insns clock, verify mode) a Python callback builds each event, with the same result.
"""
from __future__ import annotations

from ..output.events import Event
from ..core.ftrace import FtraceOps, OpsFlag
from ..core.regs import missing_registers
from .guest import REC_ENTRY, record_struct
from .tracer import NR_ARGS, Tracer


class FunctionTracer(Tracer):
    name = "function"

    def __init__(self, lab, sink, clock: str = "counter", filters=(), notrace=(), verify: bool = False,
                 ring: bool | None = None, buffer_mode: str = "stream", consumer=None):
        super().__init__(lab, sink, clock, verify)
        self.ring = (clock == "counter" and not verify) if ring is None else ring
        self.buffer_mode = buffer_mode
        self.consumer = consumer or self.decode
        callback = self._record if self.ring else self._callback
        guest = lab.tracer_code.function_trace_call if self.ring else None
        self.ops = FtraceOps(callback, OpsFlag.RECURSION, name=self.name, guest_func=guest)
        if filters:
            lab.ftrace.set_filter(self.ops, list(filters))
        if notrace:
            lab.ftrace.set_notrace(self.ops, list(notrace))
        self._sps: list[int] = []
        self.counts = {"entries-written": 0}

    def start(self) -> None:
        if self.ring:
            self.ring_start(self.buffer_mode, self.consumer)
        if self.verify:
            self.lab.ftrace.set_verify(True)
        self.lab.ftrace.register(self.ops)

    def stop(self) -> None:
        self.lab.ftrace.unregister(self.ops)
        if self.verify:
            self.lab.ftrace.set_verify(False)
        if self.ring:
            self.ring_stop()

    def _depth(self, sp: int) -> int:
        """Call depth from the stack: entries whose sp is at or below this one have returned."""
        while self._sps and self._sps[-1] <= sp:
            self._sps.pop()
        self._sps.append(sp)
        return len(self._sps) - 1

    def _record(self, ip, parent_ip, op, fregs) -> None:
        """What function_trace_call does, for when other ops share the sites (the list function)."""
        self.lab.ring_buffer.write(REC_ENTRY, ip, parent_ip, *fregs.fields.values())

    def decode(self, chunk: bytes) -> None:
        """Records from the ring buffer, as the events the Python callback would have made."""
        decode_records(self, self.lab.karch, chunk)

    def _callback(self, ip, parent_ip, op, fregs) -> None:
        self.counts["entries-written"] += 1
        self.emit(Event(
            self.name, "entry", ip, parent_ip, self._depth(fregs.get_stack_pointer()), self.clock.now(),
            tuple(fregs.get_argument(n) for n in range(NR_ARGS)), fregs.kind, fregs.fields,
            tuple(fregs.missing), fregs.verify()))


def decode_records(tracer, karch, chunk: bytes) -> None:
    """Function-tracer records (guest.Records.function) to events, through tracer.emit; the
    same for a live trace and a replayed file."""
    cpu, saved = karch.cpu, karch.ftrace_regs_saved
    sp = saved.index(cpu.sp)
    args = [saved.index(r) for r in cpu.arg_regs[:NR_ARGS]]
    missing = tuple(missing_registers(karch, saved, karch.ftrace_regs_aliases))
    for _, ts, ip, parent, *fields in record_struct(karch).iter_unpack(chunk):     # entries only
        tracer.counts["entries-written"] += 1
        tracer.emit(Event(tracer.name, "entry", ip, parent, tracer._depth(fields[sp]), ts,
                          tuple(fields[i] for i in args), "ftrace_regs", dict(zip(saved, fields)), missing))
