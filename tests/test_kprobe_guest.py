"""p events at a function's ftrace site in guest code: x86_64's KPROBES_ON_FTRACE, where the kprobe
is an ftrace_ops on ftrace_regs_caller's full pt_regs (tracers/arch/x86_64/kprobe_ftrace.S's
kprobe_ftrace_handler, core/kprobe_guest.py) and the event's pre_handler is guest code
(probe_events.S's kprobe handler, a kprobe record). The events, counters, hits and misses are those
of the Python path (ProbeEventTracer(ring=False): core/kprobes.py's _ftrace_hit and the Python
pre_handler), hit by hit. arm64 has no ftrace_regs_caller since 6.2: its `p SYM` takes the BRK
exception and keeps the Python path, with the same output; every test runs on both arches and
decides by the lab's capability (ftrace.regs_caller), never by the arch's name."""

from __future__ import annotations

from dataclasses import replace

import pytest

from helpers import ARCHES, TEXT_PATHS, probe_texts
from tracers.builtin.probe import ProbeEventTracer
from tracers.core.kprobes import Kprobe
from tracers.lab import Lab
from tracers.output.sinks import ListSink

FIB = ("fib", 9)
CRC = ("crc32_bitwise", 0, b"123456789abcdefgh", 9)
SUM10 = ("sum10", *range(1, 11))
CHAIN = ("chain_a", 7)
# each p spec in the arch's own register names ({a0}, {a1}: the first arguments; {sp}, {pc})
CASES = {
    "argument": (["p:a fib $arg1"], [FIB]),
    "registers": (["p:r fib a=%{a0} b=%{a1}:s32 s=%{sp} ip=%{pc}:symbol n=$arg1:u8"], [FIB]),
    # $argN past the registers (x86: the stack above the return address; arm64: 0 past x7), $stack,
    # $stackN, one off the stack (0), the return address as a symbol
    "stack": (
        [
            (
                "p:s sum10 a1=$arg1 a6=$arg6 a7=$arg7 a10=$arg10 st=$stack0 s1=$stack1 far=$stack2047 sp=$stack "
                "ret=+0($stack):symbol"
            )
        ],
        [SUM10],
    ),
    # derefs of each width and sign, nested, immediates, @SYM, and loads that fault
    "derefs": (
        [
            (
                "p:d crc32_bitwise b0=+0($arg2):u8 b1=+1($arg2):s8 w=+0($arg2):x16 q=+8($arg2):x64 s=+2($arg2):s16 "
                "bad=+0(+0($arg1)):x64 neg=-8($arg2):u8 z=+0(\\0):u8 sym=@fib:x32 deep=+0(+0(+0($stack))):x64 "
                "im=\\1234 f=@fib:symbol n=$arg3:s32"
            )
        ],
        [CRC],
    ),
    "two-on-a-site": (["p:a fib $arg1", "p:b fib n=$arg1:s8 r=+0($stack):symbol"], [FIB]),
    # with f events: their own sites (an f entry at a p event's site would make its snapshot
    # ftrace_regs_caller's, which the entry record does not hold: that trace keeps the Python path)
    "with-f-events": (
        ["p:a chain_a x=$arg1", "f:b chain_b y=$arg1", "f:c chain_c%return $retval", "p:d chain_c z=$arg1:s32"],
        [CHAIN, CHAIN],
    ),
    "with-an-f-return": (["p:a fib $arg1", "f:b fib%return $retval n=$arg1"], [FIB]),
}


def specs_of(lab, specs: list[str]) -> list[str]:
    cpu = lab.karch.cpu
    return [s.format(a0=cpu.arg_regs[0], a1=cpu.arg_regs[1], sp=cpu.sp, pc=cpu.pc) for s in specs]


def trace(arch, specs, calls, ring=None, setup=None, variant="funcs", sink=None):
    lab = Lab.open(variant, arch)
    sink = sink or ListSink()
    tracer = ProbeEventTracer(lab, sink, specs_of(lab, specs), ring=ring)
    if setup:
        setup(lab, tracer)
    with tracer:
        for call in calls:
            lab.call(*call)
    return sink, tracer, lab


def scratch_scrubbed(lab, events, specs):
    """The events, where the trace has f events too, without the snapshot registers a site's call
    may clobber (x86: r10, r11): those hold what the tracing code that ran before left there (the
    kernel's ftrace_caller restores neither, ftrace_regs_caller not r11; arch/x86/kernel/ftrace_64.S),
    which is guest code on one path (fprobe.S, probe_events.S) and the lab's Python on the other.
    A trace of p events alone leaves them as they were on both paths (kprobe_ftrace.S keeps r11)."""
    if not any(s.startswith("f") for s in specs):
        return events
    clobbers = set(lab.karch.sites.clobbers)
    return [
        replace(ev, regs={k: v for k, v in ev.regs.items() if k not in clobbers}) if ev.regs else ev for ev in events
    ]


