"""The built-in tracers' ring-buffer records, declared once: their guest code's asm constants, their
Python writers and the decoders all come from these layouts."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from emulator.layout import Layout

from ..arch import KERNEL_ARCHES
from ..core.ring_buffer import RECORD_HEADER

REC_ENTRY, REC_EXIT = 1, 2  # the records' types: a function's entry, its exit
# A probe event written into a tracer's buffer (`trace --tracer ... -e ...`): the kernel writes the
# probe's own entry there (trace_event_buffer_reserve); the lab writes this record for its place and
# timestamp, its one body word a key to the event Python keeps. Only live traces hold these.
REC_EVENT = 3
EVENT_RECORD = RECORD_HEADER.extend("probe event record", ("key",))


@dataclass(frozen=True)
class Records:
    """One arch's records, each the ring buffer's record header and then its own words (the kernel's
    struct ftrace_entry, ftrace_graph_ent_entry and ftrace_graph_ret_entry). Every record in the
    buffer has the size of the largest."""

    function: Layout  # ip, parent_ip, the ftrace_regs fields ftrace_caller saved
    graph_entry: Layout  # the function, its return address, its depth, the same fields
    graph_exit: Layout  # the function, where it returned, its depth, the exit's fields, calltime
    size: int
    codec: struct.Struct  # all of a record's words, for decoding in bulk

    @classmethod
    def of(cls, karch) -> Records:
        saved, exit_saved = (
            tuple(f"regs_{m}" for m in members) for members in (karch.ftrace_regs_saved, karch.fgraph.exit_saved)
        )
        layouts = (
            RECORD_HEADER.extend("ftrace_entry", ("ip", "parent", *saved)),
            RECORD_HEADER.extend("ftrace_graph_ent_entry", ("ip", "parent", "depth", *saved)),
            RECORD_HEADER.extend("ftrace_graph_ret_entry", ("ip", "parent", "depth", *exit_saved, "calltime")),
        )
        size = max(layout.size for layout in layouts)
        return cls(*layouts, size, struct.Struct(f"<{size // 8}Q"))

    def asm_constants(self) -> dict[str, int]:
        return {
            **self.function.asm_constants("FN_"),
            **self.graph_entry.asm_constants("GRAPH_ENT_"),
            **self.graph_exit.asm_constants("GRAPH_RET_"),
            "REC_ENTRY": REC_ENTRY,
            "REC_EXIT": REC_EXIT,
        }


RECORDS = {name: Records.of(karch) for name, karch in KERNEL_ARCHES.items()}


def record_struct(karch) -> struct.Struct:
    """A record's words: how the decoders and the record file read records in bulk."""
    return RECORDS[karch.name].codec
