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

from ..arch import kernel_arch
from ..builtin.function import FunctionTracer, decode_records
from ..builtin.function_graph import FunctionGraphTracer, decode_graph_records
from .sinks import CountSink, make_sink
from ..builtin.guest import REC_ENTRY, REC_EXIT, record_struct

TRACERS = {"function": (FunctionTracer, decode_records, {"entries-written": 0}),
           "function_graph": (FunctionGraphTracer, decode_graph_records, {"entries": 0, "exits": 0})}

MAGIC, VERSION = "ftlab-record", 2           # 2: graph records hold their depth
LENGTH = struct.Struct("<Q")


class Recorder:
    """The ring buffer's consumer while recording: raw chunks straight into the file."""

    def __init__(self, fh, lab, call_text: str, tracer: str):
        self.fh = fh
        arch = lab.karch
        header = {"format": MAGIC, "version": VERSION, "arch": arch.name, "tracer": tracer,
                  "clock": "counter", "call": call_text, "record_size": record_struct(arch).size,
                  "fields": list(arch.ftrace_regs_saved),
                  "symbols": [[s.name, s.addr, s.size, s.kind] for s in lab.machine.symbols._sorted]}
        fh.write(json.dumps(header).encode() + b"\n")
        self.size, self.entries, self.exits = header["record_size"], 0, 0

    def __call__(self, chunk: bytes) -> None:
        self.fh.write(LENGTH.pack(len(chunk)))
        self.fh.write(chunk)
        types = chunk[::self.size]                 # each record's type, its first (low) byte
        self.entries += types.count(REC_ENTRY)
        self.exits += types.count(REC_EXIT)

    def finish(self, trailer: dict) -> None:
        self.fh.write(LENGTH.pack(0))
        self.fh.write(json.dumps(trailer).encode() + b"\n")


def record(lab, call: tuple, call_text: str, path: str, tracer: str = "function", filters=(), notrace=(),
           **options) -> None:
    if tracer not in TRACERS:
        raise FtlabError(f"record takes --tracer {' or '.join(TRACERS)}")
    try:
        fh = open(path, "wb")
    except OSError as err:
        raise FtlabError(f"{path}: {err.strerror}") from None
    with fh:
        rec = Recorder(fh, lab, call_text, tracer)
        kind, _, _ = TRACERS[tracer]
        live = kind(lab, CountSink(), filters=filters, notrace=notrace, ring=True, consumer=rec, **options)
        with live:
            result = lab.call(call[0], *call[1])
        summary = live.summary_seen                 # what decoding would have counted:
        # the tracer's counter names in order: entries(-written), then exits for function_graph
        summary["counters"].update(zip(TRACERS[tracer][2], (rec.entries, rec.exits)))
        rec.finish({"summary": summary, "result": list(result) if isinstance(result, tuple) else result})




def replay(path: str, fmt: str, out, **graph_options) -> dict:
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
        arch = kernel_arch(arches.get(header["arch"]))
        if header["fields"] != list(arch.ftrace_regs_saved):
            raise FtlabError(f"{path}: recorded with a different {arch.name} record layout")
        symbols = SymbolTable()
        for name, addr, size, kind in header["symbols"]:
            symbols.add(Symbol(name, addr, size, kind))
        view = SimpleNamespace(symbols=symbols, arch=arch.cpu)
        tracer = header["tracer"]
        if tracer not in TRACERS:
            raise FtlabError(f"{path}: a {tracer} recording; this ftlab replays {', '.join(TRACERS)}")
        options = graph_options if tracer == "function_graph" else {}
        replayer = _Replayer(make_sink(fmt, tracer, out, view, **options), tracer)
        decode = TRACERS[tracer][1]
        replayer.sink.begin(tracer, header["clock"])
        while True:
            raw = fh.read(LENGTH.size)
            if len(raw) < LENGTH.size:
                raise FtlabError(f"{path}: truncated recording")
            [size] = LENGTH.unpack(raw)
            if size == 0:
                break
            decode(replayer, arch, fh.read(size))
        trailer = json.loads(fh.readline())
        replayer.sink.end(trailer["summary"])
        return {"call": header["call"], "result": trailer["result"]}


class _Replayer(FunctionTracer):
    """A tracer's decoding half, without a machine: what the decoders need (emit, the counters,
    the function tracer's depth state)."""

    def __init__(self, sink, tracer: str):
        self.name, self.sink, self.verify = tracer, sink, False
        self.counts = dict(TRACERS[tracer][2])
        self.snapshots = self.mismatching = 0
        self._sps = []
