"""The function tracer's text written in bulk, from its records' columns in Python
(TextSink.entries) and in C (TextSink.records, native/textlines.c), is the text its per-event path
writes for the same records, uncommitted records skipped by all three."""

import io

import pytest

from helpers import ARCHES
from tracers import Lab
from tracers.builtin.function import FunctionTracer
from tracers.output import native_text
from tracers.output.decode import FunctionDecoder
from tracers.output.records import REC_UNCOMMITTED
from tracers.output.sinks import CountSink, TextSink


def recorded(arch):
    """fib(12)'s raw function records, as the ring buffer hands them out."""
    lab = Lab.open("funcs", arch)
    chunks = []
    with FunctionTracer(lab, CountSink(), consumer=chunks.append):
        lab.call("fib", 12)
    return lab, b"".join(chunks)


def text(lab, feed) -> str:
    out = io.StringIO()
    sink = TextSink(out, lab.machine.symbols)
    feed(sink, FunctionDecoder(lab.karch, lab.kernel, lab.ftrace.uncaptured()))
    sink.end({"counters": {"entries-in-buffer": 0, "entries-written": 0}})
    return out.getvalue()


@pytest.mark.parametrize("arch", ARCHES)
def test_bulk_lines_are_the_per_event_lines(arch):
    lab, records = recorded(arch)
    size = FunctionDecoder(lab.karch, lab.kernel).rec.size
    chunk = bytearray(records)
    chunk[5 * size : 5 * size + 8] = REC_UNCOMMITTED.to_bytes(8, "little")  # a record never committed
    chunk = bytes(chunk)

    def per_event(sink, decoder):
        for ev in decoder.events(chunk):
            sink.event(ev)

    def bulk(sink, decoder):
        assert sink.entries(*decoder.columns(chunk)) == len(records) // size - 1

    slow = text(lab, per_event)
    assert text(lab, bulk) == slow and slow.count(" <-") == len(records) // size - 1 == 465 - 1
    if native_text.LIB is not None:  # built at install where a C compiler was there

        def in_c(sink, decoder):
            assert sink.records(chunk, decoder) == len(records) // size - 1

        assert text(lab, in_c) == slow


@pytest.mark.skipif(native_text.LIB is None, reason="the native text formatter was not built (no C compiler)")
def test_native_lines_grow_their_room_and_raise_what_python_raised():
    long_body = "x" * 500 + " <-y\n"
    lines = native_text.NativeLines("P ", lambda ip, parent: long_body if ip == 1 else "f <-g\n")
    rec = (1).to_bytes(8, "little") * 2 + (1).to_bytes(8, "little") + (2).to_bytes(8, "little")
    text, n = lines.lines(rec * 3, 32)  # longer than the room first allowed for a line
    assert n == 3 and text == ("P " + " " * 11 + "1: " + long_body) * 3

    def broken(ip, parent):
        raise ValueError("no name")

    with pytest.raises(ValueError, match="no name"):
        native_text.NativeLines("P ", broken).lines(rec, 32)
