"""Bug (b): function_graph's depth comes from each record, as the kernel's graph entries carry it,
so a buffer that kept only its newest records (overwrite mode) still shows every call at its real
depth, whichever writes the records (the guest fast path or fgraph's Python path)."""

import json

import pytest

from helpers import ftlab
from tracers import FgraphOps, FunctionGraphTracer, Lab
from tracers.output.sinks import ListSink


def fib_calls(n: int, depth: int = 0):
    """(event, depth) of every entry and exit fib(n) makes, in order: the fixture's recursion."""
    yield "entry", depth
    if n >= 2:
        yield from fib_calls(n - 1, depth + 1)
        yield from fib_calls(n - 2, depth + 1)
    yield "exit", depth


@pytest.mark.parametrize("writer", ["guest", "python"])
def test_overwritten_records_keep_each_calls_depth(arch, writer):
    lab = Lab.open("funcs", arch, ring_records=10)
    if writer == "python":  # a second fgraph user: the records come from Python
        lab.fgraph.register(FgraphOps(lambda t, g, f: 0, name="other"))
    sink = ListSink()
    with FunctionGraphTracer(lab, sink, buffer_mode="overwrite"):
        lab.call("fib", 8)
    real = list(fib_calls(8))
    assert sink.summary["counters"]["overwritten"] > 0 and len(sink.events) == 10
    # the counter clock stamps every record, kept or not: ts - 1 is the event's place in the call
    assert [(e.type, e.depth) for e in sink.events] == [real[e.ts - 1] for e in sink.events]


def test_printed_depths_after_overwrite_are_the_real_ones(capsys, arch):
    argv = f"trace --arch {arch} funcs fib(8) --tracer function_graph --format json --buffer-size 10"
    out = ftlab(capsys, *argv.split(), "--buffer-mode", "overwrite")
    events = [e for e in map(json.loads, out.splitlines()) if e["type"] != "summary"]
    real = list(fib_calls(8))
    assert len(events) == 10 and min(e["depth"] for e in events) >= 0
    assert [(e["type"], e["depth"]) for e in events] == [real[e["ts"] - 1] for e in events]
