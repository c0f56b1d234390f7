"""The function tracer and ftrace_ops, against the catalog's references and the kernel's selftests."""

from collections import Counter

import pytest

from fixtures import catalog
from helpers import EXAMPLES, all_variants
from tracers import FgraphOps, FtraceOps, FunctionTracer, Lab, OpsFlag
from tracers.output.sinks import ListSink

MISSING = {
    "x86_64": ["r15", "r14", "r13", "r12", "bx", "r11", "r10", "orig_ax", "cs", "flags", "ss"],
    "arm64": [f"x{n}" for n in range(9, 29)] + ["pstate"],
}
# What a legacy -pg site cannot capture besides: on arm64 argument 1, gone to gcc's MOV X0, X30 (clang
# leaves it, but the lab marks the kind, not the compiler); x86's mcount call keeps every argument.
UNCAPTURED = {("arm64", "mcount"): ["x0"]}


def trace(lab, func, *args, ret="i64", **kw):
    sink = ListSink()
    with FunctionTracer(lab, sink, **kw):
        result = lab.call(func, *args, ret=ret)
    return result, sink


@pytest.mark.slow
@pytest.mark.parametrize("arch_name,variant", all_variants())
def test_traced_results_counts_args_and_snapshots(arch_name, variant):
    lab = Lab.open(variant, arch_name)
    m = lab.machine
    lost = UNCAPTURED.get((arch_name, catalog.variant(arch_name, variant).site_kind), [])
    for ex in EXAMPLES:
        result, sink = trace(lab, ex.name, *ex.args, ret=ex.func.ret, verify=True)
        assert result == ex.expected, ex
        names = [m.symbols.lookup(ev.ip)[0].name for ev in sink.events]
        if ex.calls:
            assert Counter(names) == Counter(ex.calls)
        first = sink.events[0]
        assert names[0] == ex.name and first.parent_ip == m.exit_addr and first.depth == 0
        for n, (got, want) in enumerate(zip(first.args, ex.args, strict=False)):  # six recorded, fewer passed
            if m.arch.arg_regs[n] in lost:
                continue
            if isinstance(want, int):
                assert got == want & (1 << 64) - 1
            else:  # a buffer, passed by pointer
                assert m.read(got, len(want)) == want
        for ev in sink.events:
            assert ev.mismatch == [], (ex.name, ev.verification)
            assert list(ev.missing) == lost + MISSING[arch_name]
            assert ev.regs_kind == "ftrace_regs"
            assert set(ev.regs) == set(lab.karch.ftrace_regs_saved) - set(lost)
    # tracing off again: the text is back to its post-init bytes and results are unchanged
    assert not any(s.on for s in lab.sites)
    assert lab.call("fib", 15) == 610


def test_call_chain_depths_and_parents(lab):
    _, sink = trace(lab, "chain_a", 10)
    sym = lab.machine.symbols
    assert [(sym.lookup(e.ip)[0].name, sym.lookup(e.parent_ip)[0].name, e.depth) for e in sink.events] == [
        ("chain_a", "ftlab_caller", 0),
        ("chain_b", "chain_a", 1),
        ("chain_c", "chain_b", 2),
        ("chain_c", "chain_a", 1),
    ]
    assert [e.ts for e in sink.events] == [1, 2, 3, 4]  # the counter clock


def test_insns_clock_is_deterministic_and_rising(lab):
    _, first = trace(lab, "fib", 8, clock="insns")
    _, second = trace(lab, "fib", 8, clock="insns")
    stamps = [e.ts for e in first.events]
    assert stamps == [e.ts for e in second.events]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps) == 67


