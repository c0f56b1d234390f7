"""Batched fprobes (tracers/core/fprobe_batch.py, issue #16): Python handlers that only observe,
called from ring-buffer records the hits wrote. Each is held to the live handlers (batched=False)
on the same calls, an independent reference: the live handlers read the ftrace_regs in guest memory
at the hit. Both arches."""

from collections import Counter

import pytest

from emulator import FtlabError
from fixtures import catalog
from helpers import all_variants
from tracers import Lab
from tracers.builtin.function import FunctionTracer
from tracers.builtin.probe import ProbeEventTracer
from tracers.core.fprobe import Fprobe
from tracers.kernel_version import MODELLED, KernelVersion
from tracers.output.sinks import CountSink, ListSink

CALLS = [
    ("add3", 1, 2, 3),
    ("chain_a", 10),
    ("fib", 6),
    ("tail_a", 5),
    ("sum10", *range(1, 11)),
    ("crc32_bitwise", 0, b"123456789", 9),
    ("mix_flags", 7, 2),
]
FIB6_CALLS = 2 * 13 - 1  # fib(n) makes 2 * fib(n + 1) - 1 calls


def observer(lab, log, tag=""):
    """Entry and exit handlers that log what an observer reads: the arguments, the return value,
    the accessors, the captured fields, what is missing, whether irqs were off."""
    nargs = len(lab.arch.arg_regs)

    def entry(fp, ip, ret_ip, regs, data):
        args = tuple(regs.get_argument(n) for n in range(nargs))
        irqs = regs.irqs_off if fp.batched else lab.machine.irqs_disabled()
        log.append(
            (tag, "entry", ip, ret_ip, args, regs.get_return_address(), regs.get_stack_pointer(), irqs)
            + (regs.fields, tuple(regs.missing))
        )
        return 0

    def exit_(fp, ip, ret_ip, regs, data):
        irqs = regs.irqs_off if fp.batched else lab.machine.irqs_disabled()
        log.append(
            (tag, "exit", ip, ret_ip, regs.get_return_value(), regs.get_instruction_pointer(), irqs)
            + (regs.fields, tuple(regs.missing))
        )

    return entry, exit_


def run(arch, batched, kernel=MODELLED, calls=CALLS, glob="*", ring_records=None, shapes=("both",)):
    """The log of observers on every function over `calls`, and the fprobes (one per shape: both
    handlers, entry only, exit only)."""
    lab = Lab.open(catalog.DEFAULT, arch, kernel=kernel, ring_records=ring_records)
    fprobes, log, probes = lab.fprobes(), [], []
    for i, shape in enumerate(shapes):
        entry, exit_ = observer(lab, log, f"{shape}{i}")
        fp = Fprobe(entry if shape != "exit" else None, exit_ if shape != "entry" else None, batched=batched)
        fprobes.register(fp, glob)
        probes.append(fp)
    results = [lab.call(name, *args) for name, *args in calls]
    return log, results, probes, lab


@pytest.mark.parametrize("kernel", [KernelVersion(6, 18), MODELLED], ids=str)
def test_batched_handlers_see_what_live_handlers_see(arch, kernel):
    """Every hit of every function over the calls: the same (ip, ret_ip, argument registers,
    return address, sp, irqs) at entry and (ip, ret_ip, return value, ip) at exit, the same
    captured fields and the same missing registers, in the same order; for an fprobe with both
    handlers, entry-only (6.19+: on fprobe_ftrace_ops) and exit-only, registered together."""
    shapes = ("both", "entry", "exit")
    live, live_results, _, _ = run(arch, False, kernel, shapes=shapes)
    batched, results, probes, lab = run(arch, True, kernel, shapes=shapes)
    assert results == live_results
    kinds = Counter((tag, kind) for tag, kind, *_ in live)
    # every call is a hit of each of its handlers (fib(6) alone makes 25 calls)
    assert kinds[("both0", "entry")] == kinds[("both0", "exit")] == kinds[("entry1", "entry")] > FIB6_CALLS
    assert kinds[("exit2", "exit")] == kinds[("both0", "exit")] and len(kinds) == 4
    assert batched == live
    assert [fp.nmissed for fp in probes] == [0, 0, 0]
    assert lab.ring_buffer.holder == "a batched fprobe"


