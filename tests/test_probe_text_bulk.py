"""Probe events' text written in bulk from the guest handlers' records, in C (TextSink.probe_records,
native/textlines.c) and in Python (TextSink.probe_lines), is the text of an Event each (ProbeDecoder
.events through TextSink.event), counters and hits included, on both arches: every fetch type and
faults, entries and exits, several events on a function, a buffer drained in many chunks, a run
the budget stopped, records never committed, and a Python handler's events mixed in."""

from __future__ import annotations

import io

import pytest

from emulator import FtlabError
from helpers import ARCHES
from test_probe_guest import CASES, CRC
from tracers.builtin import probe
from tracers.builtin.probe import ProbeEventTracer
from tracers.core.ftrace import FtraceOps
from tracers.lab import Lab
from tracers.output import native_text
from tracers.output.probe_records import ProbeDecoder
from tracers.output.records import REC_UNCOMMITTED
from tracers.output.sinks import TextSink, location

needs_c = pytest.mark.skipif(native_text.LIB is None, reason="the native text formatter was not built (no C compiler)")
PATHS = [pytest.param("c", marks=needs_c), "python"]

# every numeric type cut from one word (a negative argument: each sign and width differs), symbols
# that resolve (@fib, the return address) and one that does not ($arg1)
TYPED = " ".join(f"{k}{bits}=$arg1:{k}{bits}" for k in "usx" for bits in (8, 16, 32, 64))
TYPES_CASES = {
    "types-entry": ([f"f:t fib {TYPED} f=@fib:symbol ra=+0($stack):symbol n=$arg1:symbol"], ("fib", -300)),
    "types-return": (
        [f"f:r fib%return {TYPED} r=$retval:s16 rx=$retval:x8 f=@fib:symbol", "f:e fib n=$arg1:s32"],
        ("fib", -300),
    ),
    "three-on-fib": (["f:a fib $arg1", "f:b fib%return $retval", "f:c fib n=$arg1:s64"], ("fib", 8)),
}
ALL_CASES = {**CASES, **TYPES_CASES}


def traced(arch, specs, calls, path, monkeypatch, setup=None, **lab_options) -> tuple[str, ProbeEventTracer]:
    """The trace file of the calls on one path: "event" (an Event each), "c" or "python" (in bulk);
    a run an error stopped ends the calls."""
    lab = Lab.open("funcs", arch, **lab_options)
    out = io.StringIO()
    tracer = ProbeEventTracer(lab, TextSink(out, lab.machine.symbols), specs)
    with monkeypatch.context() as patch:
        if path == "event":
            patch.setattr(probe, "probe_bulk_writer", lambda *args: None)
        elif path == "python":
            patch.setattr(native_text, "LIB", None)
        if setup:
            setup(lab, tracer)
        try:
            with tracer:
                for call in calls:
                    lab.call(*call)
        except FtlabError:
            pass
    assert tracer._guest is not None and (tracer._bulk is None) == (path == "event")
    return out.getvalue(), tracer


