"""A table from patch-site ip to a word, in guest memory, for guest code that dispatches by ip: the
guest ftrace_ops list (ops_list.S) and fprobe's dispatch (fprobe.S, as the kernel's
fprobe_ip_table). Open addressing keyed by hash_64(ip, bits) (include/linux/hash.h, the kernel's
ftrace_hash_key), probed linearly, at most half full so that a search ends at an empty slot.

The layout and the hash are declared here once; each arch's macros.S has `ip_table_find`, which
searches a table with the IP_TABLE_* constants of asm_constants()."""

from __future__ import annotations

import struct

from emulator.layout import Layout

IP_TABLE = Layout.of("ip table", ("slots", "mask", "shift"))  # the header: where the slots are
IP_SLOT = Layout.of("ip table slot", ("ip", "value"))
GOLDEN_RATIO_64 = 0x61C8864680B583EB  # include/linux/hash.h
MASK64 = (1 << 64) - 1


def hash_64(val: int, bits: int) -> int:
    """hash_64_generic (include/linux/hash.h)."""
    return (val * GOLDEN_RATIO_64 & MASK64) >> (64 - bits)


def asm_constants() -> dict[str, int]:
    return {
        **IP_TABLE.asm_constants("IP_TABLE_"),
        **IP_SLOT.asm_constants("IP_SLOT_"),
        "GOLDEN_RATIO_64": GOLDEN_RATIO_64,
        # arm64 builds it 16 bits at a time (movz, movk)
        **{f"GOLDEN_RATIO_64_{i}": GOLDEN_RATIO_64 >> 16 * i & 0xFFFF for i in range(4)},
    }


class IpTable:
    """One table, its header at `addr`, rebuilt whenever its contents change (its slots reused while
    they are enough; lab data is never freed, so a table that outgrows them takes twice the room)."""

    def __init__(self, machine):
        self.m = machine
        self.addr = machine.alloc("lab data", IP_TABLE.size, 64)
        self._slots, self._room = 0, 0
        self.fill({})

    def fill(self, values: dict[int, int]) -> None:
        bits = max(1, (2 * len(values) - 1).bit_length())
        size = 1 << bits
        if size > self._room:
            self._room = max(size, 2 * self._room)
            self._slots = self.m.alloc("lab data", self._room * IP_SLOT.size, 64)
        slots = [0] * (size * IP_SLOT.nr_words)
        n, ip_word = IP_SLOT.nr_words, IP_SLOT.index("ip")
        for ip, value in values.items():
            i = hash_64(ip, bits)
            while slots[i * n + ip_word]:
                i = (i + 1) & (size - 1)
            slots[i * n + ip_word], slots[i * n + IP_SLOT.index("value")] = ip, value
        self.m.write(self._slots, struct.pack(f"<{len(slots)}Q", *slots))
        self.m.write(self.addr, IP_TABLE.codec.pack(self._slots, size - 1, 64 - bits))
