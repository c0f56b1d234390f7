"""jhash2() (include/linux/jhash.h): Bob Jenkins' lookup3 hashword() over u32 words, which
bpf_get_stackid() uses to pick a stack map bucket (kernel/bpf/stackmap.c __bpf_get_stackid)."""

from __future__ import annotations

import struct

JHASH_INITVAL = 0xDEADBEEF
M32 = 0xFFFFFFFF


def _rol(x: int, k: int) -> int:
    return (x << k | x >> (32 - k)) & M32


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    for s1, s2, s3 in ((4, 6, 8), (16, 19, 4)):
        a = (a - c) & M32 ^ _rol(c, s1)
        c = (c + b) & M32
        b = (b - a) & M32 ^ _rol(a, s2)
        a = (a + c) & M32
        c = (c - b) & M32 ^ _rol(b, s3)
        b = (b + a) & M32
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    c = (c ^ b) - _rol(b, 14) & M32
    a = (a ^ c) - _rol(c, 11) & M32
    b = (b ^ a) - _rol(a, 25) & M32
    c = (c ^ b) - _rol(b, 16) & M32
    a = (a ^ c) - _rol(c, 4) & M32
    b = (b ^ a) - _rol(a, 14) & M32
    c = (c ^ b) - _rol(b, 24) & M32
    return c


def jhash2(data: bytes, initval: int) -> int:
    """The hash of data (a whole number of little-endian u32 words)."""
    k = struct.unpack(f"<{len(data) // 4}I", data)
    n = len(k)
    a = b = c = (JHASH_INITVAL + (n << 2) + initval) & M32
    i = 0
    while n - i > 3:
        a, b, c = (a + k[i]) & M32, (b + k[i + 1]) & M32, (c + k[i + 2]) & M32
        a, b, c = _mix(a, b, c)
        i += 3
    rest = k[i:]
    if not rest:
        return c
    c = (c + (rest[2] if len(rest) > 2 else 0)) & M32
    b = (b + (rest[1] if len(rest) > 1 else 0)) & M32
    a = (a + rest[0]) & M32
    return _final(a, b, c)