@pytest.mark.parametrize("ring", [False, True], ids=["python", "guest"])
def test_insns_clock_counts_exactly(lab, ring):
    """Each stamp equals a per-instruction hook's count (the slow, obvious reference) where the
    event is taken, up to whether that hook saw that instruction first: on the Python path at the
    dispatch; on the guest path (the native block hook keeping the ring buffer's clock word) at
    the block that reserves the record, rb_reserve."""
    import unicorn

    m, seen, stamps = lab.machine, [0], []
    if ring and not m.counts_natively:
        pytest.skip("the native block hook was not built (no C compiler)")

    def every_insn(uc, addr, size, _):
        seen[0] += 1

    sink = ListSink()
    with FunctionTracer(lab, sink, clock="insns", ring=ring):
        if ring:
            taken = m.hook_code(lambda addr: stamps.append(seen[0]), m.symbols.get("rb_reserve").addr)
        else:
            ops = FtraceOps(lambda *a: stamps.append(seen[0]))
            lab.ftrace.register(ops)
        h = m.uc.hook_add(unicorn.UC_HOOK_CODE, every_insn)
        m.uc.ctl_flush_tb()
        lab.call("chain_a", 10)
        m.uc.hook_del(h)
        if ring:
            m.unhook(taken)
        else:
            lab.ftrace.unregister(ops)
    diffs = {ref - ev.ts for ref, ev in zip(stamps, sink.events, strict=True)}
    assert len(sink.events) == 4 and len(diffs) == 1 and diffs <= {0, 1}, diffs


def test_filters_notrace_and_negation(lab):
    _, sink = trace(lab, "chain_a", 10, filters=["chain_*"], notrace=["chain_b"])
    assert [lab.machine.symbols.lookup(e.ip)[0].name for e in sink.events] == ["chain_a", "chain_c", "chain_c"]


def test_filter_matching_nothing_is_an_error(lab):
    with pytest.raises(Exception, match="filter 'nosuch\\*' matches no traceable function"):
        lab.ftrace.set_filter(FtraceOps(lambda *a: None), "nosuch*")


def test_several_ops_as_trace_selftest_ops(lab):
    """kernel/trace/trace_selftest.c trace_selftest_ops: func1 = add3, func2 = divmod."""
    ft = lab.ftrace
    counts = Counter()

    def counting(name):
        return FtraceOps(lambda ip, pip, op, fregs: counts.update([name]), name=name)

    p1, p2, p3 = counting("probe1"), counting("probe2"), counting("probe3")
    ft.set_filter(p1, "add3")
    ft.set_filter(p2, "divmod")
    ft.set_filter(p3, ["add3", "divmod"])
    for ops in (p1, p2, p3):
        ft.register(ops)

    def after(func, *expect):
        lab.call(func, *((1, 2, 3) if func == "add3" else (7, 2)))
        assert (counts["probe1"], counts["probe2"], counts["probe3"]) == expect

    after("add3", 1, 0, 1)
    after("divmod", 1, 1, 2)
    dyn = counting("dyn")
    ft.register(dyn)  # unfiltered
    after("add3", 2, 1, 3)
    after("divmod", 2, 2, 4)
    ft.set_filter(p3, "!add3", reset=False)
    after("add3", 3, 2, 4)
    after("divmod", 3, 3, 5)
    assert counts["dyn"] == 4
    for ops in (p1, p2, p3, dyn):
        ft.unregister(ops)
    counts.clear()
    lab.call("add3", 1, 2, 3)
    lab.call("divmod", 7, 2)
    assert not counts


def test_several_ops_are_called_newest_first(lab):
    """add_ftrace_ops() puts a registered ops at the head of ftrace_ops_list and
    __ftrace_ops_list_func walks it from the head (kernel/trace/ftrace.c): the newest ops first."""
    ft, order = lab.ftrace, []
    ops = [FtraceOps(lambda ip, pip, op, fregs, n=n: order.append(n), name=f"ops{n}") for n in range(3)]
    for o in ops:
        ft.set_filter(o, "add3")
        ft.register(o)
    lab.call("add3", 1, 2, 3)
    assert order == [2, 1, 0]
    ft.unregister(ops[1])
    ft.register(ops[1])  # registered again: the newest
    order.clear()
    lab.call("add3", 1, 2, 3)
    assert order == [1, 2, 0]
    for o in ops:
        ft.unregister(o)


