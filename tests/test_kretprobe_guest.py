"""r events (kretprobes) in guest code: where the entry kprobe is a kprobe on ftrace (x86_64's
ftrace_regs_caller) and the rethook trampoline has a guest callback (core/rethook_guest.py), the
entry is rethook.S's pre_handler_kretprobe (a node from the pool, or nmissed; the $argN saved into
its data; the return hooked) and the return its rethook_guest_callback (the frame's nodes, the
event's handler writing a kretprobe record, the real return address, the nodes recycled), on the
pools and task list in guest memory that Python shares (core/rethook.py). The events, counters,
hits and misses are those of the Python path (ProbeEventTracer(ring=False)), hit by hit. arm64's
kretprobes take the BRK exception at entry and at __kretprobe_trampoline: its r events keep the
Python path, with the same output; every test runs on both arches and decides by the lab's
capability, never by the arch's name."""

from __future__ import annotations

import pytest

from helpers import ARCHES, TEXT_PATHS, probe_texts
from test_kprobe_guest import CHAIN, CRC, FIB, _inside, guest_and_python, trace
from test_probe_guest import CRC_RETURN
from test_task_state import fault
from tracers.builtin.probe import ProbeEventTracer
from tracers.core.kprobes import Kprobe
from tracers.core.kretprobe import DEFAULT_MAXACTIVE, Kretprobe, Kretprobes
from tracers.core.rethook import RethookCore
from tracers.core.stacktrace import stack_trace
from tracers.lab import Lab
from tracers.output.sinks import ListSink

# crc32_bitwise's every compiled fetch, at a kretprobe's return ($argN saved at entry)
CRC_R = CRC_RETURN.replace("f:c crc32_bitwise%return", "r:c crc32_bitwise")
CASES = {
    "retval": (["r:b fib $retval"], [FIB]),
    "entry-args": (["r:b fib $retval $arg1 n=$arg1:s8 m=$arg2"], [FIB]),
    "maxactive": (["r2:b fib $retval"], [FIB]),
    "percent-return": (["p:b fib%return $retval"], [FIB]),
    "with-p": (["p:a fib $arg1", "r:b fib $retval n=$arg1:s8"], [FIB]),
    "with-f": (
        ["f:a chain_b $arg1", "r:b chain_c $retval x=$arg1", "f:c fib%return $retval", "r:d fib $retval $arg1"],
        [CHAIN, FIB],
    ),
    "two-on-a-site": (["r:a fib $retval", "r3:b fib n=$arg1 $arg2"], [FIB]),
    "fetches": ([CRC_R], [CRC]),
}


def guest_r(lab) -> bool:
    """Whether this lab's r events run in guest code: a kprobe on ftrace for the entry and the
    rethook trampoline's guest callback for the return (x86_64); else (arm64) Python."""
    return lab.ftrace.regs_caller is not None and lab.rethook.code is not None


def kretprobes(tracer) -> list[tuple[int, int]]:
    return [(p.nhit, p.nmissed) for p in tracer._probes if isinstance(p, Kretprobe)]


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("case", CASES)
def test_guest_events_are_the_python_paths(arch, case):
    specs, calls = CASES[case]
    guest, tracer, reference, lab = guest_and_python(arch, specs, calls, guest_r)
    assert kretprobes(tracer) == kretprobes(reference) and all(hits for hits, _ in kretprobes(tracer))
    exits = [ev for ev in guest.events if ev.tracer == "kretprobe"]
    assert exits and all(ev.regs_kind == "pt_regs" and ev.type == "exit" for ev in exits)
    assert lab.rethook.task == []


@pytest.mark.parametrize("arch", ARCHES)
def test_maxactive_misses(arch):
    """r2 on fib(9): fib(9) and fib(8) take the two nodes, fib(8)'s calls all miss; then fib(7),
    whose calls miss too: 3 hooked, 106 missed (the kretprobe's nmissed), on either path."""
    guest, tracer, _ = trace(arch, ["r2:b fib $retval"], [FIB])
    assert guest.summary["probes"]["kprobes/b"] == {"hits": 3, "nmissed": 106}
    assert kretprobes(tracer) == [(3, 106)]


