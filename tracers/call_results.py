"""Running a CALL sequence, and what it gives back: each call's result read as its type, and the
named buffers as the last call left them, as `ftlab run`, `trace` and `replay` print them.

    arc4_setkey(ctx=buf(1032), b"Key", 3) = 0
    arc4_crypt(ctx, out=buf(9), b"Plaintext", 9):void = void
    out[9] = bb f3 16 e8 d9 40 af 0a d3

A buffer of up to 16 bytes is one line, NAME[LEN] = its bytes in hex; a longer one is NAME[LEN] =
then the rows the kernel's print_hex_dump(.., DUMP_PREFIX_OFFSET, 16, 1, buf, len, true) prints,
each indented by two spaces: the offset, 16 bytes in hex, and the printable ASCII.
"""

from __future__ import annotations

from dataclasses import dataclass

from .call_syntax import DEFAULT_TYPE, RET_ALIASES, Buffer, CallSequence

ROW = 16  # print_hex_dump's rowsize; groupsize 1
# hex_dump_to_buffer (lib/hexdump.c): the ASCII starts at rowsize * 2 + rowsize / groupsize + 1
ASCII_COLUMN = ROW * 2 + ROW + 1

Value = int | tuple[int, int] | None


def decode_result(kind: str, lo: int, hi: int) -> Value:
    """The return registers (as unsigned 64-bit values) read as a result type (RESULT_TYPES)."""
    if kind == "void":
        return None
    if kind == "pair":
        return _signed(lo, 64), _signed(hi, 64)
    bits = int(kind[1:])
    value = lo & (1 << bits) - 1
    return _signed(value, bits) if kind[0] == "s" else value


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def format_result(value: Value, kind: str = DEFAULT_TYPE) -> str:
    """x8..x64 as the kernel prints them (0x%x); u and s types in decimal, with the type's bits in
    hex after any value past 9; a pair as (lo, hi); void as void."""
    if value is None:
        return "void"
    if isinstance(value, tuple):
        return "(" + ", ".join(str(v) for v in value) + ")"
    if kind[0] == "x":
        return f"{value:#x}"
    bits = int(kind[1:])
    return f"{value} ({value & (1 << bits) - 1:#x})" if value < 0 or value > 9 else str(value)


def buffer_lines(name: str, data: bytes) -> list[str]:
    if len(data) <= ROW:
        return [f"{name}[{len(data)}] = {data.hex(' ')}".rstrip()]
    lines = [f"{name}[{len(data)}] ="]
    for off in range(0, len(data), ROW):
        row = data[off : off + ROW]
        ascii_ = "".join(chr(c) if 0x20 <= c < 0x7F else "." for c in row)  # isascii && isprint
        lines.append(f"  {off:08x}: {row.hex(' '):<{ASCII_COLUMN}}{ascii_}")
    return lines


@dataclass(frozen=True)
class Result:
    call: str  # as written
    type: str  # what it was read as
    value: Value

    def __str__(self) -> str:
        return f"{self.call} = {format_result(self.value, self.type)}"


@dataclass(frozen=True)
class CallsOutcome:
    results: tuple[Result, ...]
    buffers: dict[str, bytes]  # the named buffers after the last call, in the order written

    def lines(self) -> list[str]:
        """`CALL = RESULT` for each call, then each named buffer."""
        return [str(r) for r in self.results] + [
            line for name, data in self.buffers.items() for line in buffer_lines(name, data)
        ]

    def to_json(self) -> dict:
        return {
            "results": [
                [r.call, r.type, list(r.value) if isinstance(r.value, tuple) else r.value] for r in self.results
            ],
            "buffers": [[name, data.hex()] for name, data in self.buffers.items()],
        }


def _signature_type(lab, func: str) -> str:
    kind = lab.calls.ret_kind(func) or DEFAULT_TYPE
    return RET_ALIASES.get(kind, kind)


def run_calls(lab, calls: CallSequence, ret: str | None = None) -> CallsOutcome:
    """Run the calls in order on one lab, every buffer at one address throughout, and read each
    result as its call's :TYPE, else as `ret`, else as its signature's return type (the lab's BTF:
    tracers.calls), else as DEFAULT_TYPE. The caller has checked the calls."""
    machine = lab.machine
    with machine.heap_scope():
        addr: dict[Buffer, int] = {}
        for buffer in calls.buffers:
            addr[buffer] = machine.alloc("heap", len(buffer.init), 16)
            machine.write(addr[buffer], buffer.init)
        results = []
        for call in calls.calls:
            args = tuple(addr[a] if isinstance(a, Buffer) else a for a in call.args)
            lo, hi = lab.call(call.name, *args, ret="pair")
            kind = call.ret or ret or _signature_type(lab, call.name)
            results.append(Result(call.text, kind, decode_result(kind, lo, hi)))
        buffers = {b.name: machine.read(addr[b], len(b.init)) for b in calls.buffers if b.name is not None}
    return CallsOutcome(tuple(results), buffers)