@pytest.mark.slow
@pytest.mark.parametrize("arch, variant", all_variants())
def test_every_site_kind_gives_what_live_handlers_see(arch, variant):
    """Every build variant's sites (fentry, NOPs, endbr, clang, thunks, mcount: arm64 -pg stores x0
    without capturing it) on a few calls: the same as the live handlers."""
    logs = []
    for batched in (False, True):
        lab = Lab.open(variant, arch)
        log = []
        lab.fprobes().register(Fprobe(*observer(lab, log), batched=batched), "*")
        results = [lab.call("fib", 5), lab.call("chain_a", 3), lab.call("add3", 1, 2, 3)]
        logs.append((results, log))
    assert logs[0] == logs[1] and logs[1][0][0] == 5 and len(logs[1][1]) >= 2 * (9 + 1)


def test_order_is_kept_across_drains_in_the_middle_of_a_run(arch):
    """A ring buffer of three batched records fills many times during fib(10): the handlers run
    from its drains while the run goes on (Machine.call does not drain at its end; flush does),
    in the order of the hits."""
    live, _, _, _ = run(arch, False, calls=[("fib", 10)], glob="fib")
    lab = Lab.open(catalog.DEFAULT, arch, ring_records=4)
    log = []
    entry, exit_ = observer(lab, log, "both0")
    fprobes = lab.fprobes()
    fprobes.register(Fprobe(entry, exit_, batched=True), "fib")
    assert lab.ring_buffer.nr == 3  # the batched records are bigger than the tracers'
    assert lab.machine.call("fib", 10) == 55
    during = len(log)
    assert 0 < during < len(live)  # drained while full, some records still in the buffer
    fprobes.flush()
    assert log == live and len(live) == 2 * (2 * 89 - 1)


def test_a_buffer_too_small_for_one_record_is_refused(arch):
    lab = Lab.open(catalog.DEFAULT, arch, ring_records=1)
    with pytest.raises(FtlabError, match="cannot hold a record"):
        lab.fprobes().register(Fprobe(lambda *a: 0, batched=True), "fib")
    assert lab.ring_buffer.holder is None


def test_the_python_dispatch_writes_the_same_records(arch):
    """A disabled fprobe in the registry puts its dispatch in Python: the batched fprobe's records
    are written by Python then, and its handlers still see what live handlers see."""
    logs = []
    for batched in (False, True):
        lab = Lab.open(catalog.DEFAULT, arch, ring_records=4)
        fprobes, log = lab.fprobes(), []
        entry, exit_ = observer(lab, log)
        fprobes.register(Fprobe(entry, exit_, batched=batched), "fib")
        other = Fprobe(lambda *a: 0)
        fprobes.register(other, "chain_*")
        fprobes.disable(other)
        assert lab.fprobe_code.owner is None  # the Python dispatch
        assert lab.call("fib", 7) == 13
        logs.append(log)
    assert logs[0] == logs[1] and len(logs[0]) == 2 * (2 * 21 - 1)


def test_nmissed_is_what_the_live_fprobes_count(arch):
    """fgraph cannot reserve the exits' data deep in fib: the same misses, and the same handler
    calls, live and batched."""
    counts = []
    for batched in (False, True):
        lab = Lab.open(catalog.DEFAULT, arch)
        fprobes, calls = lab.fprobes("fgraph"), Counter()

        def entry(fp, ip, ret_ip, regs, data, calls=calls):
            calls["entry", fp.id] += 1

        def exit_(fp, ip, ret_ip, regs, data, calls=calls):
            calls["exit", fp.id] += 1

        probes = [Fprobe(entry, exit_, entry_data_size=8 * 13, batched=batched) for _ in range(2)]
        for fp in probes:
            fprobes.register(fp, "fib")
        assert lab.call("fib", 16) == 987
        counts.append(([fp.nmissed for fp in probes], calls))
    assert counts[0] == counts[1]
    assert counts[1][0][0] > 0  # it did miss


