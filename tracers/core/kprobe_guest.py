"""kprobe_ftrace_handler in guest code (tracers/arch/<arch>/kprobe_ftrace.S), for kprobes on an
ftrace site (KPROBES_ON_FTRACE: x86's ftrace_regs_caller gives the full pt_regs) whose pre_handlers
are guest code too (probe events' kprobe_dispatcher). Loaded by Kprobes the first time such a point
is registered, only where the lab has ftrace_regs_caller (arm64 has none since 6.2: its kprobes on
a function's entry take the BRK exception, in Python).

The handler finds an address's guest kprobes in an ip table, as get_kprobe() finds the kprobe in
kprobe_table. current_kprobe is one word in guest memory that both this handler and the Python
Kprobes (kprobes.py) keep and test, so a hit while either side is handling a kprobe is missed.
Each guest kprobe counts its nhit and nmissed in guest memory, which Kprobe.nhit / Kprobe.nmissed
read live."""

from __future__ import annotations

import struct

from emulator.layout import Layout

from . import ip_table
from .ip_table import IpTable

KPROBE_CONTROL = Layout.of("kprobe guest control", ("table", "current"))
GUEST_KPROBE = Layout.of("guest kprobe", ("pre", "data", "nhit", "nmissed"))
KPROBE_AT = Layout.of("kprobe point", ("nr",))  # then its guest kprobes' addresses
U64 = struct.Struct("<Q")


class KprobeCode:
    def __init__(self, ftrace, breakpoint_size: int):
        m, karch = ftrace.m, ftrace.karch
        self.m = m
        syms = karch.load(
            m,
            "kprobe_ftrace.S",
            {
                **ip_table.asm_constants(),
                **KPROBE_CONTROL.asm_constants("KPC_"),
                **GUEST_KPROBE.asm_constants("GKP_"),
                **KPROBE_AT.asm_constants("KPROBE_AT_"),
                "KPROBE_OPCODE_SIZE": breakpoint_size,  # sizeof(kprobe_opcode_t)
                "MCOUNT_INSN_SIZE": karch.sites.size,
            },
        )
        self.handler = syms["kprobe_ftrace_handler"]
        self.control = m.alloc("lab data", KPROBE_CONTROL.size, 64)
        m.write_code(syms["kp_control"], U64.pack(self.control))
        self.table = IpTable(m)
        self._current = self.control + KPROBE_CONTROL.offsets["current"]
        m.write(self.control, KPROBE_CONTROL.codec.pack(self.table.addr, 0))
        self._arena, self._arena_size = 0, 0

    @property
    def current(self) -> int:
        """current_kprobe: non-zero while a kprobe is being handled, by either side."""
        return self.m.u64(self._current)

    @current.setter
    def current(self, value: int) -> None:
        self.m.write(self._current, U64.pack(value))

    def descriptor(self) -> int:
        """A new guest kprobe, its counts zero (set_handler gives it its pre_handler)."""
        addr = self.m.alloc("lab data", GUEST_KPROBE.size, 64)
        self.m.write(addr, bytes(GUEST_KPROBE.size))
        return addr

    def set_handler(self, desc: int, pre: int, data: int) -> None:
        """A guest kprobe's pre_handler in guest code, called as pre(data, ip, 0, regs)."""
        self.m.write(desc + GUEST_KPROBE.offsets["pre"], U64.pack(pre) + U64.pack(data))

    def counts(self, desc: int) -> tuple[int, int]:
        """A guest kprobe's (nhit, nmissed)."""
        at = GUEST_KPROBE.offsets
        return self.m.u64(desc + at["nhit"]), self.m.u64(desc + at["nmissed"])

    def publish(self, points: dict[int, list[int]]) -> None:
        """The table: each guest point's address -> its guest kprobes, in registration order (one
        arena, reused while it is big enough)."""
        blob, at = bytearray(), {}
        for ip, descs in points.items():
            at[ip] = len(blob)
            blob += KPROBE_AT.codec.pack(len(descs)) + b"".join(U64.pack(d) for d in descs)
        if len(blob) > self._arena_size:
            self._arena, self._arena_size = self.m.alloc("lab data", len(blob), 64), len(blob)
        if blob:
            self.m.write(self._arena, bytes(blob))
        self.table.fill({ip: self._arena + off for ip, off in at.items()})
