"""The record file of `ftlab record` / `ftlab replay`: record now, format later, as trace-cmd and uftrace do.

A recording is a JSON header line (format, arch, kernel release, tracer, record layout, the
symbols needed to name addresses), then chunks of raw ring-buffer records (an 8-byte length, then the bytes) as the
buffer drains, then a zero length and a JSON trailer (the counters no event shows, and the call's
result). Replaying runs the records through the live tracer's decoder and prints through the same
sinks, counting the events as the tracer does, so the output is identical to `ftlab trace`.
"""

from __future__ import annotations

import json
import struct

from emulator import FtlabError
from emulator import arch as arches
from emulator.symbols import Symbol, SymbolTable

from ..arch import kernel_arch
from ..kernel_version import KernelVersion
from .decode import DECODERS
from .events import COUNTERS, with_entries_written
from .sinks import make_sink

# 2: graph records hold their depth; the trailer its counters. 3: the header names the kernel
# release, whose text formats replay prints. 4: the release fixes the exit record's fields (x86's
# return_to_handler saves sp from 6.18), which the header lists as exit_fields.
MAGIC, VERSION = "ftlab-record", 4
LENGTH = struct.Struct("<Q")


def _open(path: str, mode: str):
    try:
        return open(path, mode)
    except OSError as err:
        raise FtlabError(f"{path}: {err.strerror}") from None


class Recorder:
    """Writes a recording: the header at once, then it is the ring buffer's consumer (raw chunks
    straight into the file), then finish() writes the trailer. A context manager for the file."""

    def __init__(self, path: str, karch, kernel: KernelVersion, symbols: SymbolTable, tracer: str, call_text: str):
        if tracer not in DECODERS:
            raise FtlabError(f"record takes --tracer {' or '.join(DECODERS)}")
        self.fh = _open(path, "wb")
        header = {
            "format": MAGIC,
            "version": VERSION,
            "arch": karch.name,
            "kernel": str(kernel),
            "tracer": tracer,
            "clock": "counter",
            "call": call_text,
            "record_size": DECODERS[tracer](karch, kernel).rec.size,
            "fields": list(karch.ftrace_regs_saved),
            "exit_fields": list(karch.fgraph.exit_saved(kernel)),
            "symbols": [[s.name, s.addr, s.size, s.kind] for s in symbols],
        }
        self.fh.write(json.dumps(header).encode() + b"\n")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()

    def __call__(self, chunk: bytes) -> None:
        self.fh.write(LENGTH.pack(len(chunk)))
        self.fh.write(chunk)

    def finish(self, counters: dict, result) -> None:
        """The trailer: the tracer's counters that its events do not show (what the buffer lost,
        trace_overrun), and the call's result."""
        self.fh.write(LENGTH.pack(0))
        self.fh.write(
            json.dumps({"counters": counters, "result": list(result) if isinstance(result, tuple) else result}).encode()
            + b"\n"
        )


class Recording:
    """A recording read back: its header checked and parsed, then chunks() streams its records and
    leaves the trailer in .trailer. A context manager for the file."""

    def __init__(self, path: str):
        self.path, self.fh, self.trailer = path, _open(path, "rb"), None
        try:
            header = self._header()
        except FtlabError:
            self.fh.close()
            raise
        self.tracer, self.clock, self.call = header["tracer"], header["clock"], header["call"]
        self.symbols = SymbolTable()
        for name, addr, size, kind in header["symbols"]:
            self.symbols.add(Symbol(name, addr, size, kind))

    def _header(self) -> dict:
        path = self.path
        try:
            header = json.loads(self.fh.readline())
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("format") != MAGIC:
            raise FtlabError(f"{path}: not an ftlab recording")
        if header["version"] != VERSION:
            raise FtlabError(f"{path}: recording version {header['version']}, this ftlab reads {VERSION}")
        if header["tracer"] not in DECODERS:
            raise FtlabError(f"{path}: a {header['tracer']} recording; this ftlab replays {', '.join(DECODERS)}")
        self.karch = karch = kernel_arch(arches.get(header["arch"]))
        self.kernel = kernel = KernelVersion.parse(header["kernel"])
        if (
            header["fields"] != list(karch.ftrace_regs_saved)
            or header["exit_fields"] != list(karch.fgraph.exit_saved(kernel))
            or header["record_size"] != DECODERS[header["tracer"]](karch, kernel).rec.size
        ):
            raise FtlabError(f"{path}: recorded with a different {karch.name} record layout")
        return header

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()

    def decoder(self):
        """A fresh decoder for this recording's records."""
        return DECODERS[self.tracer](self.karch, self.kernel)

    def chunks(self):
        """The chunks of records in the order they were written; then the trailer is read."""
        while True:
            raw = self.fh.read(LENGTH.size)
            if len(raw) < LENGTH.size:
                raise FtlabError(f"{self.path}: truncated recording")
            [size] = LENGTH.unpack(raw)
            if size == 0:
                break
            chunk = self.fh.read(size)
            if len(chunk) < size:
                raise FtlabError(f"{self.path}: truncated recording")
            yield chunk
        self.trailer = json.loads(self.fh.readline())


def replay(path: str, fmt: str, out, **graph_options) -> dict:
    """A recording through its tracer's decoder into a sink: the trace `ftlab trace` would have
    printed. Returns the call and its result."""
    with Recording(path) as rec:
        decoder = rec.decoder()
        options = graph_options if rec.tracer == "function_graph" else {}
        sink = make_sink(fmt, rec.tracer, out, rec.symbols, rec.karch.name, rec.kernel, **options)
        names = COUNTERS[rec.tracer]
        counts = dict.fromkeys(names.values(), 0)
        sink.begin(rec.tracer, rec.clock)
        for chunk in rec.chunks():
            for ev in decoder.events(chunk):
                counts[names[ev.type]] += 1
                sink.event(ev)
        sink.end({"counters": with_entries_written({**counts, **rec.trailer["counters"]})})
        return {"call": rec.call, "result": rec.trailer["result"]}