def on_ftrace(lab) -> bool:
    """Whether this lab's p SYM is a kprobe on ftrace (x86_64's ftrace_regs_caller), which the
    guest path handles; else (arm64) the BRK exception's, in Python."""
    return lab.ftrace.regs_caller is not None


def guest_and_python(arch, specs, calls, on_guest):
    """The trace on the lab's path for it and on the Python path (ring=False): the same events
    (the scratch registers aside) and summary, the first on the guest path where on_guest(lab)."""
    guest, tracer, lab = trace(arch, specs, calls)
    python, reference, _ = trace(arch, specs, calls, ring=False)
    assert (tracer._guest is not None) == on_guest(lab) and reference._guest is None
    assert scratch_scrubbed(lab, guest.events, specs) == scratch_scrubbed(lab, python.events, specs)
    assert guest.summary == python.summary
    return guest, tracer, reference, lab


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("case", CASES)
def test_guest_events_are_the_python_paths(arch, case):
    specs, calls = CASES[case]
    guest, tracer, reference, _ = guest_and_python(arch, specs, calls, on_ftrace)
    assert {ev.tracer for ev in guest.events} >= {"kprobe"}
    for ev in guest.events:
        if ev.tracer == "kprobe":
            assert ev.regs_kind == "pt_regs" and ev.type == "entry"
    # each Kprobe's nhit and nmissed, counted in guest memory or in Python, are the same
    kprobes = [(p.nhit, p.nmissed) for p in tracer._probes if isinstance(p, Kprobe)]
    assert kprobes == [(p.nhit, p.nmissed) for p in reference._probes if isinstance(p, Kprobe)]
    assert all(hits for hits, _ in kprobes)


@pytest.mark.parametrize("arch", ARCHES)
def test_fetches_read_what_the_call_passed(arch):
    """An independent check of a few values on either path: the arguments past the registers,
    the bytes the call passed, the faults."""
    sink, _, lab = trace(arch, CASES["stack"][0], [SUM10])
    values = {a.name: v for a, v in sink.events[0].fetch}
    assert values["a1"] == 1 and values["a6"] == 6 and values["a7"] == 7
    # regs_get_kernel_argument: x86 reads the stack above the return address, arm64 0 past x7
    assert values["a10"] == (10 if lab.karch.ftrace_regs_stack_args else 0)
    assert values["far"] == 0  # regs_get_kernel_stack_nth: off the task's stack
    sink, _, _ = trace(arch, CASES["derefs"][0], [CRC])
    values = {a.name: v for a, v in sink.events[0].fetch}
    assert values["b0"] == ord("1") and values["b1"] == ord("2") and values["n"] == 9 and values["im"] == 1234
    assert values["q"] == int.from_bytes(b"9abcdefg", "little")
    assert values["bad"] == values["neg"] == values["z"] == "(fault)"


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("case", ["argument", "derefs", "two-on-a-site"])
def test_the_guest_path_runs_no_python_handler(arch, case, monkeypatch):
    """On a kprobe on ftrace, each hit is guest code from the site to the record; arm64's BRK
    kprobe runs the Python pre_handler at each hit."""
    ran = []
    entry = ProbeEventTracer._entry
    monkeypatch.setattr(ProbeEventTracer, "_entry", lambda *a: ran.append(1) or entry(*a))
    specs, calls = CASES[case]
    sink, tracer, lab = trace(arch, specs, calls)
    assert sink.events and (not ran) == on_ftrace(lab) == (tracer._guest is not None)
    if on_ftrace(lab):
        assert lab.kprobes.code is not None and lab.kprobes.code.current == 0