def test_entry_data_is_one_buffer_for_an_entry_and_its_exit(arch):
    """The entry handler writes its argument into entry_data, the exit reads it back: through the
    recursion of fib, each exit finds its own entry's value, as the live handlers do through
    guest memory."""
    logs = []
    for batched in (False, True):
        lab = Lab.open(catalog.DEFAULT, arch, ring_records=4)
        fprobes, log, m = lab.fprobes(), [], lab.machine

        def entry(fp, ip, ret_ip, regs, data, m=m):
            n = regs.get_argument(0)
            if fp.batched:
                assert isinstance(data, bytearray) and data == bytes(8)
                data[:] = n.to_bytes(8, "little")
            else:
                m.write(data, n.to_bytes(8, "little"))
            return 0

        def exit_(fp, ip, ret_ip, regs, data, m=m, log=log):
            saved = bytes(data) if fp.batched else m.read(data, 8)
            log.append((int.from_bytes(saved, "little"), regs.get_return_value()))

        fprobes.register(Fprobe(entry, exit_, entry_data_size=8, batched=batched), "fib")
        assert lab.call("fib", 8) == 21
        logs.append(log)
    fib = [0, 1]
    while len(fib) < 9:
        fib.append(fib[-1] + fib[-2])
    assert logs[0] == logs[1] and all(ret == fib[n] for n, ret in logs[1]) and len(logs[1]) == 2 * 34 - 1


# -- what a batched handler cannot do ---------------------------------------------------------------


def test_a_non_zero_entry_return_is_refused(lab):
    fprobes = lab.fprobes()
    fprobes.register(Fprobe(lambda *a: 1, lambda *a: None, batched=True), "fib")
    with pytest.raises(FtlabError, match="would skip the exit"):
        lab.call("fib", 3)


@pytest.mark.parametrize(
    "write",
    [
        lambda regs: regs.set_return_value(0),
        lambda regs: regs.set_instruction_pointer(0),
        lambda regs: regs.set_return_address(0),
    ],
)
def test_the_snapshot_is_read_only(lab, write):
    fprobes = lab.fprobes()
    fprobes.register(Fprobe(None, lambda fp, ip, ret_ip, regs, data: write(regs), batched=True), "fib")
    with pytest.raises(FtlabError, match="read-only"):
        lab.call("fib", 3)


def test_what_the_record_lacks_is_an_error_never_a_value(lab):
    """Each missing register, at entry and exit, is a FtlabError; so are x86's stack arguments and
    the exit's return address (arm64: lr is not saved at the exit; x86: a stack word); arm64's
    arguments past x7 read 0, as the kernel's accessor and the live snapshot read them."""
    errors, live = Counter(), []
    nregs = len(lab.arch.arg_regs)

    def tries(regs, at):
        for reg in regs.missing:
            with pytest.raises(FtlabError, match=f"{reg} is not in the {at} record"):
                regs.reg(reg)
            errors[at, "missing"] += 1
        assert regs.verify() is None
        try:
            value = regs.get_argument(nregs)
        except FtlabError:
            errors[at, "stack"] += 1
        else:
            assert value == 0
            errors[at, "zero"] += 1
        if at == "exit":
            with pytest.raises(FtlabError, match="the return address"):
                regs.get_return_address()
            errors[at, "retaddr"] += 1

    def entry(fp, ip, ret_ip, regs, data):
        tries(regs, "entry")
        return 0

    fprobes = lab.fprobes()
    fprobes.register(Fprobe(entry, lambda fp, ip, ret_ip, regs, data: tries(regs, "exit"), batched=True), "sum10")
    fprobes.register(Fprobe(lambda fp, ip, ret_ip, regs, data: live.append(regs.get_argument(nregs))), "sum10")
    lab.call("sum10", *range(1, 11))
    stack = lab.karch.ftrace_regs_stack_args
    assert live == [7 if stack else 0]  # the live snapshot reads the stack word on x86
    assert errors["entry", "stack" if stack else "zero"] == errors["exit", "stack" if stack else "zero"] == 1
    assert errors["entry", "missing"] >= 1 and errors["exit", "missing"] > errors["entry", "missing"]
    assert errors["exit", "retaddr"] == 1


