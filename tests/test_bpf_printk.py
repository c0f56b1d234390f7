"""bpf_trace_printk's formatting and jhash2, against independent references: C's printf
semantics as Python's %-formatting implements them, and Bob Jenkins' published lookup3 values."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracers.bpf.bprintf import PTRVAL, BprintfError, bprintf
from tracers.bpf.jhash import jhash2

M32, M64 = (1 << 32) - 1, (1 << 64) - 1


def fmt(text: str, *args: int, strings=None) -> str:
    strings = strings or {}
    return bprintf(text.encode(), list(args), strings.get, lambda a, off: f"sym{'+off' if off else ''}")


def s32(v: int) -> int:
    v &= M32
    return v - (1 << 32) if v >> 31 else v


def s64(v: int) -> int:
    v &= M64
    return v - (1 << 64) if v >> 63 else v


@given(st.integers(0, M64), st.sampled_from(["", "0", "-", "+", " "]), st.integers(0, 24))
def test_integers_print_as_c_printf(value, flag, width):
    """%d/%u/%x of an int take the argument's low 32 bits; %ld/%lld/%llx the whole u64."""
    w = str(width) if width else ""
    cases = {
        "d": s32(value),
        "i": s32(value),
        "u": value & M32,
        "x": value & M32,
        "X": value & M32,
        "ld": s64(value),
        "lld": s64(value),
        "llu": value,
        "llx": value,
        "lx": value,
    }
    for conv, ref in cases.items():
        if flag in "+ " and flag and conv[-1] not in "di":
            continue  # C leaves + and space undefined for unsigned conversions
        pyconv = conv[-1].replace("i", "d").replace("u", "d")
        assert fmt(f"[%{flag}{w}{conv}]", value) == f"[%{flag}{w}{pyconv}]" % ref, conv


def test_strings_chars_pointers_and_percent():
    text = fmt("%s=%c %% %px %pS %ps %p", 0x1000, ord("x"), 0xFFFF8000DEAD, 0x10, 0x10, 5, strings={0x1000: b"name\0"})
    assert text == f"name=x % 0000ffff8000dead sym+off sym {PTRVAL}"
    assert fmt("%s", 0x2000) == "(efault)"  # an unreadable string, as the kernel prints it


@pytest.mark.parametrize(
    "bad",
    ["%f", "%n", "%d %d %d %d", "%hd", "%lf", "\x01"],
    ids=["float", "n", "too-many", "h", "lf", "control"],
)
def test_what_bpf_bprintf_prepare_refuses(bad):
    with pytest.raises(BprintfError):
        fmt(bad, 1, 2, 3)


def hashlittle(data: bytes, initval: int) -> int:
    """lookup3.c hashlittle(), byte by byte (its portable path), written apart from jhash2."""

    def rot(x, k):
        return (x << k | x >> (32 - k)) & M32

    a = b = c = (0xDEADBEEF + len(data) + initval) & M32
    k, n = data, len(data)
    while n > 12:
        a = (a + int.from_bytes(k[0:4], "little")) & M32
        b = (b + int.from_bytes(k[4:8], "little")) & M32
        c = (c + int.from_bytes(k[8:12], "little")) & M32
        a = (a - c) & M32
        a ^= rot(c, 4)
        c = (c + b) & M32
        b = (b - a) & M32
        b ^= rot(a, 6)
        a = (a + c) & M32
        c = (c - b) & M32
        c ^= rot(b, 8)
        b = (b + a) & M32
        a = (a - c) & M32
        a ^= rot(c, 16)
        c = (c + b) & M32
        b = (b - a) & M32
        b ^= rot(a, 19)
        a = (a + c) & M32
        c = (c - b) & M32
        c ^= rot(b, 4)
        b = (b + a) & M32
        k, n = k[12:], n - 12
    if n == 0:
        return c
    tail = k + bytes(12 - n)
    a = (a + int.from_bytes(tail[0:4], "little")) & M32
    b = (b + int.from_bytes(tail[4:8], "little")) & M32
    c = (c + int.from_bytes(tail[8:12], "little")) & M32
    c ^= b
    c = (c - rot(b, 14)) & M32
    a ^= c
    a = (a - rot(c, 11)) & M32
    b ^= a
    b = (b - rot(a, 25)) & M32
    c ^= b
    c = (c - rot(b, 16)) & M32
    a ^= c
    a = (a - rot(c, 4)) & M32
    b ^= a
    b = (b - rot(a, 14)) & M32
    c ^= b
    c = (c - rot(b, 24)) & M32
    return c


def test_hashlittle_reference_matches_lookup3_published_values():
    """lookup3.c's driver5 values: the reference below is right before it judges jhash2."""
    text = b"Four score and seven years ago"
    assert hashlittle(b"", 0) == 0xDEADBEEF
    assert hashlittle(text, 0) == 0x17770551
    assert hashlittle(text, 1) == 0xCD628161


@given(st.lists(st.integers(0, M64), max_size=20), st.integers(0, M32))
def test_jhash2_equals_hashlittle_on_whole_words(ips, initval):
    """hashword() and hashlittle() agree on little-endian words: jhash2 over a stack's u64s."""
    data = struct.pack(f"<{len(ips)}Q", *ips)
    assert jhash2(data, initval) == hashlittle(data, initval)
