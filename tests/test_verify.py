"""Verify mode has one owner, reference-counted per mechanism: a tracer that stops releases only what
it acquired, so every other verifying user keeps every snapshot checked (issue #9, bug a)."""

import pytest

from emulator import FtlabError
from tracers import FunctionGraphTracer, FunctionTracer, Kprobe
from tracers.builtin.probe import ProbeEventTracer
from tracers.output.sinks import ListSink


class NestingSink(ListSink):
    """The outer tracer's sink: on its first event (inside the outer's handler, mid-call), it runs
    an inner verifying tracer around a nested call into the guest."""

    def __init__(self, lab):
        super().__init__()
        self.lab, self.inner = lab, ListSink()

    def event(self, ev):
        super().event(ev)
        if len(self.events) == 1:
            with FunctionTracer(self.lab, self.inner, filters=["fib"], verify=True):
                assert self.lab.call("fib", 3) == 2


def checked(sink) -> None:
    """Every event of this tracer carries a verification, all equal, and its summary says so."""
    assert sink.events
    assert all(ev.verification is not None for ev in sink.events)
    assert all(ev.mismatch == [] for ev in sink.events)
    assert sink.summary["verify"] == {"snapshots": len(sink.events), "mismatching": 0}


def test_an_inner_tracer_run_from_the_handler_leaves_the_outer_verifying(lab):
    sink = NestingSink(lab)
    with FunctionTracer(lab, sink, filters=["chain_*"], verify=True):
        assert lab.call("chain_a", 10) == 129
    names = [lab.machine.symbols.lookup(ev.ip)[0].name for ev in sink.events]
    assert names == ["chain_a", "chain_b", "chain_c", "chain_c"]
    checked(sink)
    assert len(sink.inner.events) == 5  # fib(3): 5 calls, all checked too
    assert all(ev.verification is not None and ev.mismatch == [] for ev in sink.inner.events)
    assert not lab.machine.code_hooks


def test_an_inner_tracer_between_calls_leaves_the_outer_verifying(lab):
    sink, inner = ListSink(), ListSink()
    with FunctionGraphTracer(lab, sink, filters=["sum10"], verify=True):
        lab.call("sum10", *range(10))
        with FunctionTracer(lab, inner, filters=["fib"], verify=True):
            lab.call("fib", 3)
        lab.call("sum10", *range(10))
    assert len(sink.events) == 4  # 2 calls: an entry and an exit each
    checked(sink)
    checked(inner)
    assert not lab.machine.code_hooks


def _function(lab, sink):
    return FunctionTracer(lab, sink, filters=["chain_b"], verify=True)


def _graph(lab, sink):
    return FunctionGraphTracer(lab, sink, filters=["chain_c"], verify=True)


def _probes(lab, sink):
    body = lab.ftrace.site("chain_c").ip + lab.karch.sites.size - lab.machine.address_of("chain_c")
    return ProbeEventTracer(lab, sink, [f"p:kp chain_c+{body}", "r:rp chain_b", "f:fp chain_a%return"], verify=True)


@pytest.mark.parametrize(
    "first,second",
    [(_function, _graph), (_graph, _probes), (_probes, _function)],
    ids=["function+graph", "graph+probes", "probes+function"],
)
@pytest.mark.parametrize("order", ["first-stops-first", "second-stops-first"])
def test_two_verifying_tracers_stop_in_either_order(lab, first, second, order):
    sinks = [ListSink(), ListSink()]
    tracers = [first(lab, sinks[0]), second(lab, sinks[1])]
    for t in tracers:
        t.__enter__()
    lab.call("chain_a", 10)
    stopping, staying = (0, 1) if order == "first-stops-first" else (1, 0)
    tracers[stopping].__exit__(None, None, None)
    before = len(sinks[staying].events)
    lab.call("chain_a", 10)
    assert len(sinks[staying].events) == 2 * before  # the second call was traced as the first
    tracers[staying].__exit__(None, None, None)
    for sink in sinks:
        assert sink.events and all(ev.verification is not None for ev in sink.events)
        assert sink.summary["verify"]["snapshots"] == len(sink.events)
    assert not lab.machine.code_hooks


# -- the owner itself -----------------------------------------------------------------------------


def test_hooks_live_exactly_while_some_user_holds_the_mechanism(lab):
    verify, m = lab.verify, lab.machine
    return_to_handler = lab.fgraph.return_to_handler
    verify.acquire(lab.fgraph)
    verify.acquire(lab.fgraph)
    assert verify.held(lab.fgraph) and len(m.code_hooks) == 1
    verify.release(lab.fgraph)
    assert verify.held(lab.fgraph) and len(m.code_hooks) == 1
    verify.release(lab.fgraph)
    assert not verify.held(lab.fgraph) and not m.code_hooks
    with pytest.raises(FtlabError, match="verify: fgraph is released more often than it was acquired"):
        verify.release(lab.fgraph)
    with verify.holding(lab.rethook, lab.fgraph):
        assert len(m.code_hooks) == 2 and verify.take(return_to_handler) is None
    assert not m.code_hooks


def test_ftrace_sites_are_hooked_while_on_and_held(lab):
    verify, m = lab.verify, lab.machine
    with FunctionTracer(lab, ListSink(), filters=["fib", "sum10"], verify=False):
        assert not m.code_hooks
        with verify.holding(lab.ftrace):
            assert len(m.code_hooks) == 2  # the two sites that are on
        assert not m.code_hooks


def test_a_lone_guest_ops_runs_in_the_guest_only_when_ftrace_is_not_verified(lab):
    """Verify needs the Python dispatch to take the truth at each site: while ftrace is held, a lone
    ops with guest code is called through the list function instead."""
    ft = lab.ftrace
    with FunctionTracer(lab, ListSink()) as t:  # ring buffer: the guest's function_trace_call
        assert set(ft._call_sites.values()) == {t.ops.guest_func}
        with lab.verify.holding(ft):
            assert set(ft._call_sites.values()) == {ft.list_func}
        assert set(ft._call_sites.values()) == {t.ops.guest_func}


@pytest.mark.parametrize("arch", ["x86_64"])  # arm64 refuses such a probe: see test_regs_mechanisms
def test_a_kprobe_on_an_ftrace_site_is_verified_without_holding_ftrace(lab):
    """kprobes asks for the truth at each of its points; one on an ftrace site is taken by the ftrace
    dispatch that builds its pt_regs (x86: KPROBES_ON_FTRACE)."""
    site = lab.ftrace.site("fib")
    seen = []
    with lab.verify.holding(lab.kprobes):
        lab.kprobes.register(
            Kprobe("fib", site.ip - lab.machine.address_of("fib"), lambda p, regs: seen.append(regs.verify()) and 0)
        )
        lab.call("fib", 3)
    assert len(seen) == 5 and all(v is not None and v.mismatch == [] for v in seen)
    assert not lab.verify.held(lab.ftrace)