def test_refused_registrations(arch):
    lab = Lab.open(catalog.DEFAULT, arch)
    fprobes = lab.fprobes()
    with pytest.raises(FtlabError, match="needs an entry or an exit handler"):
        fprobes.register(Fprobe(batched=True), "fib")
    guest = Fprobe(batched=True, guest_entry=(lab.fprobe_code.python_entry, 0))  # any guest handler
    with pytest.raises(FtlabError, match="batched is for Python handlers"):
        fprobes.register(guest, "fib")
    assert lab.ring_buffer.holder is None and not fprobes.probes
    if arch == "x86_64":  # the rethook design (arm64 never had it)
        with pytest.raises(FtlabError, match="need the fgraph design"):
            lab.fprobes("rethook").register(Fprobe(lambda *a: 0, batched=True), "fib")


# -- the one ring buffer --------------------------------------------------------------------------


def test_a_tracer_and_batched_fprobes_never_share_the_buffer(arch):
    """While a tracer traces through the ring buffer, registering a batched fprobe is refused, and
    the other way round (the function tracer, probe events' guest path); after unregistering,
    the tracer's records are its own."""
    lab = Lab.open(catalog.DEFAULT, arch)
    fprobes, calls = lab.fprobes(), []
    batched = Fprobe(lambda fp, ip, *a: calls.append(ip) and 0, batched=True)
    with FunctionTracer(lab, CountSink()):
        with pytest.raises(FtlabError, match="the function tracer holds it") as err:
            fprobes.register(batched, "fib")
    assert "\n" not in str(err.value)
    assert not fprobes.probes and lab.ring_buffer.holder is None
    fprobes.register(batched, "fib")
    with pytest.raises(FtlabError, match="a batched fprobe holds it"):
        with FunctionTracer(lab, CountSink()):
            pass
    with pytest.raises(FtlabError, match="a batched fprobe holds it"):
        with ProbeEventTracer(lab, CountSink(), ["f:a fib $arg1"]):
            pass
    lab.machine.call("fib", 5)  # no drain: the records wait
    assert calls == []
    fprobes.unregister(batched)  # drains first
    assert len(calls) == 15 and lab.ring_buffer.holder is None
    sink = ListSink()
    with FunctionTracer(lab, sink, filters=["fib"]):
        lab.call("fib", 5)
    fib = lab.ftrace.site("fib").ip
    assert [e.ip for e in sink.events] == [fib] * 15 and [e.ts for e in sink.events] == list(range(1, 16))


@pytest.mark.parametrize("ring_records", [None, 4], ids=["drained-at-the-end", "drained-when-full"])
def test_a_handler_calling_guest_code_has_its_hits_handled_in_order(arch, ring_records):
    """A batched handler that calls a traced function during a drain: that call's hits are recorded
    and handled after the records being drained and before the later ones, in the order of the
    hits. With a buffer of three records, the first drain is in the middle of fib(3) (from the
    guest's rb_reserve), and fib(4)'s hits fill the buffer several times more."""
    logs = {}
    for nest in (None, 3, 4):  # the reference: fib(3) and fib(4) alone
        lab = Lab.open(catalog.DEFAULT, arch, ring_records=ring_records)
        fprobes, log = lab.fprobes(), logs.setdefault(nest, [])

        def entry(fp, ip, ret_ip, regs, data, lab=lab, log=log, nest=nest):
            n = regs.get_argument(0)
            log.append(("entry", n))
            if nest is None and len(log) == 1:
                assert lab.call("fib", 4) == 3
                log.append(("called",))
            return 0

        def exit_(fp, ip, ret_ip, regs, data, log=log):
            log.append(("exit", regs.get_return_value()))

        fprobes.register(Fprobe(entry, exit_, batched=True), "fib")
        assert lab.call("fib", nest or 3) == (3 if nest == 4 else 2)
    outer, nested = logs[3], logs[4]
    assert len(outer) == 10 and len(nested) == 18
    drained = 3 if ring_records else len(outer)  # the records handled before the nested call's
    assert logs[None] == outer[:1] + [("called",)] + outer[1:drained] + nested + outer[drained:]