def test_fgraph_ops_keeps_its_place_when_users_come_and_go(lab):
    """fgraph's graph_ops is registered with its first user; later users only update its hash
    (ftrace_startup_subops, kernel/trace/ftrace.c), so an ops registered in between stays ahead."""
    ft, order = lab.ftrace, []
    first = FgraphOps(lambda trace, gops, fregs: order.append("graph") or 0, name="first")
    ops = FtraceOps(lambda ip, pip, op, fregs: order.append("ops"), name="ops")
    second = FgraphOps(lambda trace, gops, fregs: 0, name="second")
    ft.set_filter(ops, "add3")
    lab.fgraph.register(first)
    ft.register(ops)
    lab.fgraph.register(second)  # graph_ops is not registered anew: it stays behind ops
    lab.call("add3", 1, 2, 3)
    assert order == ["ops", "graph"]
    lab.fgraph.unregister(second)
    order.clear()
    lab.call("add3", 1, 2, 3)
    assert order == ["ops", "graph"]
    lab.fgraph.unregister(first)
    ft.unregister(ops)


def test_recursion_protection(lab):
    """trace_selftest's recursion tests: the callback calls the traced function again."""
    ft, calls = lab.ftrace, Counter()

    def recurse(name):
        def func(ip, parent_ip, op, fregs):
            calls[name] += 1
            if calls[name] == 1:  # a recursion-safe callback guards itself after one
                lab.call("add3", 1, 2, 3)

        return func

    guarded = FtraceOps(recurse("guarded"), OpsFlag.RECURSION, name="guarded")
    ft.set_filter(guarded, "add3")
    ft.register(guarded)
    assert lab.call("add3", 4, 5, 6) == 15
    # the selftest accepts 1 or 2: the transition bit lets one nested call through
    assert calls["guarded"] == 2
    ft.unregister(guarded)

    safe = FtraceOps(recurse("safe"), name="safe")
    ft.set_filter(safe, "add3")
    ft.register(safe)
    assert lab.call("add3", 4, 5, 6) == 15
    assert calls["safe"] == 2


def test_handler_changes_the_ip(lab):
    """Like livepatch: chain_c's saved ip is pointed at tail_b (7x+2), so chain_c runs as tail_b."""
    tail_b = lab.machine.address_of("tail_b")
    ops = FtraceOps(lambda ip, pip, op, fregs: fregs.set_instruction_pointer(tail_b))
    lab.ftrace.set_filter(ops, "chain_c")
    lab.ftrace.register(ops)
    # chain_a(10) = chain_b(15) + chain_c(10) = 2 * c(16) + c(10), with c(x) = 7x + 2
    assert lab.call("chain_a", 10) == 2 * (7 * 16 + 2) + (7 * 10 + 2)
    lab.ftrace.unregister(ops)
    assert lab.call("chain_a", 10) == 129


def test_accessors_against_the_call(lab):
    m, seen = lab.machine, {}

    def grab(ip, parent_ip, op, fregs):
        seen.update(
            args=[fregs.get_argument(n) for n in range(10)],
            ra=fregs.get_return_address(),
            parent=parent_ip,
            ip=fregs.get_instruction_pointer(),
            site=ip,
            sp=fregs.get_stack_pointer(),
            fp=fregs.get_frame_pointer(),
        )

    ops = FtraceOps(grab)
    lab.ftrace.set_filter(ops, "sum10")
    lab.ftrace.register(ops)
    assert lab.call("sum10", *range(1, 11)) == 385
    assert seen["ra"] == seen["parent"] == m.exit_addr
    assert seen["ip"] == seen["site"] + lab.karch.sites.size
    if lab.karch.ftrace_regs_stack_args:  # x86: regs_get_kernel_argument reads the stack
        assert seen["args"] == list(range(1, 11))
    else:  # arm64: ftrace_regs_get_argument is 0 past x7
        assert seen["args"] == list(range(1, 9)) + [0, 0]