@pytest.mark.parametrize("arch", ARCHES)
def test_the_ip_a_pre_handler_sees(arch):
    """kprobe_ftrace_handler: the pre_handler sees regs->ip = the probe + 1 (x86's int3 size, as if
    the breakpoint had hit; arm64's BRK: the probe itself), the record's ip is the probe address
    (kprobe_trace_func: entry->ip = tk->rp.kp.addr); a post_handler sees the ip after the 5-byte
    NOP (MCOUNT_INSN_SIZE) on ftrace, after the stepped instruction on a breakpoint; then the
    function goes on at its original ip (its result is right). A Python kprobe with a post_handler
    on the same address makes the point Python's (only Python runs post handlers): the p event's
    Python pre_handler runs there, its events in their place."""
    seen = []
    guest, tracer, lab = trace(arch, ["p:a fib ip=%{pc} n=$arg1"], [FIB])
    addr = tracer._probes[0].addr
    trap = lab.kprobes.ops.TRAP_IP_OFFSET
    assert {ev.ip for ev in guest.events} == {addr}
    assert {ev.regs[lab.karch.cpu.pc] for ev in guest.events} == {addr + trap}
    assert {v for ev in guest.events for a, v in ev.fetch if a.name == "ip"} == {addr + trap}

    lab = Lab.open("funcs", arch)
    tracer = ProbeEventTracer(lab, ListSink(), ["p:a fib n=$arg1"])
    p = Kprobe(
        "fib",
        0,
        lambda p, regs: seen.append(("pre", regs.instruction_pointer())) and 0,
        lambda p, regs, flags: seen.append(("post", regs.instruction_pointer())),
    )
    with tracer:
        lab.kprobes.register(p)
        assert lab.call(*FIB) == 34
        point = lab.kprobes.points[p.addr]
        lab.kprobes.unregister(p)
    step = lab.karch.sites.size if point.how == "ftrace" else point.insn.size
    assert point.how == ("ftrace" if on_ftrace(lab) else "xol")
    assert set(seen) == {("pre", p.addr + trap), ("post", p.addr + step)}
    assert len(tracer.sink.events) == 109 and tracer.probe_counts()["kprobes/a"] == {"hits": 109, "nmissed": 0}
    assert p.nhit == 109 and not lab.kprobes.kprobe_running()


def _inside(lab, name: str) -> int:
    """The offset of the instruction after the function's ftrace site: a breakpoint kprobe."""
    site = lab.ftrace.site(name)
    return site.ip + site.encoding.size - site.func.addr


@pytest.mark.parametrize("arch", ARCHES)
def test_a_hit_while_a_python_kprobe_runs_is_missed(arch):
    """kprobe_running(): a Python kprobe's pre_handler (a breakpoint in crc32_bitwise) calls
    fib(4), whose 9 hits of the p event's kprobe are missed (kprobes_inc_nmissed_count) and record
    nothing, on the guest path as on the Python one: current_kprobe is one word both test."""

    def nested(lab, tracer):
        def pre(p, regs):
            assert lab.kprobes.kprobe_running()
            if lab.kprobes.code is not None:
                assert lab.kprobes.code.current == p.addr  # the guest's word says so
            lab.call("fib", 4)
            return 0

        lab.kprobes.register(Kprobe("crc32_bitwise", _inside(lab, "crc32_bitwise"), pre))

    calls = [FIB, CRC, FIB]
    guest, tracer, lab = trace(arch, ["p:a fib $arg1"], calls, setup=nested)
    python, _, _ = trace(arch, ["p:a fib $arg1"], calls, ring=False, setup=nested)
    assert (tracer._guest is not None) == on_ftrace(lab)
    assert guest.events == python.events and guest.summary == python.summary
    assert guest.summary["probes"]["kprobes/a"] == {"hits": 218, "nmissed": 9}
    kp = tracer._probes[0]
    assert (kp.nhit, kp.nmissed) == (218, 9)
    if on_ftrace(lab):  # counted by the guest kprobe_ftrace_handler, in guest memory
        assert lab.kprobes.code.counts(kp._desc) == (218, 9) and (kp._hits, kp._missed) == (0, 0)


@pytest.mark.parametrize("arch", ARCHES)
def test_a_python_kprobe_hit_while_a_guest_one_runs_is_missed(arch):
    """The other direction: while the guest kprobe_ftrace_handler has current_kprobe set (as it is
    while its pre_handlers run; they call no traced code, so a hit can only come from elsewhere),
    a Python kprobe's hit is reentered: counted in its nmissed and stepped, no handler run. On arm64
    no guest handler is loaded."""
    lab = Lab.open("funcs", arch)
    ran = []
    p = Kprobe("chain_c", _inside(lab, "chain_c"), lambda p, regs: ran.append(1) or 0)
    with ProbeEventTracer(lab, ListSink(), ["p:a fib $arg1"]) as tracer:
        lab.kprobes.register(p)
        code = lab.kprobes.code
        assert (code is not None) == on_ftrace(lab) == (tracer._guest is not None)
        if code is not None:
            code.current = tracer._probes[0].addr  # a guest handler in progress
            lab.call("chain_c", 3)
            assert (p.nmissed, p.nhit, ran) == (1, 0, [])
            assert code.current == tracer._probes[0].addr  # left as the guest had it
            code.current = 0
        lab.call("chain_c", 3)
        lab.kprobes.unregister(p)
    assert ran == [1] and p.nhit == 1


