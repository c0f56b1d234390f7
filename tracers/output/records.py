"""The built-in tracers' ring-buffer records, declared once: their guest code's asm constants, their
Python writers and the decoders all come from these layouts."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from emulator.layout import Layout

from ..core.ring_buffer import RECORD_HEADER, fields_macro
from ..kernel_version import MODELLED, KernelVersion

REC_ENTRY, REC_EXIT = 1, 2  # the records' types: a function's entry, its exit
# A record reserved but never committed: rb_reserve clears the type and the writer stores it last
# (as the kernel's reserve/commit, whose uncommitted events no reader sees), so a run an error
# stopped in the middle of a record leaves one of these, which the decoders skip.
REC_UNCOMMITTED = 0
# A probe event written into a tracer's buffer (`trace --tracer ... -e ...`): the kernel writes the
# probe's own entry there (trace_event_buffer_reserve); the lab writes this record for its place and
# timestamp, its one body word a key to the event Python keeps. Only live traces hold these.
REC_EVENT = 3
EVENT_RECORD = RECORD_HEADER.extend("probe event record", ("key",))


@dataclass(frozen=True)
class Records:
    """One arch's records in one release, each the ring buffer's record header and then its own
    words (the kernel's struct ftrace_entry, ftrace_graph_ent_entry and ftrace_graph_ret_entry).
    Every record in the buffer has the size of the largest. The exit record holds what the
    release's return_to_handler saved (FgraphArch.return_to_handlers: x86 saves sp from 6.18)."""

    function: Layout  # ip, parent_ip, the ftrace_regs fields ftrace_caller saved
    graph_entry: Layout  # the function, its return address, its depth, the same fields
    graph_exit: Layout  # the function, where it returned, its depth, the exit's fields, calltime
    exit_saved: tuple[str, ...]  # the exit's fields: the ftrace_regs members return_to_handler saved
    size: int
    codec: struct.Struct  # all of a record's words, for decoding in bulk

    @classmethod
    def of(cls, karch, exit_saved: tuple[str, ...]) -> Records:
        saved, exits = (tuple(f"regs_{m}" for m in members) for members in (karch.ftrace_regs_saved, exit_saved))
        layouts = (
            RECORD_HEADER.extend("ftrace_entry", ("ip", "parent", *saved)),
            RECORD_HEADER.extend("ftrace_graph_ent_entry", ("ip", "parent", "depth", *saved)),
            RECORD_HEADER.extend("ftrace_graph_ret_entry", ("ip", "parent", "depth", *exits, "calltime")),
        )
        size = max(layout.size for layout in layouts)
        return cls(*layouts, tuple(exit_saved), size, struct.Struct(f"<{size // 8}Q"))

    def asm_constants(self) -> dict[str, int]:
        return {
            **self.function.asm_constants("FN_"),
            **self.graph_entry.asm_constants("GRAPH_ENT_"),
            **self.graph_exit.asm_constants("GRAPH_RET_"),
            "REC_ENTRY": REC_ENTRY,
            "REC_EXIT": REC_EXIT,
        }

    def asm_macros(self) -> str:
        """`graph_exit_fields fregs, rec`: the guest code's copy of the exit's fields from the exit
        ftrace_regs into the exit record (fields_macro)."""
        return fields_macro("graph_exit_fields", self.exit_saved, "GRAPH_RET")


_RECORDS: dict[tuple[str, tuple[str, ...]], Records] = {}


def records_of(karch, kernel: KernelVersion = MODELLED) -> Records:
    """The records of an arch in a kernel release (one per distinct exit field list)."""
    exit_saved = karch.fgraph.exit_saved(kernel)
    key = (karch.name, exit_saved)
    if key not in _RECORDS:
        _RECORDS[key] = Records.of(karch, exit_saved)
    return _RECORDS[key]


def record_struct(karch, kernel: KernelVersion = MODELLED) -> struct.Struct:
    """A record's words: how the decoders and the record file read records in bulk."""
    return records_of(karch, kernel).codec
