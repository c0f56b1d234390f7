"""Probe events in guest code (tracers/arch/<arch>/fprobe.S, probe_events.S; tracers/probe_events/
program.py; tracers/output/probe_records.py): the events, counters and misses are those of the
Python path (ProbeEventTracer(ring=False), which evaluates each fetcharg in Python against the
snapshot), hit by hit, on both arches; and the guest path runs no Python handler."""

from __future__ import annotations

import struct

import pytest

from helpers import ARCHES
from tracers.builtin.probe import ProbeEventTracer
from tracers.core.fgraph import FGRAPH_MAX_DATA_SIZE, Fgraph
from tracers.core.fprobe import Fprobe, Fprobes
from tracers.core.ftrace import FtraceOps
from tracers.lab import Lab, resolve
from tracers.output.sinks import ListSink

U64 = struct.Struct("<Q")
FIB = ("fib", 9)
CRC = ("crc32_bitwise", 0, b"123456789abcdefgh", 9)
# every fetch the guest compiles: registers, arguments (past the registers too), $retval, $stack,
# $stackN (off the stack: 0), immediates, @SYM, derefs nested three deep, each numeric type and
# symbol, and loads that fault (a NULL deref, below a mapping)
CRC_RETURN = (
    "f:c crc32_bitwise%return r=$retval:x32 b0=+0($arg2):u8 b1=+1($arg2):s8 w=+0($arg2):x16 "
    "d=+0($arg2):u32 q=+0($arg2):x64 s=+2($arg2):s16 a9=$arg9 st=$stack0 sp=$stack far=$stack2047 "
    "bad=+0(+0($arg1)):x64 sym=@fib:x32 sy=$retval:symbol a1=$arg1 a3=$arg3:s32"
)
CRC_ENTRY = (
    "f:d crc32_bitwise c=$arg1 b=$arg2 n=$arg3 a7=$arg7 a8=$arg8 a9=$arg9 s1=$stack1 ret=+0($stack):symbol "
    "deep=+0(+0(+0($stack))):x64 f=+8($arg2):x64 im=\\1234 neg=-8($arg2):u8 z=+0(\\0):u8"
)
CASES = {
    "entry": (["f:a fib $arg1"], FIB),
    "return": (["f:b fib%return $retval $arg1"], FIB),
    "entry+return": (["f:a fib $arg1", "f:b fib%return $retval"], FIB),
    "two-returns": (["f:b fib%return $retval", "f:c fib%return n=$arg1:s8"], FIB),
    "fetches-return": ([CRC_RETURN], CRC),
    "fetches-entry": ([CRC_ENTRY], CRC),
    "fetches-both": ([CRC_ENTRY, CRC_RETURN], CRC),
}


def trace(arch, specs, call, ring=None, setup=None, **lab_options):
    lab = Lab(resolve("funcs", arch)[0], **lab_options)
    sink = ListSink()
    tracer = ProbeEventTracer(lab, sink, specs, ring=ring)
    if setup:
        setup(lab, tracer)
    with tracer:
        lab.call(*call)
    return sink, tracer, lab


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("case", CASES)
def test_guest_events_are_the_python_paths(arch, case):
    specs, call = CASES[case]
    guest, tracer, _ = trace(arch, specs, call)
    python, reference, _ = trace(arch, specs, call, ring=False)
    assert tracer._guest is not None and reference._guest is None
    assert guest.events == python.events
    assert guest.summary == python.summary
    assert guest.events


@pytest.mark.parametrize("arch", ARCHES)
def test_fetches_read_what_the_call_passed(arch):
    """An independent check of a few values: the bytes and length the call passed."""
    sink, _, _ = trace(arch, [CRC_ENTRY, CRC_RETURN], CRC)
    entry, exit_ = ({a.name: v for a, v in ev.fetch} for ev in sink.events)
    stack_at_exit = "sp" in sink.events[1].regs  # x86's return_to_handler saves sp from 6.18
    assert entry["n"] == 9 and entry["im"] == 1234
    assert entry["f"] == int.from_bytes(b"9abcdefg", "little")
    assert entry["neg"] == entry["z"] == "(fault)"  # below the heap's start; address 0
    assert exit_["b0"] == ord("1") and exit_["b1"] == ord("2") and exit_["w"] == int.from_bytes(b"12", "little")
    assert exit_["r"] == 0xCBF43926  # crc32 of "123456789"
    assert exit_["bad"] == "(fault)" and exit_["a9"] == entry["a9"] and exit_["a3"] == 9
    assert exit_["far"] == (0 if stack_at_exit else "(fault)")


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("case", ["entry", "return", "fetches-return", "fetches-entry"])
def test_the_guest_path_runs_no_python_handler(arch, case, monkeypatch):
    """With one ftrace_ops on the site, each hit is guest code from the site to the record."""

    def refuse(*args):
        raise AssertionError("a Python handler ran")

    for name in ("_entry", "_exit", "_save_entry"):
        monkeypatch.setattr(ProbeEventTracer, name, refuse)
    specs, call = CASES[case]
    sink, tracer, _ = trace(arch, specs, call)
    assert tracer._guest is not None and sink.events


