"""Ring-buffer records to events, for a live trace and a replayed recording alike.

A decoder is built from the KernelArch and the kernel release (which fix the record layout: the
exit record holds what the release's return_to_handler saved) and yields the events a chunk of
records holds. It keeps only the state the records need to be read (the call depth);
whoever consumes the events counts and formats them.
"""

from __future__ import annotations

import itertools

from ..core.regs import missing_registers
from ..kernel_version import MODELLED, KernelVersion
from .events import NR_ARGS, Event
from .records import REC_ENTRY, REC_UNCOMMITTED, record_struct


class StackDepth:
    """The function tracer's call depth, from the stack pointer at each entry: it records no exits,
    so entries whose sp is at or below this one have returned."""

    def __init__(self):
        self._sps: list[int] = []

    def __call__(self, sp: int) -> int:
        sps = self._sps
        while sps and sps[-1] <= sp:
            sps.pop()
        sps.append(sp)
        return len(sps) - 1


def partial_sites(karch, uncaptured) -> dict[int, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Site ip -> (members captured, registers missing) where that site's trampoline stores members
    it does not capture (Ftrace.uncaptured: arm64's x0 at a -pg site); a record holds them all."""
    out = {}
    for ip, members in (uncaptured or {}).items():
        keep = tuple(m for m in karch.ftrace_regs_saved if m not in members)
        out[ip] = (keep, tuple(missing_registers(karch, keep, karch.ftrace_regs_aliases)))
    return out


def committed_columns(chunk: bytes, size: int, words) -> list[list[int]]:
    """The committed records' words at these indices (the first, the type), as columns read by
    strided slices without a tuple or an Event per record."""
    row = memoryview(chunk).cast("Q")
    n = size // 8
    columns = [row[i::n].tolist() for i in words]
    if REC_UNCOMMITTED in columns[0]:  # a run an error stopped in the middle of a record
        keep = [k != REC_UNCOMMITTED for k in columns[0]]
        columns = [list(itertools.compress(col, keep)) for col in columns]
    return columns


class FunctionDecoder:
    """The function tracer's records (entries only: records.Records.function)."""

    tracer = "function"

    def __init__(self, karch, kernel: KernelVersion = MODELLED, uncaptured=None):
        self.rec = record_struct(karch, kernel)
        self.saved = saved = karch.ftrace_regs_saved
        self.sp = saved.index(karch.cpu.sp)
        self.args = [saved.index(r) for r in karch.cpu.arg_regs[:NR_ARGS]]
        self.missing = tuple(missing_registers(karch, saved, karch.ftrace_regs_aliases))
        self.partial = partial_sites(karch, uncaptured)
        self.depth = StackDepth()

    def columns(self, chunk: bytes) -> tuple[list[int], list[int], list[int]]:
        """The committed entries' timestamps, ips and parents, as columns: what the function
        tracer's text lines need. The call depth (StackDepth) is not kept: a trace reads its
        records one way throughout."""
        _, ts, ips, parents = committed_columns(chunk, self.rec.size, (0, 1, 2, 3))
        return ts, ips, parents

    # A record is as long as the tracers' largest: the fields a kind does not fill are padding, which
    # zip(strict=False) leaves out.

    def events(self, chunk: bytes):
        name, saved, sp, args, missing, depth = self.tracer, self.saved, self.sp, self.args, self.missing, self.depth
        partial = self.partial
        for kind, ts, ip, parent, *fields in self.rec.iter_unpack(chunk):
            if kind == REC_UNCOMMITTED:
                continue
            regs, miss = dict(zip(saved, fields, strict=False)), missing
            if ip in partial:
                keep, miss = partial[ip]
                regs = {m: regs[m] for m in keep}
            yield Event(
                name,
                "entry",
                ip,
                parent,
                depth(fields[sp]),
                ts,
                tuple(fields[i] for i in args),
                "ftrace_regs",
                regs,
                miss,
            )


class GraphDecoder:
    """function_graph's records: each carries its call depth, as the kernel's graph entries do; an
    entry's fields are ftrace_caller's, an exit's are what return_to_handler saved, then the calltime."""

    tracer = "function_graph"

    def __init__(self, karch, kernel: KernelVersion = MODELLED, uncaptured=None):
        self.rec = record_struct(karch, kernel)
        self.partial = partial_sites(karch, uncaptured)
        self.saved, self.exit_saved = saved, exit_saved = karch.ftrace_regs_saved, karch.fgraph.exit_saved(kernel)
        aliases = karch.ftrace_regs_aliases
        self.args = [saved.index(r) for r in karch.cpu.arg_regs[:NR_ARGS]]
        self.missing_in = tuple(missing_registers(karch, saved, aliases))
        self.missing_out = tuple(missing_registers(karch, exit_saved, aliases))
        self.ret = exit_saved.index(karch.cpu.ret_regs[0])
        # the words of an exit record past its header (type, ts, ip, parent, depth): its fields, then the calltime
        self.ret_word, self.calltime_word = 5 + self.ret, 5 + len(exit_saved)

    def columns(self, chunk: bytes) -> list[list[int]]:
        """The committed records' types, timestamps, ips, depths, return values and calltimes, as
        columns (FunctionDecoder.columns): what function_graph's text lines need. An entry's last two
        are other words of its record."""
        return committed_columns(chunk, self.rec.size, (0, 1, 2, 4, self.ret_word, self.calltime_word))

    def depths(self, chunk: bytes) -> list[int]:
        """The committed records' depths."""
        return committed_columns(chunk, self.rec.size, (0, 4))[1]

    def events(self, chunk: bytes):
        name, saved, exit_saved, args, ret = self.tracer, self.saved, self.exit_saved, self.args, self.ret
        n = len(exit_saved)
        for kind, ts, ip, parent, depth, *fields in self.rec.iter_unpack(chunk):
            if kind == REC_UNCOMMITTED:
                continue
            if kind == REC_ENTRY:
                regs, miss = dict(zip(saved, fields, strict=False)), self.missing_in
                if ip in self.partial:
                    keep, miss = self.partial[ip]
                    regs = {m: regs[m] for m in keep}
                yield Event(
                    name, "entry", ip, parent, depth, ts, tuple(fields[i] for i in args), "ftrace_regs", regs, miss
                )
            else:
                yield Event(
                    name,
                    "exit",
                    ip,
                    parent,
                    depth,
                    ts,
                    None,
                    "ftrace_regs",
                    dict(zip(exit_saved, fields, strict=False)),
                    self.missing_out,
                    retval=fields[ret],
                    duration=ts - fields[n],
                )


DECODERS = {d.tracer: d for d in (FunctionDecoder, GraphDecoder)}
