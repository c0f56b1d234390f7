"""The kernel's printk format, a subset: what the lab's _printk and __warn_printk hooks print.

A message starts with an optional KERN_<LEVEL> prefix, KERN_SOH ("\\001") and one character
(include/linux/kern_levels.h): '0'-'7' a level, 'c' KERN_CONT (continues the last line) and 'd'
KERN_DEFAULT. A message without one gets the default level, MESSAGE_LOGLEVEL_DEFAULT (4, as
CONFIG_MESSAGE_LOGLEVEL_DEFAULT sets it by default). Conversions as lib/vsprintf.c takes them:
flags `-+ 0#`, a width and a precision (digits or `*`), the qualifiers hh h l ll z t j, and
d i u x X o c s p %, with %ps/%pS (a symbol, with +offset for %pS; the lab prints no /size).
Plain %p prints the pointer itself, as the kernel does when booted with no_hash_pointers.
Anything else is a one-line error naming the conversion.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .errors import FtlabError

KERN_SOH = "\x01"
DEFAULT_LEVEL = 4  # CONFIG_MESSAGE_LOGLEVEL_DEFAULT
MAX_STRING = 4096  # the most bytes of one %s (or the format) read from guest memory
SPEC = re.compile(r"%(?P<flags>[-+ 0#]*)(?P<width>\*|\d+)?(?:\.(?P<prec>\*|\d*))?(?P<len>hh|h|ll|l|z|t|j)?(?P<conv>.?)")
BITS = {"hh": 8, "h": 16, None: 32, "l": 64, "ll": 64, "z": 64, "t": 64, "j": 64}


def level_of(text: str) -> tuple[str, str]:
    """The message's level character ('0'-'7', 'c' or 'd') and its text after the prefix."""
    if text.startswith(KERN_SOH) and len(text) > 1 and text[1] in "01234567cd":
        return text[1], text[2:]
    return "d", text


def format_printk(fmt: str, arg: Callable[[], int], string: Callable[[int], str], symbol: Callable[[int], str]) -> str:
    """The formatted message. `arg()` gives the next variadic argument as a 64-bit value,
    `string(addr)` a C string in guest memory, `symbol(addr)` an address's name (`fib+0x4`)."""
    out, pos = [], 0
    for m in SPEC.finditer(fmt):
        out.append(fmt[pos : m.start()])
        pos = m.end()
        conv, flags, qual = m["conv"], m["flags"], m["len"]
        if conv == "%":
            out.append("%")
            continue
        width = arg() & 0xFFFFFFFF if m["width"] == "*" else int(m["width"] or 0)
        prec = None if m["prec"] is None else (arg() & 0xFFFFFFFF if m["prec"] == "*" else int(m["prec"] or 0))
        if conv in "diuxXoc" and conv:
            out.append(_number(conv, flags, width, prec, arg(), BITS[qual]))
        elif conv == "s":
            addr = arg()
            text = "(null)" if addr == 0 else string(addr)
            out.append(_pad(text if prec is None else text[:prec], flags, width))
        elif conv == "p":
            ext = fmt[pos : pos + 1]
            addr = arg()
            if ext in ("s", "S"):
                pos += 1
                name = symbol(addr)
                out.append(_pad(name.split("+")[0] if ext == "s" else name, flags, width))
            elif ext.isalnum():
                raise FtlabError(f"printk: %p{ext} in {fmt!r} is not among the conversions the lab formats")
            else:
                out.append(_pad(f"{addr:016x}", flags, width))
        else:
            shown = m.group(0) or "%"
            raise FtlabError(f"printk: conversion {shown!r} in {fmt!r} is not among the ones the lab formats")
    out.append(fmt[pos:])
    return "".join(out)


def _number(conv: str, flags: str, width: int, prec: int | None, value: int, bits: int) -> str:
    value &= (1 << bits) - 1
    if conv in "di" and value >> (bits - 1):
        value -= 1 << bits
    if conv == "c":
        return _pad(chr(value & 0xFF), flags, width)
    base = {"x": 16, "X": 16, "o": 8}.get(conv, 10)
    digits = format(abs(value), {16: "x", 8: "o", 10: "d"}[base])
    if conv == "X":
        digits = digits.upper()
    if prec is not None:
        digits = "0" * (prec - len(digits)) + digits if prec else ("" if value == 0 else digits)
    sign = "-" if value < 0 else ("+" if "+" in flags else (" " if " " in flags else "")) if conv in "di" else ""
    prefix = {"x": "0x", "X": "0X", "o": "0"}.get(conv, "") if "#" in flags and value else ""
    body = sign + prefix + digits
    if "0" in flags and "-" not in flags and prec is None and len(body) < width:
        return sign + prefix + "0" * (width - len(body)) + digits
    return _pad(body, flags, width)


def _pad(text: str, flags: str, width: int) -> str:
    return text.ljust(width) if "-" in flags else text.rjust(width)
