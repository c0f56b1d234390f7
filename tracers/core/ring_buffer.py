"""The trace ring buffer (kernel/trace/ring_buffer.c, much simplified): one CPU's buffer of
fixed-size records in guest memory, written by guest code (function_trace_call) or by Python
handlers in the same format, and read by Python in bulk.

A full buffer makes the guest call ring_buffer_full. In `stream` mode the consumer drains it
there and tracing goes on (nothing is lost); as the kernel's buffer without a reader, `overwrite`
replaces the oldest records and `drop` refuses new ones, each counting what it lost.
"""
from __future__ import annotations

import struct

from emulator import FtlabError

from .fgraph import FG_CONTROL, SHADOW_STACK_MAX_OFFSET, frame_words

CONTROL = ("head", "nr", "base", "clock", "lost", "overwritten")     # u64 words of the control block
MODES = ("stream", "overwrite", "drop")
REC_ENTRY, REC_EXIT = 1, 2
REC_HEADER = ("type", "ts", "ip", "parent")
# 1024 records (about 140 KB) stay in the emulated TLB: on arm64 QEMU's pages are 1 KiB, and a
# buffer of more pages than the TLB holds makes every page a miss (a Python TLB fill) each time round
DEFAULT_RECORDS = 1024


def asm_constants(karch) -> dict[str, int]:
    consts = {f"RB_{name.upper()}": 8 * i for i, name in enumerate(CONTROL)}
    consts.update({f"FG_{name.upper()}": 8 * i for i, name in enumerate(FG_CONTROL)})
    consts.update({f"REC_{name.upper()}": 8 * i for i, name in enumerate(REC_HEADER)})
    consts.update(REC_FIELDS=8 * len(REC_HEADER), REC_SIZE=record_struct(karch).size, REC_ENTRY=REC_ENTRY,
                  REC_EXIT=REC_EXIT, FG_FRAME_WORDS=frame_words(karch), FG_MAX_OFFSET=SHADOW_STACK_MAX_OFFSET)
    return consts


def record_struct(karch) -> struct.Struct:
    """type, ts, ip, parent_ip, then the ftrace_regs fields ftrace_caller saves, in that order."""
    return struct.Struct(f"<{len(REC_HEADER) + len(karch.ftrace_regs_saved)}Q")


class RingBuffer:
    def __init__(self, machine, karch, nr_records: int = DEFAULT_RECORDS):
        if nr_records < 1:
            raise FtlabError(f"a ring buffer needs at least one record, not {nr_records}")
        m = self.m = machine
        self.rec = record_struct(karch)
        self.nr = nr_records
        syms = karch.load(m, "function_trace.S", asm_constants(karch))
        self.function_trace_call = syms["function_trace_call"]
        self.graph_trace_entry, self.graph_trace_return = syms["graph_trace_entry"], syms["graph_trace_return"]
        self._syms = syms
        try:
            self.control = m.alloc("lab data", 8 * len(CONTROL), 64)
            self.base = m.alloc("lab data", nr_records * self.rec.size, 4096)
        except FtlabError:
            raise FtlabError(f"a ring buffer of {nr_records} records does not fit in the lab's memory") from None
        m.write_code(syms["rb_control"], struct.pack("<Q", self.control))
        self._ctl = m.view(self.control, 8 * len(CONTROL))
        self._data = m.view(self.base, nr_records * self.rec.size)
        m.hook_call(self._full, syms["ring_buffer_full"])
        self.mode, self.consumer, self.wrapped = "stream", None, False
        self._set(nr=nr_records, base=self.base)
        self.reset("stream", None)

    def _get(self, name: str) -> int:
        return struct.unpack_from("<Q", self._ctl, 8 * CONTROL.index(name))[0]

    def _set(self, **values) -> None:
        for name, value in values.items():
            struct.pack_into("<Q", self._ctl, 8 * CONTROL.index(name), value)

    def reset(self, mode: str, consumer) -> None:
        """Empty the buffer and the clock; consumer(bytes) receives whole records."""
        if mode not in MODES:
            raise FtlabError(f"unknown ring buffer mode '{mode}' (known: {', '.join(MODES)})")
        self.mode, self.consumer, self.wrapped = mode, consumer, False
        self._set(head=0, clock=0, lost=0, overwritten=0)

    @property
    def lost(self) -> int:
        return self._get("lost")

    @property
    def overwritten(self) -> int:
        return self._get("overwritten")

    def attach_fgraph(self, fgraph) -> None:
        """Point the guest fast path at fgraph's control block (once)."""
        self.m.write_code(self._syms["fg_control"], struct.pack("<Q", fgraph.control))
        bad_fp = self._syms.get("fgraph_bad_fp")
        if bad_fp is not None:
            self.m.hook_call(lambda a: fgraph.bad_frame_pointer(), bad_fp)

    def write(self, type_: int, ip: int, parent: int, *fields) -> int | None:
        """A record written by Python, as the guest writes it: the timestamp, or None if dropped."""
        head = self._get("head")
        if head >= self.nr:
            self._full(0)
            head = self._get("head")
            if head >= self.nr:
                return None
        ts = self._get("clock") + 1
        pad = (0,) * (self.rec.size // 8 - len(REC_HEADER) - len(fields))
        self.rec.pack_into(self._data, head * self.rec.size, type_, ts, ip, parent, *fields, *pad)
        self._set(head=head + 1, clock=ts)
        return ts

    def _full(self, _addr: int) -> None:
        if self.mode == "stream":
            self.drain()
        elif self.mode == "overwrite":            # the oldest records go, counted as they are
            self._set(head=0, overwritten=self.overwritten + (self.nr if self.wrapped else 0))
            self.wrapped = True
        else:                                     # drop: the new record goes, counted
            self._set(lost=self.lost + 1)

    def drain(self) -> None:
        """Hand the records written so far to the consumer, oldest first, and empty the buffer."""
        head, size = self._get("head"), self.rec.size
        if self.wrapped:                          # overwrite mode went round: the older part first
            self._set(overwritten=self.overwritten + head)     # the records the newest replaced
            self.consumer(bytes(self._data[head * size:]))
        if head:
            self.consumer(bytes(self._data[:head * size]))
        self._set(head=0)
        self.wrapped = False
