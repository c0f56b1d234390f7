"""Formatting fetched values as the kernel's print functions do."""

from __future__ import annotations

from collections.abc import Iterable

from .spec import FAULT, TYPES, U64, FetchArg, _convert


def format_value(arg: FetchArg, value) -> str:
    """One value as the kernel's print functions show it: %u, %d, 0x%x, \"%s\", %pS."""
    if isinstance(value, str) and value == FAULT:
        return FAULT
    _, kind = TYPES[arg.type]
    if kind == "string":
        # trace_seq prints the bytes as they are; shown here as UTF-8
        return '"' + bytes(value).decode("utf-8", "backslashreplace") + '"'
    if kind == "symbol":
        return value if isinstance(value, str) else f"0x{value & U64:x}"  # %pS with no symbol
    value = _convert(value, arg.type)
    return f"0x{value:x}" if kind == "x" else str(value)


def format_args(args: Iterable[FetchArg], values: Iterable) -> str:
    """' name=value ...' as trace_probe_print_args() appends them to an event line."""
    return "".join(f" {a.name}={format_value(a, v)}" for a, v in zip(args, values, strict=True))
