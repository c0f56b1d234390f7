"""Probe events' guest handlers (tracers/arch/<arch>/probe_events.S), assembled once per lab: the
entry and exit handlers write a record each (output/probe_records.py) and run the event's fetch
program (probe_events/program.py); a return probe's entry saves the arguments."""

from __future__ import annotations

import struct

from ..output.probe_records import ProbeRecords
from ..probe_events import program

U64 = struct.Struct("<Q")


class ProbeCode:
    def __init__(self, ftrace, ring_buffer, kernel):
        m, karch = ftrace.m, ftrace.karch
        self.m, self.records = m, ProbeRecords.of(karch, kernel)
        base, size = m.STACK
        syms = karch.load(
            m,
            "probe_events.S",
            {
                **self.records.asm_constants(),
                **program.asm_constants(),
                "STACK_BASE": base,
                "STACK_LAST": base + size - 8,  # regs_within_kernel_stack: the last whole word
                "rb_reserve": ring_buffer.reserve,
            },
            self.records.asm_macros(),
        )
        self.entry_event, self.exit_event = syms["probe_entry_event"], syms["probe_exit_event"]
        self.save_args = syms["probe_save_args"]
        self._regions = m.alloc("lab data", 8, 8)  # where the region table is, set each load()
        m.write_code(syms["pe_regions"], U64.pack(self._regions))
        self._arena, self._arena_size = 0, 0

    def load(self, programs: list[bytes]) -> list[int]:
        """The programs in guest memory, after the machine's mappings as a fetch may read them (one
        arena, reused while big enough): their addresses."""
        regions = [(r.base, r.base + r.size) for r in sorted(self.m.regions, key=lambda r: r.base)]
        blob = bytearray(U64.pack(len(regions)) + b"".join(U64.pack(a) + U64.pack(b) for a, b in regions))
        offsets = []
        for prog in programs:
            offsets.append(len(blob))
            blob += prog
        if len(blob) > self._arena_size:
            self._arena, self._arena_size = self.m.alloc("lab data", len(blob), 64), len(blob)
        self.m.write(self._arena, bytes(blob))
        self.m.write(self._regions, U64.pack(self._arena))
        return [self._arena + at for at in offsets]
