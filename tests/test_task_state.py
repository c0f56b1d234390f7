"""A call that ends in an error abandons the guest task's calls under way: as when a task exits
(ftrace_graph_exit_task, rethook_flush_task), the cores drop its per-task state, so a long-lived lab
does not drift into trace_overrun and nmissed (issue #9, bug d). The error reaches the user as is."""

import pytest

from emulator import GuestFault
from helpers import FPROBE_DESIGNS
from tracers import FgraphOps, Fprobe, FtraceOps, FunctionGraphTracer, Kprobe, Kretprobe, Lab, OpsFlag
from tracers.core.kretprobe import DEFAULT_MAXACTIVE
from tracers.output.sinks import ListSink

FAULT = ("popcount_buf", 16, 4)  # p = 0x10: its first load faults, inside the traced function
FAULTS = 100  # more frames than the shadow stack holds, more than any pool
BUF = b"\x0f\xff\x01"


def untraced_fault(arch) -> str:
    with pytest.raises(GuestFault) as err:
        Lab.open("funcs", arch).call(*FAULT)
    return str(err.value)


def fault(lab, times: int = FAULTS, message: str | None = None) -> None:
    for _ in range(times):
        with pytest.raises(GuestFault, match="read of unmapped address 0x10") as err:
            lab.call(*FAULT)
        if message is not None:
            assert str(err.value) == message


def assert_task_clear(lab) -> None:
    fg = lab.fgraph
    assert (fg.curr_ret_stack, fg.curr_ret_depth) == (0, -1)
    assert lab.rethook.task == []
    assert lab.kprobes.running == []
    assert lab.ftrace.recursion.val == 0  # fgraph entry and the list function hold their bits here


def graph_session(lab, ring: bool):
    sink = ListSink()
    with FunctionGraphTracer(lab, sink, ring=ring):
        assert lab.call("fib", 12) == 144
        assert lab.call("popcount_buf", BUF, 3) == 13
    return sink.summary, [(e.type, e.ip, e.depth, e.retval, e.ts) for e in sink.events]


@pytest.mark.parametrize("ring", [True, False], ids=["guest", "python"])
def test_function_graph_after_faults_is_as_on_a_fresh_lab(arch, ring):
    lab, message = Lab.open("funcs", arch), untraced_fault(arch)
    with FunctionGraphTracer(lab, ListSink(), ring=ring):
        fault(lab, message=message)  # the error, exactly as without tracing
        assert_task_clear(lab)
    after = graph_session(lab, ring)
    assert after[0]["counters"]["trace_overrun"] == 0
    assert after == graph_session(Lab.open("funcs", arch), ring)


@pytest.mark.parametrize("arch, design", FPROBE_DESIGNS)
def test_fprobe_pools_and_shadow_stack_refill(lab, design):
    fprobes, exits = lab.fprobes(design), []
    fp = Fprobe(
        lambda *a: 0,
        lambda fp, ip, ret_ip, regs, data: exits.append(
            regs.get_return_value() if regs.kind == "ftrace_regs" else regs.regs_return_value()
        ),
    )
    fprobes.register_syms(fp, ["popcount_buf"])
    pool = len(fp._rethook.free) if design == "rethook" else None
    fault(lab)
    assert_task_clear(lab)
    if design == "rethook":
        assert len(fp._rethook.free) == pool
    for _ in range(3):
        assert lab.call("popcount_buf", BUF, 3) == 13
    assert exits == [13] * 3 and fp.nmissed == 0 and lab.fgraph.trace_overrun == 0


@pytest.mark.parametrize("via", ["kprobe", "ftrace"])
def test_kretprobe_pool_refills(lab, via):
    krp, returns = lab.kretprobes(), []
    rp = Kretprobe("popcount_buf", lambda ri, regs: returns.append(regs.regs_return_value()), via=via)
    krp.register(rp)
    fault(lab)
    assert_task_clear(lab)
    assert len(rp.rethook.free) == DEFAULT_MAXACTIVE
    for _ in range(3):
        assert lab.call("popcount_buf", BUF, 3) == 13
    assert returns == [13] * 3 and rp.nmissed == 0 and rp.nhit == FAULTS + 3


def test_a_fault_in_the_single_step_slot_ends_the_kprobe(lab):
    """A probe on the faulting load: the copy in its slot is what faults, mid-step."""
    m = lab.machine
    with pytest.raises(GuestFault):
        m.call(*FAULT)
    func = m.symbols.get("popcount_buf")
    load = m.reg(lab.arch.pc) - func.addr
    hits = []
    p = Kprobe(
        "popcount_buf", load, lambda p, regs: hits.append("pre") and 0, lambda p, regs, flags: hits.append("post")
    )
    lab.kprobes.register(p)
    fault(lab, times=3)
    assert_task_clear(lab)
    assert hits == ["pre"] * 3
    hits.clear()
    assert lab.call("popcount_buf", BUF, 3) == 13
    assert hits == ["pre", "post"] * 3 and p.nmissed == 0


def test_a_raising_handler_is_raised_as_is_and_leaves_no_task_state(lab):
    """Handlers raising deep in a traced call: an fgraph entryfunc (with two hooked frames below it), a
    kprobe pre_handler and an ftrace_ops callback. Each error reaches the caller unchanged."""
    raised = ValueError("handler bug")

    def entry(trace, gops, fregs):
        if lab.machine.symbols.lookup(trace.func)[0].name == "chain_c":
            raise raised
        return 1

    def raise_it(*_):
        raise raised

    chain_c = lab.ftrace.site("chain_c").ip + lab.karch.sites.size - lab.machine.address_of("chain_c")
    cases = [
        (lab.fgraph, FgraphOps(entry, lambda trace, gops, fregs: None, name="raises"), ("chain_a", 10)),
        (lab.kprobes, Kprobe("chain_c", chain_c, raise_it), ("chain_a", 10)),
        (lab.ftrace, FtraceOps(raise_it, OpsFlag.RECURSION, filter={lab.ftrace.site("fib").ip}), ("fib", 5)),
    ]
    for core, handler, call in cases:
        core.register(handler)
        with pytest.raises(ValueError, match="handler bug") as err:
            lab.call(*call)
        assert err.value is raised
        assert_task_clear(lab)
        core.unregister(handler)

    krp, seen = lab.kretprobes(), []
    krp.register(Kretprobe("chain_b", lambda ri, regs: seen.append(regs.regs_return_value())))
    assert lab.call("chain_a", 10) == 129 and seen == [98]
    assert lab.kprobes.running == [] and lab.fgraph.curr_ret_stack == 0