@pytest.mark.parametrize("arch,variant", [("x86_64", "funcs-endbr"), ("arm64", "funcs-bti")])
@pytest.mark.parametrize("offset", ["", "+4"])
def test_p_sym_after_a_landing_pad(arch, variant, offset):
    """_kprobe_addr's on_func_entry: x86 moves `p SYM` past an ENDBR to the fentry site (a kprobe
    on ftrace, guest code); `p SYM+4` is that same site. arm64's BTI landing pad: `p SYM` is a
    breakpoint (Python), as is `p SYM+4` (the MOV X9, LR before the patchable NOP), and the events
    are the Python path's."""
    specs = [f"p:a fib{offset} n=%{{a0}} s=$stack0"]  # $argN: only at the entry, which arm64 does not move
    guest, tracer, lab = trace(arch, specs, [FIB], variant=variant)
    python, _, _ = trace(arch, specs, [FIB], ring=False, variant=variant)
    assert guest.events == python.events and guest.summary == python.summary and len(guest.events) == 109
    site = lab.ftrace.site("fib")
    assert (tracer._guest is not None) == (on_ftrace(lab) and tracer._probes[0].addr == site.ip)
    assert (guest.events[0].parent_ip is None) == bool(offset)  # the caller only at offset 0


@pytest.mark.parametrize("arch", ARCHES)
def test_a_p_event_off_the_ftrace_site_keeps_the_python_path(arch):
    """A breakpoint kprobe (inside the function, or at its entry on a -pg build whose site comes
    after the prologue) keeps the whole trace on the Python path, the f events' too."""
    lab = Lab.open("funcs", arch)
    specs = [f"p:a fib+{_inside(lab, 'fib')} n=%{lab.karch.cpu.arg_regs[0]}", "f:b chain_b $arg1"]
    sink, tracer, _ = trace(arch, specs, [FIB, CHAIN])
    assert tracer._guest is None and len(sink.events) == 109 + 1
    sink, tracer, _ = trace(arch, ["p:a fib n=$arg1"], [FIB], variant="funcs-mcount")
    assert tracer._guest is None and len(sink.events) == 109


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("path", TEXT_PATHS)
@pytest.mark.parametrize("case", CASES)
def test_the_text_is_the_python_paths(arch, path, case, monkeypatch):
    """The trace file: on the guest path its lines are written in bulk from the records, kprobe
    records included, by the C formatter or TextSink.probe_lines; the same text as the Python path's."""
    specs, calls = CASES[case]
    texts, tracer = probe_texts(arch, lambda lab: specs_of(lab, specs), calls, path, monkeypatch)
    assert (tracer._guest is not None) == on_ftrace(tracer.lab)
    assert tracer._guest is None or (tracer._bulk is not None and tracer._decoder.kprobes)
    assert texts[0] == texts[1] and texts[0].count("\n           ftlab-1 ") > 0


@pytest.mark.parametrize("arch", ARCHES)
def test_the_python_kprobe_on_ftrace_takes_the_recursion_lock(arch):
    """kprobe_ftrace_handler's ftrace_test_recursion_trylock(): with the normal-context bit and its
    transition bit both held (a handler nested twice), the Python kprobe on ftrace returns at once,
    counting nothing (recorded in recursed_functions); arm64's BRK kprobe takes no such lock."""
    lab = Lab.open("funcs", arch)
    ran = []
    p = Kprobe("fib", 0, lambda p, regs: ran.append(1) or 0)
    lab.kprobes.register(p)
    recursion = lab.ftrace.recursion
    held = 1 << recursion.FTRACE_START + recursion.CTX_NORMAL | 1 << recursion.FTRACE_START + recursion.CTX_TRANSITION
    recursion.val = held
    assert lab.call("fib", 1) == 1
    recursion.val = 0
    refused = lab.kprobes.points[p.addr].how == "ftrace"
    assert refused == on_ftrace(lab)
    assert (ran, p.nhit, p.nmissed) == (([], 0, 0) if refused else ([1], 1, 0))
    assert (p.addr in recursion.recursed_functions) == refused
    lab.call("fib", 1)
    assert len(ran) == 1 + (not refused)
