"""The trace ring buffer (kernel/trace/ring_buffer.c, much simplified): one CPU's buffer of
fixed-size records in guest memory, reserved by guest code (rb_reserve, ring_buffer.S) or written
by Python in the same format, and read by Python in bulk. Each record starts with a header (its
type, and the timestamp rb_reserve stamps); the rest is its writer's (the tracers' records are in
tracers/output/records.py).

A full buffer makes the guest call ring_buffer_full. In `stream` mode the consumer drains it
there and tracing goes on (nothing is lost); as the kernel's buffer without a reader, `overwrite`
replaces the oldest records and `drop` refuses new ones, each counting what it lost.

One user at a time holds the buffer (`claim` / `release`: the ring tracers while they trace
through it, which share it as one group, probe events' guest path, batched fprobes while any is
registered); claiming it while another user holds it is refused, so no user resets away, or
mis-decodes, another's records.
"""

from __future__ import annotations

import struct

from emulator import FtlabError
from emulator.layout import Layout

# The buffer's state in guest memory, where rb_reserve and this module share it.
RB_CONTROL = Layout.of("ring buffer control", ("head", "nr", "base", "record_size", "clock", "lost", "overwritten"))
# What begins every record: its type (the tracer's, as trace_entry's) and its timestamp.
RECORD_HEADER = Layout.of("record header", ("type", "ts"))
ASM_CONSTANTS = {**RB_CONTROL.asm_constants("RB_"), **RECORD_HEADER.asm_constants("HDR_")}
HEAD, CLOCK, LOST, OVERWRITTEN = (RB_CONTROL.index(n) for n in ("head", "clock", "lost", "overwritten"))
U64 = struct.Struct("<Q")
MODES = ("stream", "overwrite", "drop")
# 1024 records (about 140 KB) stay in the emulated TLB: on arm64 QEMU's pages are 1 KiB, and a
# buffer of more pages than the TLB holds makes every page a miss (a Python TLB fill) each time round
DEFAULT_RECORDS = 1024