@pytest.mark.parametrize("arch", ARCHES)
def test_a_python_ops_on_the_site_keeps_the_order(arch):
    """Another ftrace_ops on the sites sends each hit through the Python dispatch, whose handlers'
    events take their place among the guest's records (the exits stay in guest code)."""

    def add_ops(lab, tracer):
        lab.ftrace.register(FtraceOps(lambda *a: None, name="other"))

    specs, call = CASES["entry+return"]
    guest, tracer, _ = trace(arch, specs, call, setup=add_ops)
    python, _, _ = trace(arch, specs, call, ring=False, setup=add_ops)
    assert tracer._guest is not None
    assert guest.events == python.events and guest.summary == python.summary


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("ring", [None, False], ids=["guest", "python"])
def test_a_return_event_saves_only_the_arguments_it_reads(arch, ring):
    """trace_fprobe_create_internal (25f00e40ce79, v6.10): a return event gets an entry handler and
    entry data only for the $argN it reads, a word each, once each; its exit keeps no other
    argument. On both paths, each exit reads the value its own call's entry saw."""
    specs = ["f:a fib n=$arg1", "f:b fib%return $retval x=$arg1 y=$arg1:s8 z=$arg2", "f:c fib%return $retval"]
    sink, tracer, _ = trace(arch, specs, FIB, ring=ring)
    assert (tracer._guest is not None) == (ring is None)
    a, b, c = tracer._probes
    assert a.exit_handler is None
    assert [tracer.specs[i].entry_args for i in range(3)] == [(), (1, 2), ()]
    assert (b.entry_data_size, c.entry_data_size) == (16, 0)
    assert b.entry_handler is not None and c.entry_handler is None and c.guest_entry is None
    assert (b.guest_entry is not None) == (ring is None)
    calls = []  # the entry's $arg1 of each call still running
    seen = 0
    for ev in sink.events:
        values = {arg.name: v for arg, v in ev.fetch}
        if ev.probe.event == "a":
            calls.append(values["n"])
        elif ev.probe.event == "b":
            assert ev.args is None and values["x"] == values["y"] == calls[-1]
            seen += 1
        else:
            calls.pop()
    assert seen == 109 and not calls


@pytest.mark.parametrize("arch", ARCHES)
def test_exits_whose_data_does_not_fit_are_missed(arch):
    """fgraph_reserve_data refuses more than FGRAPH_MAX_DATA_SIZE bytes: every fprobe on the
    function misses every hit, and no handler runs (each return probe takes a header and a word for
    each of the 8 $argN it reads); an entry-only fprobe runs on fprobe_ftrace_ops (6.19+), apart,
    and sees every hit."""
    n = FGRAPH_MAX_DATA_SIZE // 72 + 1
    eight = " ".join(f"$arg{k}" for k in range(1, 9))
    specs = ["f:a fib $arg1"] + [f"f:r{i} fib%return $retval {eight}" for i in range(n)]
    guest, tracer, _ = trace(arch, specs, FIB)
    python, _, _ = trace(arch, specs, FIB, ring=False)
    assert tracer._guest is not None
    assert guest.events == python.events
    assert {ev.probe.event for ev in guest.events} == {"a"}
    assert guest.summary == python.summary
    assert guest.summary["probes"]["fprobes/r0"] == {"hits": 0, "nmissed": 109}  # fib(9)'s calls


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("room", [0, 3], ids=["no-frame", "no-data"])
def test_a_full_shadow_stack(arch, room):
    """No room for a frame: trace_overrun, nothing runs; room for the frame but not the data: the
    fprobes miss. Each path starts from the same nearly full shadow stack."""

    def fill(lab, tracer):
        lab.fgraph.curr_ret_stack = lab.fgraph.max_offset - lab.fgraph.frame_words - 1 - room

    specs = ["f:a fib $arg1", "f:b fib%return $retval $arg1 $arg2 $arg3 $arg4"]  # data: a header and 4 words
    guest, tracer, glab = trace(arch, specs, FIB, setup=fill)
    python, _, plab = trace(arch, specs, FIB, ring=False, setup=fill)
    assert tracer._guest is not None
    assert guest.events == python.events and guest.summary == python.summary
    assert glab.fgraph.trace_overrun == plab.fgraph.trace_overrun == (109 if room == 0 else 0)
    if room:
        assert guest.summary["probes"]["fprobes/b"]["nmissed"] == 109


