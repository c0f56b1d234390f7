"""The record file of `ftlab record` / `ftlab replay`: record now, format later, as trace-cmd and uftrace do.

A recording (version 6) is, in order:

- a 32-byte preamble (PREAMBLE): the magic `FTLABREC`, the version, the lengths of the three parts
  below, and a CRC-32 (zlib.crc32) of the three parts, continued over the preamble's other fields;
- the header: JSON (arch, kernel release, tracer, clock, the CALL text, the record layout:
  record_size, fields and exit_fields, and the symbols needed to name addresses);
- the records: the raw ring-buffer records as the buffer drained, a whole number of record_size;
- the trailer: JSON (the counters no event shows; each call's result as [call, type, value] and
  each named buffer as [name, hex] after the last call, or for a run an error stopped, why).

The recorder writes into an OutputFile (a temporary file renamed into place when complete) and
fills the preamble in last, so an unfinished recording has no magic and none is left behind.
Replay checks the whole file before it prints anything: the magic, the version, that the file is
as long as the preamble says, the checksum, then the header and trailer; anything else is one
line naming the file and the part that is wrong. Replaying runs the records through the live
tracer's decoder and prints through the same sinks, counting the events as the tracer does, so
the output is identical to `ftlab trace`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import struct
import tempfile
import zlib
from typing import IO

from emulator import FtlabError
from emulator import arch as arches
from emulator.symbols import Symbol, SymbolTable

from ..arch import kernel_arch
from ..call_results import CallsOutcome, Result
from ..call_syntax import RESULT_TYPES
from ..core.fgraph import SHADOW_STACK_OFFSET
from ..kernel_version import KernelVersion
from .decode import DECODERS
from .events import COUNTERS, with_entries_written
from .formats import bulk_writer, make_sink
from .outfile import OutputFile

# 2: graph records hold their depth; the trailer its counters. 3: the header names the kernel
# release, whose text formats replay prints. 4: the release fixes the exit record's fields (x86's
# return_to_handler saves sp from 6.18), which the header lists as exit_fields. 5: a binary
# preamble with the parts' lengths and a CRC-32; one block of records (no chunk lengths). 6: the
# call is a sequence: the trailer has each call's typed result and the named buffers.
MAGIC, VERSION = b"FTLABREC", 6
OLD_MAGIC = "ftlab-record"  # versions 1-4: a JSON header line with {"format": OLD_MAGIC, "version": N}
PREAMBLE = struct.Struct("<8sIIQII")  # magic, version, header, records and trailer lengths, crc32
CLOCKS = ("counter",)  # what a recording's timestamps count (record takes no --clock)
READ = 1 << 20  # bytes per read while checking and replaying


def _crc(body_crc: int, preamble: bytes) -> int:
    """The checksum: the parts' CRC-32, continued over the preamble's fields before the checksum."""
    return zlib.crc32(preamble[: PREAMBLE.size - 4], body_crc)


class Recorder:
    """Writes a recording into an OutputFile: the header at once, then it is the ring buffer's
    consumer (raw chunks straight into the file), then finish() writes the trailer and the preamble.
    A write that fails is kept and reported by finish() (the consumer runs inside the emulation)."""

    def __init__(
        self,
        out: OutputFile,
        karch,
        kernel: KernelVersion,
        symbols: SymbolTable,
        tracer: str,
        call_text: str,
        uncaptured: dict[int, tuple[str, ...]] | None = None,
    ):
        """uncaptured: Ftrace.uncaptured(), the sites whose records hold members not captured there."""
        if tracer not in DECODERS:
            raise FtlabError(f"record takes --tracer {' or '.join(DECODERS)}")
        self.out, self.fh = out, out.fh
        self.error: OSError | None = None
        header = {
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
        if uncaptured:  # legacy -pg sites (arm64's x0); absent otherwise
            header["uncaptured"] = [[ip, list(members)] for ip, members in sorted(uncaptured.items())]
        self.crc, self.records = 0, 0
        self._write(bytes(PREAMBLE.size))  # no magic until finish() fills it in
        self.header = json.dumps(header).encode()
        self._write(self.header, checked=True)

    def _write(self, data: bytes, checked: bool = False) -> None:
        if self.error is not None:
            return
        try:
            self.fh.write(data)
        except OSError as err:
            self.error = err
        if checked:
            self.crc = zlib.crc32(data, self.crc)

    def __call__(self, chunk: bytes) -> None:
        self._write(chunk, checked=True)
        self.records += len(chunk)

    def finish(self, counters: dict, outcome: CallsOutcome | None, stopped: str | None = None) -> None:
        """The trailer: the tracer's counters that its events do not show (what the buffer lost,
        trace_overrun), and the calls' results and buffers, or for a run an error stopped (outcome
        None) why; then the preamble, which makes the file a recording."""
        ended = {"stopped": stopped} if outcome is None else outcome.to_json()
        trailer = json.dumps({"counters": counters, **ended})
        self._write(trailer.encode(), checked=True)
        fields = PREAMBLE.pack(MAGIC, VERSION, len(self.header), self.records, len(trailer), 0)
        preamble = fields[:-4] + struct.pack("<I", _crc(self.crc, fields))
        if self.error is None:
            try:
                self.fh.seek(0)
                self.fh.write(preamble)
            except OSError as err:
                self.error = err
        if self.error is not None:
            raise FtlabError(f"{self.out.path}: {self.error.strerror or self.error}")


def _json_part(path: str, name: str, start: int, data: bytes) -> dict:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise FtlabError(f"{path}: the {name} at bytes {start}-{start + len(data)} is not a JSON object")
    return value


def _field(path: str, where: str, part: dict, name: str, check, what: str):
    """part[name], which check() must accept: else one line naming the part and the field."""
    value = part.get(name)
    try:
        good = check(value)
    except (TypeError, ValueError):
        good = False
    if not good:
        raise FtlabError(f"{path}: the {where}'s {name!r} is not {what}")
    return value


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _words(v) -> bool:
    return _is_int(v) and 0 <= v < 1 << 64


def _strings(v) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


def _results(v) -> bool:
    return isinstance(v, list) and all(
        isinstance(r, list) and len(r) == 3 and isinstance(r[0], str) and _typed(r[1], r[2]) for r in v
    )


def _typed(kind, value) -> bool:
    """A value decode_result() could have given for the type."""
    if kind == "void":
        return value is None
    if kind == "pair":
        return isinstance(value, list) and len(value) == 2 and all(_typed("s64", x) for x in value)
    if kind not in RESULT_TYPES or not _is_int(value):
        return False
    bits = int(kind[1:])
    low, high = (-(1 << bits - 1), 1 << bits - 1) if kind[0] == "s" else (0, 1 << bits)
    return low <= value < high


def _buffers(v) -> bool:
    """[[name, hex], ...], each name once."""
    return (
        isinstance(v, list)
        and all(isinstance(b, list) and len(b) == 2 and all(isinstance(x, str) for x in b) for b in v)
        and all(re.fullmatch(r"(?:[0-9a-f]{2})*", data) for _, data in v)
        and len({name for name, _ in v}) == len(v)
    )


def _uncaptured(v) -> bool:
    return isinstance(v, list) and all(
        isinstance(e, list) and len(e) == 2 and _words(e[0]) and _strings(e[1]) for e in v
    )


def _symbol(s) -> bool:
    return (
        isinstance(s, list)
        and len(s) == 4
        and isinstance(s[0], str)
        and _words(s[1])
        and _words(s[2])
        and isinstance(s[3], str)
    )


class Recording:
    """A recording read back: the whole file checked and its header parsed at once, then chunks()
    streams its records. A context manager for the file."""

    def __init__(self, path: str):
        self.path = path
        self.uncaptured: dict[int, tuple[str, ...]] = {}
        self.fh: IO[bytes]
        try:
            self.fh = open(path, "rb")
        except OSError as err:
            raise FtlabError(f"{path}: {err.strerror}") from None
        try:
            self._check()
        except BaseException:
            self.fh.close()
            raise

    def _fail(self, what: str) -> FtlabError:
        return FtlabError(f"{self.path}: {what}")

    def _check(self) -> None:
        fh = self.fh
        try:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):  # a pipe: read twice, so kept aside
                self.fh = tempfile.TemporaryFile()
                shutil.copyfileobj(fh, self.fh)
                fh.close()
                fh = self.fh
                fh.seek(0)
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(PREAMBLE.size)
        except OSError as err:
            raise self._fail(err.strerror or str(err)) from None
        if not head:
            raise self._fail("an empty file, not an ftlab recording")
        if not head.startswith(MAGIC[: len(head)]):
            raise self._fail(self._old_version(head) or "not an ftlab recording")
        if len(head) < PREAMBLE.size:
            raise self._fail(f"truncated at byte {size}: expected a {PREAMBLE.size}-byte preamble")
        _, version, header_len, records_len, trailer_len, crc = PREAMBLE.unpack(head)
        if version != VERSION:
            raise self._fail(f"recording version {version}, this ftlab reads {VERSION}")
        self.records_at = PREAMBLE.size + header_len
        self.trailer_at = self.records_at + records_len
        end = self.trailer_at + trailer_len
        if size < end:
            part = "header" if size < self.records_at else "records" if size < self.trailer_at else "trailer"
            raise self._fail(f"truncated at byte {size} (in the {part}): the preamble says {end} bytes")
        if size > end:
            raise self._fail(f"{size - end} bytes of junk after the recording's end at byte {end}")
        body = 0
        while chunk := fh.read(READ):
            body = zlib.crc32(chunk, body)
        if _crc(body, head) != crc:
            raise self._fail(
                f"checksum mismatch: CRC-32 {_crc(body, head):#010x}, the preamble says {crc:#010x} (a corrupted file)"
            )
        fh.seek(PREAMBLE.size)
        self._header(_json_part(self.path, "header", PREAMBLE.size, fh.read(header_len)))
        rec_size = self.decoder().rec.size
        if records_len % rec_size:
            raise self._fail(
                f"the records at bytes {self.records_at}-{self.trailer_at} are not whole "
                f"{rec_size}-byte records ({records_len} bytes)"
            )
        fh.seek(self.trailer_at)
        self._trailer(_json_part(self.path, "trailer", self.trailer_at, fh.read(trailer_len)))

    def _old_version(self, head: bytes) -> str | None:
        """Versions 1-4 began with a JSON line naming their format and version."""
        if not head.startswith(b"{"):
            return None
        self.fh.seek(0)
        try:
            old = json.loads(self.fh.readline(1 << 24))
        except (ValueError, RecursionError):
            return None
        if isinstance(old, dict) and old.get("format") == OLD_MAGIC:
            return f"recording version {old.get('version')}, this ftlab reads {VERSION}"
        return None

    def _header(self, header: dict) -> None:
        path = self.path
        what = "a string"
        for name in ("arch", "kernel", "tracer", "clock", "call"):
            _field(path, "header", header, name, lambda v: isinstance(v, str), what)
        self.tracer, self.clock, self.call = header["tracer"], header["clock"], header["call"]
        if self.tracer not in DECODERS:
            raise self._fail(f"a {self.tracer} recording; this ftlab replays {', '.join(DECODERS)}")
        if self.clock not in CLOCKS:
            raise self._fail(f"a recording with the {self.clock} clock; this ftlab replays {', '.join(CLOCKS)}")
        try:
            self.karch = karch = kernel_arch(arches.get(header["arch"]))
            self.kernel = kernel = KernelVersion.parse(header["kernel"])
        except FtlabError as err:
            raise self._fail(f"header: {err}") from None
        _field(path, "header", header, "record_size", _is_int, "a whole number")
        _field(path, "header", header, "fields", _strings, "a list of register names")
        _field(path, "header", header, "exit_fields", _strings, "a list of register names")
        uncaptured = header.get("uncaptured", [])
        _field(path, "header", {"uncaptured": uncaptured}, "uncaptured", _uncaptured, "a list of [address, members]")
        self.uncaptured = {ip: tuple(members) for ip, members in uncaptured}
        if (
            header["fields"] != list(karch.ftrace_regs_saved)
            or header["exit_fields"] != list(karch.fgraph.exit_saved(kernel))
            or header["record_size"] != self.decoder().rec.size
        ):
            raise self._fail(f"recorded with a different {karch.name} record layout")
        symbols = _field(
            path,
            "header",
            header,
            "symbols",
            lambda v: isinstance(v, list) and all(map(_symbol, v)),
            "a list of [name, address, size, kind]",
        )
        self.symbols = SymbolTable()
        for name, addr, size, kind in symbols:
            self.symbols.add(Symbol(name, addr, size, kind))

    def _trailer(self, trailer: dict) -> None:
        counters = _field(
            self.path,
            "trailer",
            trailer,
            "counters",
            lambda v: isinstance(v, dict) and all(map(_is_int, v.values())),
            "an object of counts",
        )
        if "stopped" in trailer:  # a run an error stopped: why, and no result
            stopped = _field(self.path, "trailer", trailer, "stopped", lambda v: isinstance(v, str), "a reason")
            self.trailer = {"counters": counters, "outcome": None, "stopped": stopped}
            return
        results = _field(
            self.path, "trailer", trailer, "results", _results, "a list of [call, type, value] (each call's result)"
        )
        buffers = _field(self.path, "trailer", trailer, "buffers", _buffers, "a list of [name, hex bytes]")
        self.trailer = {
            "counters": counters,
            "outcome": CallsOutcome(
                tuple(Result(call, kind, tuple(v) if isinstance(v, list) else v) for call, kind, v in results),
                {name: bytes.fromhex(data) for name, data in buffers},
            ),
        }

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()

    def decoder(self):
        """A fresh decoder for this recording's records."""
        return DECODERS[self.tracer](self.karch, self.kernel, self.uncaptured)

    def chunks(self, rec_size: int):
        """The records in the order they were written, in chunks of whole records."""
        self.fh.seek(self.records_at)
        left = self.trailer_at - self.records_at
        step = max(rec_size, READ - READ % rec_size)
        while left:
            chunk = self.fh.read(min(step, left))
            if not chunk:  # the file changed since it was checked
                raise self._fail(f"truncated at byte {self.trailer_at - left} while replaying")
            left -= len(chunk)
            yield chunk