def assert_same(arch, specs, calls, path, monkeypatch, **options) -> str:
    slow, reference = traced(arch, specs, calls, "event", monkeypatch, **options)
    fast, tracer = traced(arch, specs, calls, path, monkeypatch, **options)
    assert fast == slow  # the header's entries and the hits' lines included
    assert tracer.counts == reference.counts and tracer.probe_counts() == reference.probe_counts()
    return slow


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", ALL_CASES)
def test_bulk_probe_lines_are_the_per_event_lines(arch, path, case, monkeypatch):
    specs, call = ALL_CASES[case]
    text = assert_same(arch, specs, [call], path, monkeypatch)
    assert text.count("\n           ftlab-1 ") > 0
    if case == "types-entry":
        assert f" u8={-300 & 0xFF} u16={-300 & 0xFFFF} " in text and " s8=-44 s16=-300 " in text
        assert f" x16=0x{-300 & 0xFFFF:x} " in text
    if case == "fetches-both":
        assert "=(fault)" in text


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("path", PATHS)
def test_bulk_probe_symbols(arch, path, monkeypatch):
    """Symbol values that resolve (immediates at and into functions, the same one again) and that
    do not, at entry and exit."""
    m = Lab.open("funcs", arch).machine
    fib, chain = m.address_of("fib"), m.address_of("chain_a")
    syms = f"f=\\{fib}:symbol g=\\{chain + 4}:symbol h=\\{fib}:symbol z=\\0:symbol"
    text = assert_same(
        arch, [f"f:s fib {syms} n=$arg1:symbol", f"f:x fib%return {syms}"], [("fib", 5)], path, monkeypatch
    )
    assert f" f={location(m.symbols, fib)} g={location(m.symbols, chain + 4)} " in text and " z=0x0" in text


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("path", PATHS)
def test_bulk_probe_lines_across_many_chunks(arch, path, monkeypatch):
    specs, _ = TYPES_CASES["types-return"]
    calls = [("fib", 9), ("fib", -300), CRC]
    text = assert_same(arch, [*specs, *CASES["fetches-both"][0]], calls, path, monkeypatch, ring_records=7)
    assert text.count(": r: (") == 110


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("path", PATHS)
def test_bulk_probe_lines_of_a_run_the_budget_stopped(arch, path, monkeypatch):
    specs, _ = ALL_CASES["three-on-fib"]
    text = assert_same(arch, specs, [("fib", 12)], path, monkeypatch, budget=3000, ring_records=16)
    assert "# stopped: " in text


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("path", PATHS)
def test_bulk_probe_lines_with_a_python_ops_on_the_site(arch, path, monkeypatch):
    """The hits take the Python dispatch: the entries' events come as REC_EVENT records, written
    through an Event in their place among the exits' lines."""

    def add_ops(lab, tracer):
        lab.ftrace.register(FtraceOps(lambda *a: None, name="other"))

    specs, _ = ALL_CASES["types-return"]
    text = assert_same(arch, specs, [("fib", 7), ("fib", -300)], path, monkeypatch, setup=add_ops, ring_records=7)
    assert ": e: (" in text and ": r: (" in text


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("path", PATHS)
def test_bulk_probe_lines_skip_uncommitted_records(arch, path, monkeypatch):
    """Records never committed amid a chunk are skipped by every path, and counted by none."""
    specs, call = ALL_CASES["three-on-fib"]
    lab = Lab.open("funcs", arch)
    chunks: list[bytes] = []
    tracer = ProbeEventTracer(lab, TextSink(io.StringIO(), lab.machine.symbols), specs)
    tracer._decode = chunks.append  # the raw records, as the ring buffer hands them out
    with tracer:
        lab.call(*call)
    size = tracer._decoder.rec.size
    chunk = bytearray(b"".join(chunks))
    for i in (0, 3, 4, 20):
        chunk[i * size : i * size + 8] = REC_UNCOMMITTED.to_bytes(8, "little")

    def text(write) -> tuple[str, list[int], dict]:
        out = io.StringIO()
        sink = TextSink(out, lab.machine.symbols)
        decoder = ProbeDecoder(
            lab.karch,
            lab.kernel,
            tracer.specs,
            lambda a: location(lab.machine.symbols, a),
            lab.machine.irqs_masked,
            "f",
        )
        written = write(sink, decoder)
        return out.getvalue(), decoder.counts, written

    def per_event(sink, decoder):
        written = {"entry": 0, "exit": 0}
        for ev in decoder.events(bytes(chunk), {}):
            written[ev.type] += 1
            sink.event(ev)
        return written

    def refuse(record):
        raise AssertionError("no record here needs an Event")

    slow = text(per_event)
    with monkeypatch.context() as patch:
        if path == "python":
            patch.setattr(native_text, "LIB", None)
        assert text(lambda sink, decoder: sink.probe_records(bytes(chunk), decoder, refuse)) == slow
    assert sum(slow[1]) == len(chunk) // size - 4 == sum(slow[2].values())
