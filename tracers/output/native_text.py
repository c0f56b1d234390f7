"""The function and function_graph tracers' text lines formatted in C (native/textlines.c), from
the records as they are: where it was built at install, TextSink.entries' and
GraphTextSink.columns' Python stay the reference (tests compare them) and the fallback. Python
still names every (ip, parent) pair or graph function, once."""

from __future__ import annotations

import ctypes
import importlib.util

MISS_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_uint64, ctypes.c_uint64)
NO_BODY, NO_ROOM = -1, -2


def _library():
    spec = importlib.util.find_spec("tracers.output._textlines")
    if spec is None or spec.origin is None:
        return None
    lib = ctypes.CDLL(spec.origin)
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
    return lib


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
        self._body = body
        self._error: BaseException | None = None
        self._miss = MISS_CALLBACK(self._on_miss)  # kept alive as long as the formatter
        raw = prefix.encode()
        self._t = LIB.textlines_new(self._miss, raw, len(raw))
        if not self._t:
            raise MemoryError("the native text formatter")
        self._per_line = max(per_line, len(raw) + 22 + 64)  # grown when a body is longer
        self._out = ctypes.create_string_buffer(0)

    def _on_miss(self, ip: int, parent: int) -> None:
        try:
            text = self._body(ip, parent).encode()
            self._per_line = max(self._per_line, len(text) + 22 + 64)
            if LIB.textlines_add_body(self._t, ip, parent, text, len(text)) != 0:
                raise MemoryError("the native text formatter's bodies")
        except BaseException as err:  # raised again by _format(): ctypes would only print it
            self._error = err

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
        if getattr(self, "_t", None) and LIB is not None:
            LIB.textlines_free(self._t)


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