def replay(path: str, fmt: str, out, **graph_options) -> dict:
    """A recording through its tracer's decoder into a sink: the trace `ftlab trace` would have
    printed. Returns the CALL text, the calls' outcome (None for a run an error stopped) and why it stopped."""
    with Recording(path) as rec:
        decoder = rec.decoder()
        options = graph_options if rec.tracer == "function_graph" else {}
        sink = make_sink(fmt, rec.tracer, out, rec.symbols, rec.karch.name, rec.kernel, **options)
        names = COUNTERS[rec.tracer]
        counts = dict.fromkeys(names.values(), 0)
        sink.begin(rec.tracer, rec.clock)
        bulk = bulk_writer(decoder, sink)
        for chunk in rec.chunks(decoder.rec.size):
            if rec.tracer == "function_graph":
                deep = next((d for d in decoder.depths(chunk) if d > SHADOW_STACK_OFFSET), None)
                if deep is not None:  # more frames than the shadow stack holds
                    raise FtlabError(f"{path}: a record at depth {deep}, deeper than fgraph's shadow stack")
            if bulk is not None:  # the records written as `trace` writes them
                for type_, n in bulk(chunk).items():
                    counts[names[type_]] += n
                continue
            for ev in decoder.events(chunk):
                counts[names[ev.type]] += 1
                sink.event(ev)
        summary = {"counters": with_entries_written({**counts, **rec.trailer["counters"]})}
        if "stopped" in rec.trailer:
            summary["stopped"] = rec.trailer["stopped"]
        sink.end(summary)
        return {"call": rec.call, "outcome": rec.trailer["outcome"], "stopped": rec.trailer.get("stopped")}