@pytest.mark.parametrize("arch", ARCHES)
def test_kprobe_profile_adds_the_entry_kprobes_misses(arch):
    """A return probe's nmissed in kprobe_profile is its kprobe's plus its kretprobe's
    (probes_profile_seq_show, kernel/trace/trace_kprobe.c, since 5.17): a Python kprobe inside
    crc32_bitwise calls fib(4), whose 9 entries the r event's kprobe misses (kprobe_running()),
    and r2 misses 106 more calls of fib(9) for want of a node, on either path."""

    def nested(lab, tracer):
        def pre(p, regs):
            lab.call("fib", 4)
            return 0

        lab.kprobes.register(Kprobe("crc32_bitwise", _inside(lab, "crc32_bitwise"), pre))

    for ring in (None, False):
        sink, tracer, _ = trace(arch, ["r2:b fib $retval"], [FIB, CRC], ring=ring, setup=nested)
        assert kretprobes(tracer) == [(3, 106)] and tracer._probes[0].ops.nmissed == 9
        assert sink.summary["probes"]["kprobes/b"] == {"hits": 3, "nmissed": 106 + 9}


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("case", ["retval", "entry-args", "fetches", "with-p"])
def test_the_guest_path_runs_no_python_handler(arch, case, monkeypatch):
    """On the guest path no Python runs at an r event's entry or return: not the event's handlers,
    not Kretprobes' entry, not rethook's trampoline handler. arm64 runs them at every hit."""
    ran = []

    def spy(cls, name):
        original = getattr(cls, name)
        monkeypatch.setattr(cls, name, lambda *a: ran.append(name) or original(*a))

    for cls, name in (
        (ProbeEventTracer, "_exit"),
        (ProbeEventTracer, "_save_entry"),
        (Kretprobes, "_entry"),
        (RethookCore, "_handler"),
    ):
        spy(cls, name)
    specs, calls = CASES[case]
    sink, tracer, lab = trace(arch, specs, calls)
    assert sink.events and (not ran) == guest_r(lab) == (tracer._guest is not None)


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("path", TEXT_PATHS)
@pytest.mark.parametrize("case", CASES)
def test_the_text_is_the_python_paths(arch, path, case, monkeypatch):
    """The trace file: on the guest path its lines are written in bulk from the records, kretprobe
    records included, by the C formatter or TextSink.probe_lines; the same text as the Python path's."""
    specs, calls = CASES[case]
    texts, tracer = probe_texts(arch, lambda lab: specs, calls, path, monkeypatch)
    assert (tracer._guest is not None) == guest_r(tracer.lab)
    assert tracer._guest is None or tracer._decoder.kretprobes
    assert texts[0] == texts[1] and texts[0].count("\n           ftlab-1 ") > 0


@pytest.mark.parametrize("arch", ARCHES)
def test_python_and_guest_nodes_share_the_task_list(arch):
    """A Python kretprobe (an API user's) on chain_c unwinds from its return handler through
    chain_b's return, which the r event's guest entry hooked: find_ret_addr finds the guest node in
    the shared list (the real return into chain_a), and each frame returns through its own path:
    chain_c's (a Python node) through Python, chain_b's in guest code."""
    m_traces = []

    def setup(lab, tracer):
        m = lab.machine

        def handler(ri, regs):
            where = (m, lab.karch, regs.instruction_pointer(), regs.frame_pointer())
            names = [m.symbols.lookup(a)[0].name for a in stack_trace(*where, [lab.rethook.find_ret_addr])]
            m_traces.append((names, len(lab.rethook.task)))

        lab.kretprobes().register(Kretprobe("chain_c", handler))

    guest, tracer, lab = trace(arch, ["r:b chain_b $retval x=$arg1"], [CHAIN], setup=setup)
    python, _, _ = trace(arch, ["r:b chain_b $retval x=$arg1"], [CHAIN], ring=False, setup=setup)
    assert (tracer._guest is not None) == guest_r(lab)
    assert guest.events == python.events and guest.summary == python.summary and len(guest.events) == 1
    # chain_c from chain_b (chain_b's node and its own hooked), then chain_c from chain_a
    assert m_traces[:2] == [(["chain_b", "chain_a", "ftlab_caller"], 2), (["chain_a", "ftlab_caller"], 1)]
    assert m_traces[:2] == m_traces[2:] and lab.rethook.task == []


@pytest.mark.parametrize("arch", ARCHES)
def test_an_abandoned_call_recycles_the_guest_nodes(arch):
    """rethook_flush_task: calls that fault inside the probed function never return; their nodes,
    hooked by the guest entry, go back to the pool, and later returns are hooked as before."""
    spec = ["r:b popcount_buf $retval"]

    def run(ring):
        lab = Lab.open("funcs", arch)
        sink = ListSink()
        with ProbeEventTracer(lab, sink, spec, ring=ring) as tracer:
            fault(lab, DEFAULT_MAXACTIVE + 5)
            assert lab.rethook.task == []
            assert len(tracer._probes[0].rethook.free) == DEFAULT_MAXACTIVE
            for _ in range(3):
                assert lab.call("popcount_buf", b"\x0f\xff\x01", 3) == 13
        return sink, tracer, lab

    guest, tracer, lab = run(None)
    python, _, _ = run(False)
    assert (tracer._guest is not None) == guest_r(lab)
    assert guest.events == python.events and guest.summary == python.summary
    assert [ev.retval for ev in guest.events] == [13] * 3
    assert kretprobes(tracer) == [(DEFAULT_MAXACTIVE + 5 + 3, 0)]


