"""The function tracer's text lines formatted in C (native/textlines.c), from the records as they
are: where it was built at install, TextSink.entries' Python stays the reference (a test compares
the two) and the fallback. Python still names every (ip, parent) pair, once."""

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
    return lib


LIB = _library()


class NativeLines:
    """One sink's formatter: prefix, then each record's timestamp and its pair's body."""

    def __init__(self, prefix: str, body):
        """body(ip, parent) -> the `func <-parent` line's text, newline included."""
        assert LIB is not None
        self._body = body
        self._error: BaseException | None = None
        self._miss = MISS_CALLBACK(self._on_miss)  # kept alive as long as the formatter
        raw = prefix.encode()
        self._t = LIB.textlines_new(self._miss, raw, len(raw))
        if not self._t:
            raise MemoryError("the native text formatter")
        self._per_line = len(raw) + 22 + 64  # grown when a body is longer
        self._out = ctypes.create_string_buffer(0)

    def _on_miss(self, ip: int, parent: int) -> None:
        try:
            text = self._body(ip, parent).encode()
            self._per_line = max(self._per_line, len(text) + 22 + 64)
            if LIB.textlines_add_body(self._t, ip, parent, text, len(text)) != 0:
                raise MemoryError("the native text formatter's bodies")
        except BaseException as err:  # raised again by lines(): ctypes would only print it
            self._error = err

    def lines(self, chunk: bytes, record_size: int) -> tuple[str, int]:
        """The text of a chunk of whole records, and how many lines it holds."""
        n = len(chunk) // record_size
        count = ctypes.c_uint64()
        while True:
            need = n * self._per_line
            if len(self._out) < need:
                self._out = ctypes.create_string_buffer(need)
            written = LIB.textlines_format(
                self._t, chunk, n, record_size // 8, self._out, len(self._out), ctypes.byref(count)
            )
            if written >= 0:
                return self._out.raw[:written].decode(), count.value
            if written == NO_BODY:
                err, self._error = self._error, None
                raise err or MemoryError("the native text formatter's bodies")
            self._per_line *= 2  # NO_ROOM: a body longer than the room allowed for

    def __del__(self):
        if getattr(self, "_t", None) and LIB is not None:
            LIB.textlines_free(self._t)
