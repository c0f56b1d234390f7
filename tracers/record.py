"""`ftlab record` / `ftlab replay`: record now, format later, as trace-cmd and uftrace do.

A recording is a JSON header line (format, arch, tracer, record layout, the symbols needed to
name addresses), then chunks of raw ring-buffer records (an 8-byte length, then the bytes) as the
buffer drains, then a zero length and a JSON trailer (the summary and the call's result).
Replaying decodes the records with the live tracer's own decoder and prints through the same
sinks, so the output is identical to `ftlab trace`.
"""
from __future__ import annotations

import json
import struct
from types import SimpleNamespace

from emulator import FtlabError, arch as arches
from emulator.symbols import Symbol, SymbolTable

from .function import FunctionTracer, decode_records
from .output import make_sink
from .ring_buffer import record_struct

MAGIC, VERSION = "ftlab-record", 1
LENGTH = struct.Struct("<Q")


class Recorder:
    """The ring buffer's consumer while recording: raw chunks straight into the file."""

    def __init__(self, fh, lab, call_text: str):
        self.fh = fh
        arch = lab.arch
        header = {"format": MAGIC, "version": VERSION, "arch": arch.name, "tracer": "function",
                  "clock": "counter", "call": call_text, "record_size": record_struct(arch).size,
                  "fields": list(arch.ftrace_regs_saved),
                  "symbols": [[s.name, s.addr, s.size, s.kind] for s in lab.machine.symbols._sorted]}
        fh.write(json.dumps(header).encode() + b"\n")
        self.size, self.records = header["record_size"], 0

    def __call__(self, chunk: bytes) -> None:
        self.fh.write(LENGTH.pack(len(chunk)))
        self.fh.write(chunk)
        self.records += len(chunk) // self.size

    def finish(self, trailer: dict) -> None:
        self.fh.write(LENGTH.pack(0))
        self.fh.write(json.dumps(trailer).encode() + b"\n")


def record(lab, call: tuple, call_text: str, path: str, filters=(), notrace=()) -> None:
    with open(path, "wb") as fh:
        rec = Recorder(fh, lab, call_text)
        tracer = FunctionTracer(lab, _NoSink(), filters=filters, notrace=notrace, ring=True, consumer=rec)
        with tracer:
            result = lab.call(call[0], *call[1])
        summary = tracer.summary_seen
        summary["counters"]["entries-written"] = rec.records       # counted here, not decoded
        rec.finish({"summary": summary, "result": list(result) if isinstance(result, tuple) else result})


class _NoSink:
    def begin(self, *a):
        pass

    def event(self, ev):
        pass

    def end(self, summary):
        pass


def replay(path: str, fmt: str, out) -> dict:
    try:
        fh = open(path, "rb")
    except OSError as err:
        raise FtlabError(f"{path}: {err.strerror}") from None
    with fh:
        try:
            header = json.loads(fh.readline())
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("format") != MAGIC:
            raise FtlabError(f"{path}: not an ftlab recording")
        if header["version"] != VERSION:
            raise FtlabError(f"{path}: recording version {header['version']}, this ftlab reads {VERSION}")
        arch = arches.get(header["arch"])
        if header["fields"] != list(arch.ftrace_regs_saved):
            raise FtlabError(f"{path}: recorded with a different {arch.name} record layout")
        symbols = SymbolTable()
        for name, addr, size, kind in header["symbols"]:
            symbols.add(Symbol(name, addr, size, kind))
        view = SimpleNamespace(symbols=symbols, arch=arch)
        replayer = _Replayer(make_sink(fmt, "function", out, view), arch)
        replayer.sink.begin("function", header["clock"])
        while True:
            raw = fh.read(LENGTH.size)
            if len(raw) < LENGTH.size:
                raise FtlabError(f"{path}: truncated recording")
            [size] = LENGTH.unpack(raw)
            if size == 0:
                break
            decode_records(replayer, arch, fh.read(size))
        trailer = json.loads(fh.readline())
        replayer.sink.end(trailer["summary"])
        return {"call": header["call"], "result": trailer["result"]}


class _Replayer(FunctionTracer):
    """The function tracer's decoding half, without a machine."""

    def __init__(self, sink, arch):
        self.sink, self.verify, self.counts = sink, False, {"entries-written": 0}
        self.snapshots = self.mismatching = 0
        self._sps = []
