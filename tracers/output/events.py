"""Trace events: small records, formatted only by a sink."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.regs import Verification
from ..probe_events import FetchArg, ProbeSpec

NR_ARGS = 6  # arguments recorded per entry event
# The counters a trace ends with, per tracer: the one each event type advances. The live tracers
# and a replayed recording count their events by the same names. The function and nop tracers'
# events are the entries in the kernel's buffer, which their trace file's header counts.
COUNTERS = {
    "function": {"entry": "entries-in-buffer"},
    "function_graph": {"entry": "entries", "exit": "exits"},
    "nop": {"entry": "entries-in-buffer", "exit": "entries-in-buffer", "print": "entries-in-buffer"},
}


def with_entries_written(counters: dict) -> dict:
    """The counters, with print_event_info()'s second number after its first where the tracer
    counts entries-in-buffer (kernel/trace/trace.c get_total_entries_cpu, v6.17): entries-written
    is the entries in the buffer plus those overwriting replaced (ring_buffer_overrun_cpu). A
    record a full buffer refused in no-overwrite mode (`lost`) is in neither: the kernel counts
    it apart, in dropped_events."""
    if "entries-in-buffer" not in counters:
        return counters
    entries = counters["entries-in-buffer"]
    return {
        "entries-in-buffer": entries,
        "entries-written": entries + counters.get("overwritten", 0),
        **{k: v for k, v in counters.items() if k != "entries-in-buffer"},
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
    text: str | None = None  # a print event's whole text (bpf_trace_printk: ...)

    @property
    def mismatch(self) -> list[str] | None:
        return None if self.verification is None else self.verification.mismatch
