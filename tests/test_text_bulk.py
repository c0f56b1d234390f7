"""The function and function_graph tracers' text written in bulk, from their records' columns in
Python (TextSink.entries, GraphTextSink.columns) and in C (TextSink.records, GraphTextSink.records,
native/textlines.c), is the text their per-event paths write for the same records (through the
decoder's Events), uncommitted records skipped by all three."""

import io
import struct

import pytest

from emulator import FtlabError
from helpers import ARCHES
from tracers import Lab
from tracers.builtin.function import FunctionTracer
from tracers.builtin.function_graph import FunctionGraphTracer
from tracers.builtin.probe import ProbeEventTracer
from tracers.kernel_version import MODELLED, KernelVersion
from tracers.output import native_text
from tracers.output.decode import FunctionDecoder, GraphDecoder
from tracers.output.formats import bulk_writer
from tracers.output.records import REC_ENTRY, REC_EXIT, REC_UNCOMMITTED
from tracers.output.sinks import CountSink, GraphTextSink, TextSink

needs_c = pytest.mark.skipif(native_text.LIB is None, reason="the native text formatter was not built (no C compiler)")


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
            assert sink.records(chunk, decoder) == {"entry": len(records) // size - 1}

        assert text(lab, in_c) == slow


@needs_c
def test_a_library_built_from_an_older_textlines_is_not_used(monkeypatch):
    """Its structs differ: the lab writes the lines in Python, not from a misread layout."""
    assert native_text._library() is not None
    monkeypatch.setattr(native_text, "ABI", native_text.ABI + 1)
    assert native_text._library() is None


@needs_c
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


# -- function_graph ---------------------------------------------------------------------------

# recursion with leaves (fib), nested calls (chain_a), tail calls (tail_a: an exit that is not its
# entry's), an error code returned (fib(-22): decimal), a struct and negative values
GRAPH_CALLS = (("fib", 7), ("chain_a", 5), ("tail_a", 3), ("fib", -22), ("divmod", 17, 5), ("mix_flags", -3, 5))
OLD_RETVAL = KernelVersion(6, 12)  # funcgraph-retval's `/* = 0x31 */`, before `ret=`


def graph_recorded(arch, kernel=MODELLED, clock="counter", calls=GRAPH_CALLS, **lab_options):
    """function_graph's raw records of the calls, chunk by chunk as the ring buffer hands them out
    (a held entry crosses chunks where the buffer is small); an error stops the calls."""
    lab = Lab.open("funcs", arch, kernel=kernel, **lab_options)
    chunks: list[bytes] = []
    tracer = FunctionGraphTracer(lab, CountSink(), clock=clock, consumer=chunks.append)
    assert tracer.ring
    try:
        with tracer:
            for func, *args in calls:
                lab.call(func, *args)
    except FtlabError:
        pass
    return lab, chunks, dict(tracer.ring_losses)


def graph_text(lab, chunks, write, clock="counter", **options) -> tuple[str, dict]:
    """The trace file of the chunks through write(sink, decoder, chunk) -> counts by type."""
    out = io.StringIO()
    sink = GraphTextSink(out, lab.machine.symbols, kernel=lab.kernel, model="# model\n", **options)
    decoder = GraphDecoder(lab.karch, lab.kernel, lab.ftrace.uncaptured())
    sink.begin("function_graph", clock)
    counts = {"entry": 0, "exit": 0}
    for chunk in chunks:
        for kind, n in write(sink, decoder, chunk).items():
            counts[kind] += n
    sink.end({"counters": {"entries": counts["entry"], "exits": counts["exit"]}})
    return out.getvalue(), counts


def per_event(sink, decoder, chunk) -> dict:
    counts = {"entry": 0, "exit": 0}
    for ev in decoder.events(chunk):
        counts[ev.type] += 1
        sink.event(ev)
    return counts


def in_python(sink, decoder, chunk) -> dict:
    return sink.columns(*decoder.columns(chunk))


def in_c(sink, decoder, chunk) -> dict:
    return sink.records(chunk, decoder)


BULK = [in_python, pytest.param(in_c, marks=needs_c)]
OPTIONS = {
    "plain": {},
    "retval": {"retval": True},
    "tail": {"tail": True},
    "retval-tail": {"retval": True, "tail": True},
}


def assert_same_graph(lab, chunks, bulk, clock="counter", **options) -> str:
    slow, slow_counts = graph_text(lab, chunks, per_event, clock, **options)
    fast, fast_counts = graph_text(lab, chunks, bulk, clock, **options)
    assert fast == slow and fast_counts == slow_counts
    return slow


@pytest.mark.parametrize("bulk", BULK)
@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_bulk_graph_lines_are_the_per_event_lines(arch, bulk, options):
    lab, chunks, _ = graph_recorded(arch)
    text = assert_same_graph(lab, chunks, bulk, **options)
    # what the fixtures hold: leaves, nested calls, a closing brace, an error code
    assert "|  fib();" in text and "|    chain_b() {" in text and "|      chain_c();" in text and "|  }" in text
    if options.get("retval"):
        assert "/* ret=-22 */" in text
    elif options.get("tail"):
        assert "} /* fib */" in text


@pytest.mark.parametrize("bulk", BULK)
def test_bulk_graph_lines_across_many_chunks_and_an_older_release(arch, bulk):
    """A small buffer drained often (held entries crossing chunks); a release before `ret=`."""
    lab, chunks, _ = graph_recorded(arch, kernel=OLD_RETVAL, ring_records=7)
    assert len(chunks) > 10
    assert "/* = -22 */" in assert_same_graph(lab, chunks, bulk, retval=True)


@pytest.mark.parametrize("bulk", BULK)
@pytest.mark.parametrize("mode", ["overwrite", "drop"])
def test_bulk_graph_lines_of_a_buffer_that_filled(arch, bulk, mode):
    """No reader: overwrite keeps the newest records (exits whose entries were overwritten first),
    drop the oldest (entries whose exits were refused)."""
    lab = Lab.open("funcs", arch, ring_records=40)
    chunks: list[bytes] = []
    tracer = FunctionGraphTracer(lab, CountSink(), buffer_mode=mode, consumer=chunks.append)
    with tracer:
        lab.call("fib", 8)
    assert tracer.ring_losses and len(chunks) == (2 if mode == "overwrite" else 1)
    assert_same_graph(lab, chunks, bulk, retval=True)


@pytest.mark.parametrize("bulk", BULK)
def test_bulk_graph_lines_of_a_run_an_error_stopped(arch, bulk):
    """The budget runs out mid-trace: entries with no exit, and maybe a record never committed."""
    lab, chunks, _ = graph_recorded(arch, calls=(("fib", 12),), budget=3000)
    text = assert_same_graph(lab, chunks, bulk, tail=True)
    assert text.splitlines()[-2].endswith("fib() {")  # the call still open when it stopped


@pytest.mark.parametrize("bulk", BULK)
def test_bulk_graph_lines_with_uncommitted_records_and_the_insns_clock(arch, bulk):
    """Durations in instructions (the `insn` unit, long enough for the `+` and `!` marks) and
    records never committed in the middle of the chunk, which every path skips."""
    lab, chunks, _ = graph_recorded(arch, clock="insns", calls=(("fib", 15), ("chain_a", 2)))
    size = GraphDecoder(lab.karch, lab.kernel).rec.size
    chunk = bytearray(b"".join(chunks))
    for i in (3, 4, 10):
        chunk[i * size : i * size + 8] = REC_UNCOMMITTED.to_bytes(8, "little")
    text = assert_same_graph(lab, [bytes(chunk)], bulk, clock="insns", retval=True)
    assert " insn " in text and "+ " in text and "! " in text


def synthetic(lab, records) -> bytes:
    """Records made up word by word: (type, ts, ip, depth, retval, calltime) each."""
    decoder = GraphDecoder(lab.karch, lab.kernel)
    words = decoder.rec.size // 8
    chunk = b""
    for kind, ts, ip, depth, retval, calltime in records:
        row = [kind, ts, ip, 0, depth] + [0] * (words - 5)
        if kind != REC_ENTRY:
            row[decoder.ret_word], row[decoder.calltime_word] = retval, calltime
        chunk += struct.pack(f"<{words}Q", *row)
    return chunk


@pytest.mark.parametrize("bulk", BULK)
def test_bulk_graph_lines_of_made_up_records(arch, bulk):
    """Every duration mark ($ > 1e9 ... + > 1e4, the limits themselves unmarked), durations wider
    than their column, a clock running backwards, 32-bit error codes and the hex around them, a
    function with no symbol, indents wider than a line's first room, an exit of an unknown type
    read as an exit, an exit of the held entry's function at another depth (not its leaf)."""
    lab = Lab.open("funcs", arch)
    fib, chain = lab.machine.address_of("fib"), lab.machine.address_of("chain_a")
    records = []
    durations = (10**10, 10**9 + 1, 10**9, 10**8 + 1, 10**7 + 1, 10**6 + 1, 10**5 + 1, 10**4 + 1, 10**4, 5, 0)
    retvals = (0, 1, 0xFFFFFFFF, 0xFFFFF001, 0xFFFFF000, (1 << 64) - 4095, (1 << 64) - 4096, 1 << 63, 0x80000000, 7)
    for i, (duration, retval) in enumerate(zip(durations, retvals, strict=False)):
        ts = 2 * 10**10 + i
        records += [(REC_ENTRY, ts - duration, fib, i % 3, 0, 0), (REC_EXIT, ts, fib, i % 3, retval, ts - duration)]
    records += [
        (REC_ENTRY, 5, chain, 40, 0, 0),
        (REC_ENTRY, 6, 0x10, 41, 0, 0),  # no symbol: the bare address
        (REC_EXIT, 7, 0x10, 41, 1, 9),  # calltime after the exit
        (REC_EXIT, 1, 0x10, 41, 1, (1 << 64) - 1),  # ... by more than an int64 holds
        (7, 8, chain, 40, 2, 5),  # unknown type: GraphDecoder reads an exit
        (REC_EXIT, 9, fib, 0, (1 << 64) - 1, 1),
        (REC_ENTRY, 10, fib, 5, 0, 0),
        (REC_EXIT, 11, fib, 4, 3, 2),  # the same function one level up: no leaf
        (REC_ENTRY, 12, fib, 3, 0, 0),  # held at the end
    ]
    chunk = synthetic(lab, records)
    # lines wider than the C formatter first allows for (its room grows): the held entry crosses
    # into this chunk and is opened at depth 3 before them
    deep = synthetic(lab, [(REC_ENTRY, 20, chain, 1000, 0, 0), (REC_EXIT, 21, chain, 1000, 4, 20)] * 2)
    for options in OPTIONS.values():
        text = assert_same_graph(lab, [chunk, deep], bulk, **options)
    for mark in "$@*#!+":
        assert f"| {mark} " not in text and f" {mark} " in text
    assert "0x10();" in text and "-2 ev" in text and f"{2 - (1 << 64)} ev" in text and "/* fib ret=-1 */" in text


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("c", [pytest.param(True, marks=needs_c), False], ids=["c", "python"])
def test_bulk_graph_trace_with_probe_events_mixed_in(arch, c, monkeypatch):
    """A live trace with probe events in the tracer's buffer: the graph's records in bulk between
    the events' comments (the held entry passed between the two paths) is the trace of an Event each."""
    if not c:
        monkeypatch.setattr(native_text, "LIB", None)

    def trace(bulk: bool) -> str:
        lab = Lab.open("funcs", arch, ring_records=16)
        out = io.StringIO()
        sink = GraphTextSink(out, lab.machine.symbols, retval=True, kernel=lab.kernel)
        tracer = FunctionGraphTracer(lab, sink)
        if not bulk:
            tracer._bulk = None
        specs = ["f:fibin fib n=$arg1:s64", "f:fibout fib%return r=$retval:s64", "f:cin chain_c x=$arg1:s64"]
        tracer.add_events(ProbeEventTracer(lab, sink, specs))
        with tracer:
            lab.call("fib", 5)
            lab.call("chain_a", 4)
        return out.getvalue()

    text = trace(bulk=True)
    assert text == trace(bulk=False) and "/* fibout: (" in text and "/* cin: (" in text


def test_funcgraph_args_keeps_an_event_each(lab):
    """funcgraph-args' items need the entry's Event: no bulk writer for that trace."""
    decoder = GraphDecoder(lab.karch, lab.kernel)
    with_args = GraphTextSink(io.StringIO(), lab.machine.symbols, args=lambda name, ev: [])
    assert bulk_writer(decoder, with_args) is None
    assert bulk_writer(decoder, GraphTextSink(io.StringIO(), lab.machine.symbols)) is not None
