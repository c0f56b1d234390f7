"""The built-in tracers' guest code (what kernel/trace/trace_functions.c and
trace_functions_graph.c do, in tracers/arch/<arch>/function_trace.S), assembled once per lab; the
records it writes are declared in tracers/output/records.py."""

from __future__ import annotations

import struct

from ..core import fgraph
from ..kernel_version import MODELLED, KernelVersion
from ..output.records import records_of

U64 = struct.Struct("<Q")


class TracerCode:
    """The tracers' guest code in one lab: assembled after the cores, calling the ring buffer's
    rb_reserve and pushing and popping fgraph's frames."""

    def __init__(self, ftrace, fgraph_core, ring_buffer, kernel: KernelVersion = MODELLED):
        m, karch = ftrace.m, ftrace.karch
        records = records_of(karch, kernel)  # the exit record holds what the release's return_to_handler saved
        syms = karch.load(
            m,
            "function_trace.S",
            {**records.asm_constants(), **fgraph.asm_constants(karch), "rb_reserve": ring_buffer.reserve},
            records.asm_macros(),
        )
        self.function_trace_call = syms["function_trace_call"]
        self.graph_trace_entry, self.graph_trace_return = syms["graph_trace_entry"], syms["graph_trace_return"]
        m.write_code(syms["fg_control"], U64.pack(fgraph_core.control))
        bad_fp = syms.get("fgraph_bad_fp")  # where the frame pointer is checked on return
        if bad_fp is not None:
            m.hook_call(lambda _addr: fgraph_core.bad_frame_pointer(), bad_fp)
        m.hook_call(lambda _addr: fgraph_core.empty_shadow_stack(), syms["fgraph_empty"])
