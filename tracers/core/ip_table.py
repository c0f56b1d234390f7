"""A table from patch-site ip to a word, in guest memory, for guest code that dispatches by ip (the
kernel's fprobe ip hash, kernel/trace/fprobe.c fprobe_ip_table): open addressing with linear
probing over a power-of-two number of slots, at most a quarter full, an empty slot ending a search.

The hash and the layout are declared here once; the arch's macros.S has `ip_lookup`, which
searches it with IP_TABLE_* constants from asm_constants()."""

from __future__ import annotations

import struct

from emulator.layout import Layout

IP_TABLE = Layout.of("ip table", ("mask", "slots"))  # slots: the address of (ip, value) pairs
IP_SLOT = Layout.of("ip table slot", ("ip", "value"))
PAIR = struct.Struct("<QQ")


def ip_hash(ip: int) -> int:
    """The slot a search starts at, before masking: functions are at least 4-byte aligned."""
    return (ip >> 2) ^ (ip >> 9)


def asm_constants() -> dict[str, int]:
    return {**IP_TABLE.asm_constants("IP_TABLE_"), **IP_SLOT.asm_constants("IP_SLOT_")}


class IpTable:
    """One table, rebuilt in place whenever its contents change (a bigger one is allocated when it
    outgrows its slots; the old one is lab data left behind, as the lab never frees)."""

    def __init__(self, machine):
        self.m = machine
        self.addr = machine.alloc("lab data", IP_TABLE.size, 64)
        self._slots, self._nr = 0, 0

    def fill(self, values: dict[int, int]) -> None:
        nr = 16
        while nr < 4 * len(values):
            nr *= 2
        if nr > self._nr:
            self._slots, self._nr = self.m.alloc("lab data", nr * IP_SLOT.size, 64), nr
        mask = self._nr - 1
        table = bytearray(self._nr * IP_SLOT.size)
        for ip, value in values.items():
            slot = ip_hash(ip) & mask
            while PAIR.unpack_from(table, slot * IP_SLOT.size)[0]:
                slot = (slot + 1) & mask
            PAIR.pack_into(table, slot * IP_SLOT.size, ip, value)
        self.m.write(self._slots, bytes(table))
        self.m.write(self.addr, IP_TABLE.codec.pack(mask, self._slots))
