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
        if f.op in ("deref", "mem", "sym"):  # the last load reads just the type's size
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
        value = ctx.register(_text(f))
    elif f.op == "arg":
        value = ctx.argument(_number(f))
    elif f.op == "retval":
        value = ctx.return_value()
    elif f.op == "stack":
        value = ctx.stack(_number(f))
    elif f.op == "stackp":
        value = ctx.stack_pointer()
    elif f.op == "imm":
        value = _number(f)
    elif f.op in ("deref", "mem", "sym"):
        value = int.from_bytes(_read(ctx, _address(f, ctx), 8), "little")
    else:
        raise ValueError(f"{f.op} has no numeric value")  # comm, imm_str: string-only
    return value & U64


def _address(f: Fetch, ctx: FetchContext) -> int:
    """The address a memory fetch reads."""
    if f.op == "deref":
        assert f.inner is not None  # the parser gives every deref its operand
        return (_value(f.inner, ctx) + f.offset) & U64
    if f.op == "mem":
        return _number(f)
    return (ctx.address_of(_text(f)) + f.offset) & U64


def _number(f: Fetch) -> int:
    assert isinstance(f.value, int), f  # arg, stack, imm and mem hold a number
    return f.value


def _text(f: Fetch) -> str:
    assert isinstance(f.value, str), f  # reg, sym and imm_str hold a name or text
    return f.value


def _read(ctx: FetchContext, addr: int, size: int) -> bytes:
    data = ctx.read(addr, size)
    if len(data) != size:
        raise FetchFault(f"short read at {addr:#x}")
    return data


def _string(f: Fetch, ctx: FetchContext) -> bytes:
    if f.op == "comm":
        return ctx.comm.encode()
    if f.op == "imm_str":
        return _text(f).encode()
    addr = _number(f) if f.op == "imm" else _address(f, ctx)
    return _read_string(ctx, addr)


def _read_string(ctx: FetchContext, addr: int) -> bytes:
    """strncpy_from_kernel_nofault(): up to the NUL or MAX_STRING_SIZE - 1 bytes; any fault on
    the way (before the NUL) faults the whole string."""
    out = bytearray()
    limit = MAX_STRING_SIZE - 1
    while len(out) < limit:
        a = (addr + len(out)) & U64
        n = min(limit - len(out), 4096 - a % 4096)  # read a page at a time
        try:
            chunk = _read(ctx, a, n)
        except FetchFault:
            chunk = b""  # the NUL may come before the fault
            while len(chunk) < n and not chunk.endswith(b"\0"):
                chunk += _read(ctx, (a + len(chunk)) & U64, 1)
        nul = chunk.find(b"\0")
        if nul >= 0:
            return bytes(out + chunk[:nul])
        out += chunk
    return bytes(out)