class RingBuffer:
    def __init__(self, machine, karch, record_size: int, nr_records: int = DEFAULT_RECORDS):
        if nr_records < 1:
            raise FtlabError(f"a ring buffer needs at least one record, not {nr_records}")
        m = self.m = machine
        self.rec = struct.Struct(f"<{record_size // 8}Q")  # a record's words
        self.nr = nr_records
        syms = karch.load(m, "ring_buffer.S", ASM_CONSTANTS)
        self.reserve = syms["rb_reserve"]
        # what a writer that inlines the reserve (macros.S rb_reserve_inline) is assembled with
        self.writer_constants = {**ASM_CONSTANTS, **{name: syms[name] for name in ("rb_control", "rb_reserve_full")}}
        try:
            self.control = m.alloc("lab data", RB_CONTROL.size, 64)
            self.base = m.alloc("lab data", nr_records * self.rec.size, 4096)
        except FtlabError:
            raise FtlabError(f"a ring buffer of {nr_records} records does not fit in the lab's memory") from None
        m.write_code(syms["rb_control"], U64.pack(self.control))
        self._ctl = m.view(self.control, RB_CONTROL.size).cast("Q")
        self._record_size, self.bytes = self.rec.size, nr_records * self.rec.size
        self._data = m.view(self.base, self.bytes)
        m.hook_call(self._full, syms["ring_buffer_full"])
        self.mode, self.consumer, self.wrapped = "stream", None, False
        self._holders: dict[str, str] = {}  # who holds the buffer (claim) -> the group it shares it with
        self._set(nr=nr_records, base=self.base, record_size=self.rec.size)
        self.reset("stream", None)

    def claim(self, who: str, mode: str, consumer, record_size: int | None = None, group: str | None = None) -> None:
        """Hold the buffer for `who` (its name in errors, e.g. "the function tracer"), emptied and
        reset (reset's arguments). Users of one `group` share it (the function and function_graph
        tracers write the same records for one consumer); a user with no group holds it alone.
        Refused with a one-line error while a user outside the group holds it."""
        group = group or who
        other = next((w for w, g in self._holders.items() if g != group), None)
        if other is not None:
            raise FtlabError(f"{who} cannot use the ring buffer: {other} holds it (one user at a time)")
        self.reset(mode, consumer, record_size)
        self._holders[who] = group

    def release(self, who: str) -> None:
        """`who` no longer holds the buffer (its records drained already: release drains nothing)."""
        self._holders.pop(who, None)

    def holds(self, who: str) -> bool:
        return who in self._holders

    @property
    def holder(self) -> str | None:
        """Who holds the buffer (the first, where a group shares it), or None."""
        return next(iter(self._holders), None)

    def _set(self, **values) -> None:
        for name, value in values.items():
            self._ctl[RB_CONTROL.index(name)] = value

    def reset(self, mode: str, consumer, record_size: int | None = None) -> None:
        """Empty the buffer and the clock; consumer(bytes) receives whole records, each of
        record_size bytes (default: the size the buffer was made for; the buffer's bytes then
        hold as many as fit)."""
        if mode not in MODES:
            raise FtlabError(f"unknown ring buffer mode '{mode}' (known: {', '.join(MODES)})")
        size = record_size or self._record_size
        if size > self.bytes:
            raise FtlabError(f"a ring buffer of {self.bytes} bytes cannot hold a record of {size} bytes")
        self.rec, self.nr = struct.Struct(f"<{size // 8}Q"), self.bytes // size
        self.mode, self.consumer, self.wrapped = mode, consumer, False
        self._set(head=0, clock=0, lost=0, overwritten=0, nr=self.nr, record_size=size)

    def count_insns(self, on: bool) -> None:
        """The `insns` trace clock for the records: the machine's native hook keeps the clock word
        at the instructions entered since now, so each record's ts is the instructions executed
        before the block that reserved it (counted from here); off: back to counting records."""
        self.m.count_into(self.control + RB_CONTROL.offsets["clock"] if on else None)

    @property
    def clock(self) -> int:
        """The clock word: the last record's timestamp (the counter), or the instructions the
        insns clock has counted, less one."""
        return self._ctl[CLOCK]

    @property
    def lost(self) -> int:
        return self._ctl[LOST]

    @property
    def overwritten(self) -> int:
        return self._ctl[OVERWRITTEN]

    def write(self, type_: int, *body) -> int | None:
        """A record written by Python as rb_reserve and guest code write it: the header (type, ts),
        then the body's words, the rest zero. Returns the timestamp, or None if dropped."""
        ctl = self._ctl
        if ctl[HEAD] >= self.nr:
            self._full(0)
            if ctl[HEAD] >= self.nr:
                return None
        head, ts = ctl[HEAD], ctl[CLOCK] + 1
        pad = (0,) * (self.rec.size // 8 - RECORD_HEADER.nr_words - len(body))
        self.rec.pack_into(self._data, head * self.rec.size, type_, ts, *body, *pad)
        ctl[HEAD], ctl[CLOCK] = head + 1, ts
        return ts

    def _full(self, _addr: int) -> None:
        ctl = self._ctl
        if self.mode == "stream":
            self.drain()
        elif self.mode == "overwrite":  # the oldest records go, counted as they are
            ctl[HEAD] = 0
            ctl[OVERWRITTEN] += self.nr if self.wrapped else 0
            self.wrapped = True
        else:  # drop: the new record goes, counted
            ctl[LOST] += 1

    def drain(self) -> None:
        """Hand the records written so far to the consumer, oldest first, and empty the buffer.
        The buffer is emptied before the consumer runs, so records written while it runs (a
        consumer that runs guest code) go into the empty buffer, after these."""
        ctl, size = self._ctl, self.rec.size
        head, chunks = ctl[HEAD], []
        if self.wrapped:  # overwrite mode went round: the older part first
            ctl[OVERWRITTEN] += head  # the records the newest replaced
            chunks.append(bytes(self._data[head * size :]))
        if head:
            chunks.append(bytes(self._data[: head * size]))
        ctl[HEAD] = 0
        self.wrapped = False
        for chunk in chunks:
            self.consumer(chunk)


def fields_macro(name: str, members: tuple[str, ...], record: str) -> str:
    """`NAME fregs, rec`: guest code's copy of these ftrace_regs members into a record whose asm
    constants are RECORD_REGS_*, one `record_field` (the arch's macros.S) each, generated from the
    list its layout was made from, so the two cannot disagree."""
    return (
        f".macro {name} fregs, rec\n"
        f"    .irp m, {', '.join(m.upper() for m in members)}\n"
        f"    record_field \\fregs, \\rec, {record}, \\m\n"
        "    .endr\n"
        ".endm\n"
    )
