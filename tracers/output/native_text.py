"""The function, function_graph and probe events' text lines formatted in C (native/textlines.c),
from the records as they are: where it was built at install, TextSink.entries', TextSink.probe_lines'
and GraphTextSink.columns' Python stay the reference (tests compare them) and the fallback. Python
still makes every text the lines repeat (a pair's names, a graph function's, a probe event's head,
a symbol value's, a flags word's context), once."""

from __future__ import annotations

import ctypes
import importlib.util

from ..probe_events import TYPES
from .probe_records import WORDS

MISS_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_uint64, ctypes.c_uint64)
NO_BODY, NO_ROOM = -1, -2
ARG_KINDS = {"u": 0, "s": 1, "x": 2, "symbol": 3}  # textlines.c's ARG_U ...: the guest path's fetch types
ABI = 2  # textlines.c's ftlab_textlines_abi that these structs and calls match


def _library():
    spec = importlib.util.find_spec("tracers.output._textlines")
    if spec is None or spec.origin is None:
        return None
    lib = ctypes.CDLL(spec.origin)
    if not hasattr(lib, "ftlab_textlines_abi") or ctypes.c_int.in_dll(lib, "ftlab_textlines_abi").value != ABI:
        return None  # built from an older textlines.c, whose structs differ
    lib.textlines_new.restype = ctypes.c_void_p
    lib.textlines_new.argtypes = [MISS_CALLBACK, ctypes.c_char_p, ctypes.c_uint32]
    lib.textlines_free.argtypes = [ctypes.c_void_p]
    lib.textlines_add_body.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint64,
        ctypes.c_uint64,
        ctypes.c_char_p,
        ctypes.c_uint32,
    ]
    lib.textlines_format.restype = ctypes.c_int64
    lib.textlines_format.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_uint64,
        ctypes.c_uint64,
        ctypes.c_void_p,
        ctypes.c_uint64,
        ctypes.POINTER(ctypes.c_uint64),
    ]
    lib.graphlines_format.restype = ctypes.c_int64
    lib.graphlines_format.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(GraphOptions),
        ctypes.POINTER(GraphState),
        ctypes.c_char_p,
        ctypes.c_uint64,
        ctypes.c_uint64,
        ctypes.c_void_p,
        ctypes.c_uint64,
        ctypes.POINTER(ctypes.c_uint64 * 2),
    ]
    lib.probelines_new.restype = ctypes.c_void_p
    lib.probelines_new.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ProbeLayout), ctypes.c_uint32]
    lib.probelines_free.argtypes = [ctypes.c_void_p]
    lib.probelines_set_event.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_char_p,
        ctypes.c_uint32,
    ]
    lib.probelines_format.restype = ctypes.c_int64
    lib.probelines_format.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_uint64,
        ctypes.c_uint64,
        ctypes.c_void_p,
        ctypes.c_uint64,
        ctypes.POINTER(ctypes.c_uint64),
        ctypes.POINTER(ctypes.c_uint64),
    ]
    return lib


PROBE_TYPES = 16  # textlines.c's: the record types a probe layout can name


class ProbeLayout(ctypes.Structure):
    """textlines.c's struct probe_layout: a probe record's words, where its fields are, and by
    record type where its fetched words begin (0: none) and whether it is an exit (a bit each)."""

    _fields_ = [
        *((name, ctypes.c_uint64) for name in ("words", "event", "ip", "parent", "faults", "flags")),
        ("fetch", ctypes.c_uint64 * PROBE_TYPES),
        ("exits", ctypes.c_uint64),
    ]


class GraphOptions(ctypes.Structure):
    """textlines.c's struct graph_options."""

    _fields_ = [
        ("ret_word", ctypes.c_uint64),
        ("calltime_word", ctypes.c_uint64),
        ("retval", ctypes.c_uint32),
        ("tail", ctypes.c_uint32),
        ("unit_len", ctypes.c_uint32),
        ("ret_len", ctypes.c_uint32),
        ("unit", ctypes.c_char * 16),
        ("ret", ctypes.c_char * 8),
    ]


class GraphState(ctypes.Structure):
    """textlines.c's struct graph_state: the held entry (held, its ip and depth) and the comment depth."""

    _fields_ = [
        ("held", ctypes.c_uint64),
        ("held_ip", ctypes.c_uint64),
        ("held_depth", ctypes.c_uint64),
        ("depth", ctypes.c_int64),
    ]


LIB = _library()