@pytest.mark.parametrize("arch", ARCHES)
def test_strings_keep_the_python_path(arch):
    specs = ["f:d crc32_bitwise s=+0($arg2):string"]
    guest, tracer, _ = trace(arch, specs, CRC)
    assert tracer._guest is None
    assert guest.events[0].fetch[0][1] == b"123456789abcdefgh"


@pytest.mark.parametrize("arch", ARCHES)
def test_python_handlers_see_the_same_on_the_guest_dispatch(arch):
    """An fprobe API user's Python handlers, entered from the guest dispatch for the handler alone
    (fgraph's push and pop and fprobe's walk in guest code), see what they see on the Python path
    (a registry without the lab's FprobeCode): the same calls, snapshots, entry data, shadow-stack
    top, skips and nmissed, on a recursion deep enough that some exits' data does not fit."""

    def run(guest: bool):
        lab = Lab(resolve("funcs", arch)[0])
        cores = (lab.ftrace, lab.fgraph, lab.rethook)
        fprobes = Fprobes(*cores, "fgraph", kernel=lab.kernel, code=lab.fprobe_code if guest else None)
        seen = []

        def entry(fp, ip, ret_ip, regs, data):
            n = regs.get_argument(0)
            if data is not None:
                lab.machine.pack(U64, data, n * 3)
            seen.append(("entry", fp.id, ip, ret_ip, regs.fields, lab.fgraph.curr_ret_stack, data is None))
            return n % 3 == 0  # skip some exits

        def exit_(fp, ip, ret_ip, regs, data):
            saved = lab.machine.unpack(U64, data)[0] if data is not None else None
            seen.append(("exit", fp.id, ip, ret_ip, regs.fields, lab.fgraph.curr_ret_stack, saved))

        probes = [Fprobe(entry, exit_, entry_data_size=8 * 12), Fprobe(entry, exit_), Fprobe(entry)]
        for fp in probes:
            fprobes.register(fp, "fib")
        lab.fgraph.curr_ret_stack = 400  # deep in: some calls' data will not fit
        assert lab.call("fib", 12) == 144
        assert (fprobes._guest() is not None) is guest
        return seen, [fp.nmissed for fp in probes], lab.fgraph.trace_overrun

    guest, python = run(True), run(False)
    assert guest == python
    assert guest[1][0] > 0 and len(guest[0]) > 400


@pytest.mark.parametrize("arch", ARCHES)
def test_fprobe_python_handlers_enter_python_once_per_handler(arch, monkeypatch):
    """On the guest dispatch, Python runs for the handlers only: not fgraph's entry or return."""
    for name in ("_entry", "_return"):
        monkeypatch.setattr(Fgraph, name, lambda *a, name=name: pytest.fail(f"fgraph's Python {name} ran"))
    lab = Lab(resolve("funcs", arch)[0])
    fprobes, calls = lab.fprobes(), []
    fprobes.register(Fprobe(lambda *a: calls.append("entry") and 0, lambda *a: calls.append("exit")), "fib")
    assert lab.call("fib", 10) == 55
    assert calls.count("entry") == calls.count("exit") == 177


@pytest.mark.parametrize("arch", ARCHES)
def test_a_buffer_too_small_for_a_record_keeps_the_python_path(arch):
    """--buffer-size 1 holds one of the tracers' records, not a probe event's with its fetches."""
    specs, call = CASES["fetches-both"]
    guest, tracer, _ = trace(arch, specs, call, ring_records=1)
    python, _, _ = trace(arch, specs, call, ring=False)
    assert tracer._guest is None and guest.events == python.events
