"""Trace events: small records, formatted only by a sink."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.regs import Verification
from ..probe_events import FetchArg, ProbeSpec

NR_ARGS = 6  # arguments recorded per entry event
# The counters a trace ends with, per tracer: the one each event type advances. The live tracers
# and a replayed recording count their events by the same names.
COUNTERS = {
    "function": {"entry": "entries-written"},
    "function_graph": {"entry": "entries", "exit": "exits"},
    "nop": {"entry": "events", "exit": "events"},
}


@dataclass(slots=True)
class Event:
    tracer: str
    type: str  # 'entry' or 'exit'
    ip: int  # the patch site of the function (the kernel's ip)
    parent_ip: int | None  # where it returns to (None: a probe inside a function, which has none)
    depth: int
    ts: int
    args: tuple[int, ...] | None  # the first six arguments, from the snapshot (entries only)
    regs_kind: str  # 'ftrace_regs' ...
    regs: dict[str, int]  # the fields the mechanism captured
    missing: tuple[str, ...]  # the registers it does not capture
    verification: Verification | None = None  # with verify mode: captured vs true
    retval: int | None = None  # exits: the return value register
    duration: int | None = None  # exits: trace-clock ticks since the entry
    probe: ProbeSpec | None = None  # probe events: the spec
    fetch: tuple[tuple[FetchArg, int | bytes | str], ...] = ()  # probe events: (FetchArg, value) pairs
    irqs_off: bool = False  # the CPU had interrupts masked when the event was recorded

    @property
    def mismatch(self) -> list[str] | None:
        return None if self.verification is None else self.verification.mismatch
