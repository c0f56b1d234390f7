"""Probe events' guest handlers, written for each trace's events in the macros of
tracers/arch/<arch>/probe_events.S and assembled after it: an entry or exit handler writes a
record (output/probe_records.py) with the event's fetchargs compiled to straight-line code
(probe_events/program.py); a return event whose fetchargs read $argN has an entry handler that
saves those arguments (trace_fprobe_entry_handler). Where the arch has ftrace_regs_caller, a p event
on an ftrace site has a kprobe pre_handler (kprobe_dispatcher, kprobe_trace_func) that the guest
kprobe_ftrace_handler calls (core/kprobe_guest.py), writing a kprobe record: its macros are only in
the probe_events.S of such an arch. Where the rethook trampoline has a guest callback
(core/rethook_guest.py), an r event has a return handler (kretprobe_dispatcher,
kretprobe_trace_func) writing a kretprobe record, and its $argN are saved by a save handler that the
guest pre_handler_kretprobe calls (trace_kprobe_entry_handler)."""

from __future__ import annotations

import struct

from ..output.probe_records import ProbeRecords
from ..probe_events.program import Step, statements

U64 = struct.Struct("<Q")


class ProbeCode:
    def __init__(self, ftrace, ring_buffer, kernel):
        m, karch = ftrace.m, ftrace.karch
        self.m, self.karch, self.records = m, karch, ProbeRecords.of(karch, kernel)
        base, size = m.STACK
        self._regions = m.alloc("lab data", 8, 8)  # where the region table is, set each load()
        self._constants = {
            **self.records.asm_constants(),
            "STACK_BASE": base,
            "STACK_LAST": base + size - 8,  # regs_within_kernel_stack: the last whole word
            **ring_buffer.writer_constants,
            "PE_REGIONS": self._regions,
        }
        self._stores = {
            "entry": ("fetch_store", self.records.entry.offsets["fetch"]),
            "exit": ("fetch_store", self.records.exit.offsets["fetch"]),
            "save": ("fetch_save", 0),
        }
        if self.records.kprobe is not None:
            self._stores["kprobe"] = ("fetch_store", self.records.kprobe.offsets["fetch"])
        if self.records.kretprobe is not None:
            self._stores["kretprobe"] = ("fetch_store", self.records.kretprobe.offsets["fetch"])
        self._loaded: dict[str, dict[str, int]] = {}  # each handlers' text assembled, by the text
        self._table, self._table_size = 0, 0

    def load(self, handlers: list[tuple[str, int, list[Step]]]) -> list[int]:
        """Each handler (its kind, its event's index, its fetch steps) in guest code: their
        addresses. The same handlers are assembled once; the machine's mappings, which a load
        checks, are written afresh."""
        if not handlers:
            return []
        # the code first, then the data (the file's and each handler's constants): see
        # probe_events_data in probe_events.S
        code, data = zip(*(self._handler(kind, event, steps) for kind, event, steps in handlers), strict=True)
        text = "\n".join(["", *code, "probe_events_data", *data, ""])
        syms = self._loaded.get(text)
        if syms is None:
            syms = self._loaded[text] = self.karch.load(
                self.m, "probe_events.S", self._constants, self.records.asm_macros(), then=text
            )
        self._write_regions()
        return [syms[f"probe_{kind}_{event}"] for kind, event, _ in handlers]

    def _handler(self, kind: str, event: int, steps: list[Step]) -> tuple[str, str]:
        """A handler's code, and its constant pool."""
        name = f"probe_{kind}_{event}"
        store, at = self._stores[kind]
        lines, pool = statements(steps, name, store, at)
        begin, end = (
            ("probe_save_begin", "probe_save_end")
            if kind == "save"
            else (f"probe_{kind}_begin {event}, {name}_done", f"probe_{kind}_end {name}_done")
        )
        return "\n".join([f".globl {name}", f"{name}:", begin, *lines, end]), "\n".join(pool)

    def _write_regions(self) -> None:
        """The machine's mappings, as a fetch may read them: nr, then (base, end) pairs, in one
        table reused while big enough."""
        regions = sorted((r.base, r.base + r.size) for r in self.m.regions)
        blob = U64.pack(len(regions)) + b"".join(U64.pack(a) + U64.pack(b) for a, b in regions)
        if len(blob) > self._table_size:
            self._table, self._table_size = self.m.alloc("lab data", len(blob), 64), len(blob)
        self.m.write(self._table, blob)
        self.m.write(self._regions, U64.pack(self._table))
