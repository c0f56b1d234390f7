"""The function tracer's text written in bulk from its records' columns (TextSink.entries) is the
text its per-event path writes for the same records, uncommitted records skipped by both."""

import io

import pytest

from helpers import ARCHES
from tracers import Lab
from tracers.builtin.function import FunctionTracer
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