@pytest.mark.parametrize("arch", ARCHES)
def test_verify_at_the_trampoline_takes_python(arch, monkeypatch):
    """Verify mode holding the rethook trampoline (its truth is read in Python): the guest callback
    leaves every return to Python's handler, whose events (with their verification) take their
    places among the records; the entries stay in guest code."""
    exits = []
    original = ProbeEventTracer._exit
    monkeypatch.setattr(ProbeEventTracer, "_exit", lambda *a: exits.append(1) or original(*a))

    def setup(lab, tracer):
        lab.verify.acquire(lab.rethook)

    specs = ["p:a fib $arg1", "r:b fib $retval $arg1"]
    guest, tracer, lab = trace(arch, specs, [FIB], setup=setup)
    python, _, _ = trace(arch, specs, [FIB], ring=False, setup=setup)
    assert (tracer._guest is not None) == guest_r(lab)
    assert guest.events == python.events and guest.summary == python.summary
    assert all(ev.verification is not None for ev in guest.events if ev.tracer == "kretprobe")
    assert len(exits) == 109 * 2


def test_a_trampoline_without_the_guest_word_keeps_python(tmp_path):
    """A user's rethook trampoline (docs/trampolines.md) copied from a lab without the guest
    callback (no callback_guest word: its stub calls the lab's hook at every return): the r events
    keep the Python path, with the same events."""
    lab_file = Lab.open("funcs", "x86_64").karch.source_path("rethook_trampoline.S").read_text()
    stub = lab_file.index("    call qword ptr [rip+callback_guest]")
    old = lab_file[:stub] + lab_file[lab_file.index("    mov rax, [rip+callback_args]") :]
    old = old[: old.index("callback_guest:")].replace("rethook_callback_done:\n    ret\n", "")
    own = tmp_path / "rethook_trampoline.S"
    own.write_text(old)
    specs, calls = CASES["entry-args"]
    lab = Lab.open("funcs", "x86_64", trampolines={"arch_rethook_trampoline": own})
    sink = ListSink()
    with ProbeEventTracer(lab, sink, specs) as tracer:
        for call in calls:
            lab.call(*call)
    python, _, _ = trace("x86_64", specs, calls, ring=False)
    assert lab.rethook.code is None and tracer._guest is None
    assert sink.events == python.events and sink.summary == python.summary


@pytest.mark.parametrize("arch", ARCHES)
def test_a_python_kretprobe_on_the_same_function(arch):
    """A Python kretprobe on the r event's function: the kprobe point has a Python probe, so every
    entry takes Python (Kprobes' point is guest only when all its probes are), and each frame holds
    a guest node and a Python one, so every return takes Python's handler too; the events and
    counts are the Python path's."""
    returns = []

    def setup(lab, tracer):
        lab.kretprobes().register(Kretprobe("fib", lambda ri, regs: returns.append(regs.regs_return_value())))

    guest, tracer, lab = trace(arch, ["r4:b fib $retval $arg1"], [FIB], setup=setup)
    python, reference, _ = trace(arch, ["r4:b fib $retval $arg1"], [FIB], ring=False, setup=setup)
    assert (tracer._guest is not None) == guest_r(lab)
    assert guest.events == python.events and guest.summary == python.summary
    assert kretprobes(tracer) == kretprobes(reference) == [(15, 94)] and len(returns) == 2 * 109


@pytest.mark.parametrize("arch", ARCHES)
def test_a_return_pending_at_unregister_runs_no_handler(arch):
    """unregister_kretprobes' rethook_free (kernel/trace/rethook.c): chain_a's return, hooked
    before its kretprobe went (a kprobe in chain_c, which chain_a reaches twice, unregisters it),
    runs no handler and still returns where it should; chain_c's kretprobe runs at each return."""
    expected = Lab.open("funcs", arch).call("chain_a", 7)
    lab = Lab.open("funcs", arch)
    kretprobes, seen = lab.kretprobes(), []
    outer = Kretprobe("chain_a", lambda ri, regs: seen.append("chain_a"))
    kretprobes.register(outer)
    kretprobes.register(Kretprobe("chain_c", lambda ri, regs: seen.append("chain_c")))

    def pre(p, regs):
        if outer in kretprobes.probes:
            kretprobes.unregister(outer)
        return 0

    lab.kprobes.register(Kprobe("chain_c", _inside(lab, "chain_c"), pre))
    assert lab.call("chain_a", 7) == expected
    assert seen == ["chain_c", "chain_c"] and outer.nhit == 1 and lab.rethook.task == []
