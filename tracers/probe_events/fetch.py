"""Evaluating fetchargs at a probe hit, as the kernel's trace_probe_tmpl.h does."""
from __future__ import annotations

from .spec import FAULT, MAX_STRING_SIZE, TYPES, U64, Fetch, FetchArg, FetchContext, FetchFault, _convert


def evaluate(arg: FetchArg, ctx: FetchContext) -> int | bytes | str:
    """The value the kernel would record: an int already truncated (u, x) or sign-extended (s) to
    the type; bytes for string (up to its NUL); the ctx's %pS text for symbol; FAULT on a fault."""
    size, kind = TYPES[arg.type]
    f = arg.fetch
    try:
        if kind == "string":
            return _string(f, ctx)
        if f.op in ("deref", "mem", "sym"):      # the last load reads just the type's size
            raw = int.from_bytes(_read(ctx, _address(f, ctx), size), "little")
        else:
            raw = _value(f, ctx)
    except FetchFault:
        return FAULT
    if kind == "symbol":
        return ctx.symbolize(raw & U64)
    return _convert(raw, arg.type)


def _value(f: Fetch, ctx: FetchContext) -> int:
    """The unsigned long a fetch produces (a memory fetch loads a whole word)."""
    if f.op == "reg":
        value = ctx.register(f.value)
    elif f.op == "arg":
        value = ctx.argument(f.value)
    elif f.op == "retval":
        value = ctx.return_value()
    elif f.op == "stack":
        value = ctx.stack(f.value)
    elif f.op == "stackp":
        value = ctx.stack_pointer()
    elif f.op == "imm":
        value = f.value
    elif f.op in ("deref", "mem", "sym"):
        value = int.from_bytes(_read(ctx, _address(f, ctx), 8), "little")
    else:
        raise ValueError(f"{f.op} has no numeric value")    # comm, imm_str: string-only
    return value & U64


def _address(f: Fetch, ctx: FetchContext) -> int:
    """The address a memory fetch reads."""
    if f.op == "deref":
        return (_value(f.inner, ctx) + f.offset) & U64
    if f.op == "mem":
        return f.value
    return (ctx.address_of(f.value) + f.offset) & U64


def _read(ctx: FetchContext, addr: int, size: int) -> bytes:
    data = ctx.read(addr, size)
    if len(data) != size:
        raise FetchFault(f"short read at {addr:#x}")
    return data


def _string(f: Fetch, ctx: FetchContext) -> bytes:
    if f.op == "comm":
        return ctx.comm.encode()
    if f.op == "imm_str":
        return f.value.encode()
    addr = f.value if f.op == "imm" else _address(f, ctx)
    return _read_string(ctx, addr)


def _read_string(ctx: FetchContext, addr: int) -> bytes:
    """strncpy_from_kernel_nofault(): up to the NUL or MAX_STRING_SIZE - 1 bytes; any fault on
    the way (before the NUL) faults the whole string."""
    out = bytearray()
    limit = MAX_STRING_SIZE - 1
    while len(out) < limit:
        a = (addr + len(out)) & U64
        n = min(limit - len(out), 4096 - a % 4096)      # read a page at a time
        try:
            chunk = _read(ctx, a, n)
        except FetchFault:
            chunk = b""                                   # the NUL may come before the fault
            while len(chunk) < n and not chunk.endswith(b"\0"):
                chunk += _read(ctx, (a + len(chunk)) & U64, 1)
        nul = chunk.find(b"\0")
        if nul >= 0:
            return bytes(out + chunk[:nul])
        out += chunk
    return bytes(out)