class NativeLines:
    """One TextSink's formatter: prefix, then each record's timestamp and its pair's body."""

    def __init__(self, prefix: str, body, per_line: int = 0):
        """body(ip, parent) -> the pair's text (the `func <-parent` line's, newline included);
        per_line: the room first allowed for a record's text, grown when short."""
        assert LIB is not None
        self._error: BaseException | None = None
        self._tables: list[int] = []
        self._misses: list = []  # the tables' callbacks, kept alive as long as the formatter
        self._per_line = max(per_line, len(prefix.encode()) + 22 + 64)  # grown when a body is longer
        self._out = ctypes.create_string_buffer(0)
        self._t = self._table(body, prefix)

    def _table(self, body, prefix: str = "") -> int:
        """A textlines of bodies keyed (ip, parent), body(ip, parent) making each the first time."""
        raw = prefix.encode()

        def on_miss(ip: int, parent: int) -> None:
            try:
                text = body(ip, parent).encode()
                self._per_line = max(self._per_line, len(raw) + len(text) + 22 + 64)
                if LIB.textlines_add_body(t, ip, parent, text, len(text)) != 0:
                    raise MemoryError("the native text formatter's bodies")
            except BaseException as err:  # raised again by _format(): ctypes would only print it
                self._error = err

        miss = MISS_CALLBACK(on_miss)
        t = LIB.textlines_new(miss, raw, len(raw))
        if not t:
            raise MemoryError("the native text formatter")
        self._misses.append(miss)
        self._tables.append(t)
        return t

    def _format(self, n: int, write) -> str:
        """The text write(out, cap) makes of n records, called again with more room until it fits."""
        while True:
            need = n * self._per_line
            if len(self._out) < need:
                self._out = ctypes.create_string_buffer(need)
            written = write(self._out, len(self._out))
            if written >= 0:
                return ctypes.string_at(self._out, written).decode()
            if written == NO_BODY:
                err, self._error = self._error, None
                raise err or MemoryError("the native text formatter's bodies")
            self._per_line *= 2  # NO_ROOM: a body (or an indent) longer than the room allowed for

    def lines(self, chunk: bytes, record_size: int) -> tuple[str, int]:
        """The text of a chunk of whole records, and how many lines it holds."""
        n, count = len(chunk) // record_size, ctypes.c_uint64()
        text = self._format(
            n, lambda out, cap: LIB.textlines_format(self._t, chunk, n, record_size // 8, out, cap, ctypes.byref(count))
        )
        return text, count.value

    def __del__(self):
        if LIB is not None:
            for t in getattr(self, "_tables", ()):
                LIB.textlines_free(t)


class NativeGraph(NativeLines):
    """One GraphTextSink's formatter: its bodies are function names (asked as (ip, 0)), and `state`
    carries the held entry and the comment depth from one chunk to the next."""

    def __init__(self, prefix: str, name, options: GraphOptions):
        """name(ip) -> the function's name."""
        # two lines a record at most (a held entry opened, then the record's own), each indented
        super().__init__(prefix, lambda ip, parent: name(ip), per_line=512)
        self.options, self.state = options, GraphState()

    def graph_lines(self, chunk: bytes, record_size: int) -> tuple[str, int, int]:
        """The text of a chunk of whole records, and how many entries and exits it holds."""
        n, counts = len(chunk) // record_size, (ctypes.c_uint64 * 2)()
        text = self._format(
            n,
            lambda out, cap: LIB.graphlines_format(
                self._t,
                ctypes.byref(self.options),
                ctypes.byref(self.state),
                chunk,
                n,
                record_size // 8,
                out,
                cap,
                ctypes.byref(counts),
            ),
        )
        return text, counts[0], counts[1]


class NativeProbeLines(NativeLines):
    """One TextSink's formatter of probe events' records (ProbeDecoder's): a line is the context of
    the record's flags word, its timestamp, its event's head at (ip, parent), then each fetcharg's
    ` name=value`, a symbol's value as its text, a fault's as `(fault)`."""

    def __init__(self, decoder, context, head, symbol):
        """context(flags) -> the line's start up to the timestamp; head(event, ip, parent) -> the
        event's `name: (where)` (parent 0 at an entry); symbol(addr) -> a symbol value's text."""
        super().__init__("", lambda flags, _: context(flags), per_line=256)
        self._symbols = self._table(lambda addr, _: symbol(addr))
        self._words = decoder.rec.size // 8
        fetch = (ctypes.c_uint64 * PROBE_TYPES)()
        for kind, at in decoder.fetch_at.items():
            fetch[kind] = at
        layout = ProbeLayout(
            self._words,
            *(WORDS[name] for name in ("event", "ip", "parent", "faults", "flags")),
            fetch,
            sum(1 << kind for kind in decoder.exit_types),
        )
        self._nevents = len(decoder.specs)
        self._p = LIB.probelines_new(self._t, self._symbols, ctypes.byref(layout), self._nevents)
        if not self._p:
            raise MemoryError("the native probe text formatter")
        for e, spec in enumerate(decoder.specs):
            heads = self._table(lambda ip, parent, e=e: head(e, ip, parent))
            args = b"".join(_arg(arg) for arg in spec.args)
            if LIB.probelines_set_event(self._p, e, heads, len(spec.args), args, len(args)) != 0:
                raise MemoryError("the native probe text formatter")

    def probe_lines(self, chunk: bytes, start: int) -> tuple[str, int, list[int]]:
        """The text of the records from start up to the first of another type than an entry, an
        exit or uncommitted (or the chunk's end), its index, and the lines by event index then the
        entries and the exits."""
        n, done = len(chunk) // (8 * self._words), ctypes.c_uint64()
        counts = (ctypes.c_uint64 * (self._nevents + 2))()
        text = self._format(
            n - start,
            lambda out, cap: LIB.probelines_format(self._p, chunk, start, n, out, cap, ctypes.byref(done), counts),
        )
        return text, done.value, list(counts)

    def __del__(self):
        if getattr(self, "_p", None) and LIB is not None:
            LIB.probelines_free(self._p)
        super().__del__()


def _arg(arg) -> bytes:
    """A fetcharg as probelines_set_event takes it: kind, bits, the label's length, the label."""
    size, kind = TYPES[arg.type]
    label = f" {arg.name}=".encode()  # format_args' label
    return bytes((ARG_KINDS[kind], 8 * size)) + len(label).to_bytes(2, "little") + label
