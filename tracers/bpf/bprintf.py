"""bpf_trace_printk()'s formatting: the conversions bpf_bprintf_prepare() accepts
(kernel/bpf/helpers.c, v7.0), printed as the kernel's bstr_printf() prints them.

Accepted: `%%`; an optional `[0 +-]` flag run and a width; `%c`; `%s` (a kernel string, read
with strncpy_from_kernel_nofault, up to MAX_BPRINTF_STR_LEN); `%p` with the modifiers the lab can
print (`%px`, `%pK`, `%pS`, `%ps`, `%pB`); `d i u x X` with no, one or two `l`s. Without an `l` the
argument is an int: its low 32 bits, as the kernel copies a (u32) into the binary buffer. Anything
else makes the helper return -EINVAL, printing nothing, as the kernel's does.
"""

from __future__ import annotations

from collections.abc import Callable

EINVAL = 22
MAX_BPRINTF_STR_LEN = 512
# %p alone prints the pointer hashed with a per-boot key; before the key exists the kernel prints
# this placeholder (lib/vsprintf.c ptr_to_id): the lab has no key, and prints what has none.
PTRVAL = "(____ptrval____)"


class BprintfError(ValueError):
    """The format is one the kernel refuses (-EINVAL)."""


def bprintf(
    fmt: bytes, args: list[int], read_str: Callable[[int], bytes | None], symbol: Callable[[int, bool], str]
) -> str:
    """The text of fmt with args. read_str(addr) gives a kernel string's bytes (None if it cannot
    be read: the kernel then prints "(efault)"); symbol(addr, with_offset) names a code address."""
    if not all(0x20 <= b < 0x7F or chr(b).isspace() for b in fmt):
        raise BprintfError("a character in the format is not printable ASCII")
    text, used, i = fmt.decode("ascii"), 0, 0
    out: list[str] = []
    while i < len(text):
        c = text[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        if text[i + 1 : i + 2] == "%":
            out.append("%")
            i += 2
            continue
        if used >= len(args):
            raise BprintfError("more conversions than arguments")
        arg = args[used]
        used += 1
        i += 1
        flags_start = i
        while i < len(text) and text[i] in "0+- ":
            i += 1
        flags = text[flags_start:i]
        width_start = i
        if i < len(text) and text[i] in "123456789":
            while i < len(text) and text[i].isdigit():
                i += 1
        width = int(text[width_start:i]) if i > width_start else 0
        conv = text[i : i + 1]
        if conv == "p":
            mod = text[i + 1 : i + 2]
            piece, i = _pointer(mod, arg, symbol), i + (2 if mod in ("x", "K", "S", "s", "B") else 1)
        elif conv == "s":
            raw = read_str(arg)
            string = None if raw is None else raw.split(b"\0", 1)[0][: MAX_BPRINTF_STR_LEN - 1]
            piece, i = ("(efault)" if string is None else string.decode("latin-1")), i + 1
        elif conv == "c":
            piece, i = chr(arg & 0xFF), i + 1
        else:
            size = 32
            for _ in range(2):
                if text[i : i + 1] == "l":
                    size, i = 64, i + 1
            conv = text[i : i + 1]
            if conv not in ("d", "i", "u", "x", "X"):
                raise BprintfError(f"conversion '%{conv}' is not one bpf_trace_printk accepts")
            piece, i = _integer(conv, arg & ((1 << size) - 1), size, flags), i + 1
        out.append(_pad(piece, width, flags))
    return "".join(out)


def _integer(conv: str, value: int, size: int, flags: str) -> str:
    if conv in ("d", "i"):
        signed = value - (1 << size) if value >> (size - 1) else value
        sign = "+" if "+" in flags else " " if " " in flags else ""
        return str(signed) if signed < 0 else sign + str(signed)
    if conv == "u":
        return str(value)
    return f"{value:x}" if conv == "x" else f"{value:X}"


def _pointer(mod: str, value: int, symbol: Callable[[int, bool], str]) -> str:
    if mod == "x":
        return f"{value:016x}"
    if mod in ("S", "B"):
        return symbol(value, True)
    if mod == "s":
        return symbol(value, False)
    return PTRVAL  # %p, and %pK (kptr_restrict's default 0 prints it as %p)


def _pad(piece: str, width: int, flags: str) -> str:
    if len(piece) >= width:
        return piece
    if "-" in flags:
        return piece.ljust(width)
    if "0" in flags and "-" not in flags and piece.lstrip("-+ ").isalnum():
        sign = piece[0] if piece[0] in "-+ " else ""
        return sign + piece[len(sign) :].rjust(width - len(sign), "0")
    return piece.rjust(width)
