"""Sinks: the kernel's trace text, and JSON lines. Both stream, one event at a time."""
from __future__ import annotations

import json

from .events import Event

COMM, PID, CPU = "ftlab", 1, 0
# Irq, need-resched, hardirq, preempt-depth and migrate-disable columns: the lab runs one task
# with interrupts enabled and no preemption counting, so all five are '.'.
FLAGS = "....."

FUNCTION_HEADER = """\
# tracer: {tracer}
#
#                                _-----=> irqs-off/BH-disabled
#                               / _----=> need-resched
#                              | / _---=> hardirq/softirq
#                              || / _--=> preempt-depth
#                              ||| / _-=> migrate-disable
#                              |||| /     delay
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |"""


class TextSink:
    """The `trace` file of the function tracer: `comm-pid [cpu] flags ts: func <-parent`."""

    def __init__(self, out, machine):
        self.out, self.sym = out, machine.symbols

    def begin(self, tracer: str, clock: str) -> None:
        self.out.write(FUNCTION_HEADER.format(tracer=tracer) + "\n")

    def event(self, ev: Event) -> None:
        # trace_print_context: "%16s-%-7d [%03d] <flags> %12llu: " for a clock not in ns
        self.out.write(f"{COMM:>16}-{PID:<7d} [{CPU:03d}] {FLAGS} {ev.ts:12d}: "
                       f"{self._func(ev.ip)} <-{self._func(ev.parent_ip)}\n")
        if ev.verification is not None and ev.mismatch:
            for c in ev.verification.checks:
                if not c.equal:
                    self.out.write(f"# verify: {c.field} saved {c.captured:#x}, true {c.truth:#x}\n")

    def _func(self, addr: int) -> str:
        hit = self.sym.lookup(addr)
        return hit[0].name if hit else f"{addr:#x}"

    def end(self, summary: list[str]) -> None:
        for line in summary:
            self.out.write(f"# {line}\n")


class JsonSink:
    """One JSON object per event per line."""

    def __init__(self, out, machine):
        self.out, self.sym, self.arch = out, machine.symbols, machine.arch.name

    def begin(self, tracer: str, clock: str) -> None:
        pass

    def event(self, ev: Event) -> None:
        hit = self.sym.lookup(ev.ip)
        record = {
            "arch": self.arch, "tracer": ev.tracer, "type": ev.type,
            "func": hit[0].name if hit else None, "ip": ev.ip,
            "parent_ip": ev.parent_ip, "parent": self.sym.name(ev.parent_ip),
            "depth": ev.depth, "args": list(ev.args), "ts": ev.ts,
            "regs": {"kind": ev.regs_kind, "fields": ev.regs, "missing": list(ev.missing),
                     "mismatch": ev.mismatch},
        }
        if ev.verification is not None:
            record["regs"]["truth"] = {c.field: c.truth for c in ev.verification.checks}
        self.out.write(json.dumps(record) + "\n")

    def end(self, summary: list[str]) -> None:
        pass


SINKS = {"text": TextSink, "json": JsonSink}
