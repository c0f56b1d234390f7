"""rethook's return and kretprobes' entry in guest code (tracers/arch/<arch>/rethook.S), where the
release's return trampoline has a guest callback (ReturnTrampoline.guest: x86's
arch_rethook_trampoline; arm64's kretprobes take a BRK, or call Python, at every return).

rethook_guest_callback is arch_rethook_trampoline_callback with rethook_trampoline_handler for a
return whose nodes all have guest handlers (Rethook's `guest`); the trampoline's stub calls it
first and, when it declines (a Python user's node, verify mode), calls Python as before.
pre_handler_kretprobe is a guest kretprobe's kprobe pre_handler (kretprobe.py), which the guest
kprobe_ftrace_handler calls (kprobe_guest.py). Both work on the pools and the task's list in
guest memory that rethook.py's Python side shares."""

from __future__ import annotations

import struct

from .kretprobe import GUEST_KRETPROBE
from .rethook import RETHOOK, RETHOOK_NODE, RETHOOK_TASK

U64 = struct.Struct("<Q")


class RethookCode:
    def __init__(self, core):
        m, design, syms = core.m, core.design, core.syms
        code = core.karch.load(
            m,
            design.guest,
            {
                **RETHOOK.asm_constants("RH_"),
                **RETHOOK_NODE.asm_constants("RHN_"),
                **RETHOOK_TASK.asm_constants("RHT_"),
                **GUEST_KRETPROBE.asm_constants("GKRP_"),
                "RETHOOK_TRAMPOLINE": core.trampoline,
            },
        )
        m.write_code(code["rh_task"], U64.pack(core.addr))
        m.write_code(syms["callback_guest"], U64.pack(code["rethook_guest_callback"]))
        self.pre_handler_kretprobe = code["pre_handler_kretprobe"]
        # the stub and the guest callback's choice of a path are the lab's, not the kernel's code:
        # the trampoline's cost stays the kernel's (the lab hook's block is counted, as before)
        m.plumbing(syms[design.callback], syms["rethook_callback_lab"])
        m.plumbing(code["rethook_guest_callback"], code["rgc_found"])

    @classmethod
    def load(cls, core) -> RethookCode | None:
        """The guest code, where the design has it (its trampoline calls a callback, not a trap) and
        the trampoline's file (the lab's, or a user's copy of it) has the word its stub calls through."""
        design = core.design
        return cls(core) if not design.trap and design.guest and "callback_guest" in core.syms else None
