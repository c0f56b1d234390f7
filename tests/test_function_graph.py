"""fgraph and the function_graph tracer: balanced graphs, real call counts, return values checked
against the catalog's references, the shadow stack's data, users, overrun and unwinding."""

import io
import re
import struct
from collections import Counter

import pytest

from emulator.machine import decode_return
from fixtures import catalog
from helpers import EXAMPLES, all_variants
from tracers import Lab
from tracers.builtin.function_graph import FunctionGraphTracer
from tracers.core.fgraph import FgraphOps
from tracers.core.stacktrace import stack_trace
from tracers.output.sinks import GraphTextSink, ListSink


def graph(lab, func, *args, ret="i64", **kw):
    sink = ListSink()
    with FunctionGraphTracer(lab, sink, **kw):
        result = lab.call(func, *args, ret=ret)
    return result, sink.events


def check_balanced(m, events):
    """Every exit closes the innermost open entry, at its depth; returns (entry, exit) pairs."""
    open_, pairs = [], []
    for ev in events:
        if ev.type == "entry":
            assert ev.depth == len(open_)
            open_.append(ev)
        else:
            entry = open_.pop()
            assert (entry.ip, entry.depth) == (ev.ip, ev.depth)
            assert ev.parent_ip == entry.parent_ip  # returns where it was called from
            pairs.append((entry, ev))
    assert not open_
    return pairs


@pytest.mark.slow
@pytest.mark.parametrize("arch_name,variant", all_variants())
def test_every_function_graphs_balanced_with_true_return_values(arch_name, variant):
    lab = Lab.open(variant, arch_name)
    m = lab.machine
    for ex in EXAMPLES:
        result, events = graph(lab, ex.name, *ex.args, ret=ex.func.ret, verify=True)
        assert result == ex.expected, ex
        pairs = check_balanced(m, events)
        names = Counter(m.symbols.lookup(e.ip)[0].name for e, _ in pairs)
        if ex.calls:
            assert names == Counter(ex.calls)
        assert all(ev.mismatch == [] for ev in events)
        for entry, exit_ in pairs:
            callee = catalog.FUNCTIONS[m.symbols.lookup(entry.ip)[0].name]
            if callee.name == ex.name and entry.depth == 0:
                call_args = ex.args
            elif "x0" in entry.missing:  # arm64 -pg: argument 1 is gone at the site (test_mcount.py)
                continue
            elif all(isinstance(a, int) for a in ex.args) and len(ex.args) <= 6:
                nargs = callee.signature.count(",") + 1
                call_args = tuple(decode_return("i64", a) for a in entry.args[:nargs])
            else:
                continue
            hi = exit_.regs[m.arch.ret_regs[1]]  # rdx / x1: saved by return_to_handler
            assert decode_return(callee.ret, exit_.retval, hi) == callee.reference(*call_args)
    assert lab.call("fib", 12) == 144 and not any(s.on for s in lab.sites)


def test_fib_makes_the_known_number_of_calls(lab):
    _, events = graph(lab, "fib", 15)
    assert sum(e.type == "entry" for e in events) == 2 * 987 - 1  # 2 fib(16) - 1


def test_graph_text_is_the_kernel_format_and_deterministic(lab):
    def text():
        out = io.StringIO()
        with FunctionGraphTracer(lab, GraphTextSink(out, lab.machine.symbols, retval=True), clock="insns"):
            lab.call("chain_a", 10)
        return out.getvalue()

    first = text()
    assert first == text()
    lines = first.splitlines()
    assert lines[:4] == [
        "# tracer: function_graph",
        "#",
        "# CPU  DURATION                  FUNCTION CALLS",
        "# |     |   |                     |   |   |   |",
    ]
    body = [ln for ln in lines if not ln.startswith("#")]
    assert body[0] == " 0)               |  chain_a() {"
    assert body[1] == " 0)               |    chain_b() {"
    assert re.fullmatch(r" 0\)   \d+ insn +\|      chain_c\(\); /\* ret=0x31 \*/", body[2]), body[2]
    assert body[3].endswith("|    } /* chain_b ret=0x62 */")
    assert body[4].endswith("|    chain_c(); /* ret=0x1f */")
    assert body[5].endswith("|  } /* chain_a ret=0x81 */")


def test_insns_durations_nest(lab):
    _, events = graph(lab, "chain_a", 10, clock="insns")
    pairs = check_balanced(lab.machine, events)
    by_name = {lab.machine.symbols.lookup(e.ip)[0].name + str(e.depth): x.duration for e, x in pairs}
    assert by_name["chain_a0"] > by_name["chain_b1"] > by_name["chain_c2"] > 0
    assert by_name["chain_c2"] == by_name["chain_c1"]  # same code, same instruction count


def test_max_graph_depth(lab):
    _, events = graph(lab, "fib", 6, max_depth=2)
    assert {e.depth for e in events} == {0, 1}
    assert sum(e.type == "entry" for e in events) == 3


def test_return_is_hooked_only_when_an_entryfunc_wants_it(lab):
    fg, m, seen = lab.fgraph, lab.machine, Counter()
    never = FgraphOps(lambda t, g, f: seen.update(["never"]) and 0, lambda t, g, f: seen.update(["never-ret"]))
    fib_only = FgraphOps(
        lambda t, g, f: m.symbols.lookup(t.func)[0].name == "chain_c", lambda t, g, f: seen.update(["chain_c-ret"])
    )
    fg.register(never)
    fg.register(fib_only)
    assert lab.call("chain_a", 10) == 129
    # chain_c's returns alone are hooked; "never" holds index 0, whose bit the kernel sets in every
    # frame's bitmap (BIT(0)), so its retfunc runs there too (tests/test_fgraph_layout.py)
    assert seen == Counter({"never": 4, "chain_c-ret": 2, "never-ret": 2})
    fg.unregister(never)
    fg.unregister(fib_only)
    assert fg.curr_ret_stack == 0 and fg.curr_ret_depth == -1


def test_graph_storage_as_trace_selftest(lab):
    """test_graph_storage: four users store 1, 2, 4 and 8-byte values and read them back."""
    fg, m = lab.fgraph, lab.machine
    values = [(1, 123), (2, 12345), (4, 1234567890), (8, 1234567890123456789)]
    found = {}

    def user(size, value):
        fmt = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[size]

        def entry(trace, gops, fregs):
            addr = fg.reserve_data(size)
            m.write(addr, struct.pack(fmt, value))
            assert fg.reserve_data(size) is None  # once per entryfunc
            return 1

        def ret(trace, gops, fregs):
            addr, stored = fg.retrieve_data()
            assert stored == 8  # reservations are whole words
            found[size] = struct.unpack(fmt, m.read(addr, size))[0]

        return FgraphOps(entry, ret, name=f"store{size}")

    users = [user(*v) for v in values]
    for u in users:  # singly
        fg.register(u)
        lab.ftrace.set_filter(u.ops, "chain_c")
        lab.call("chain_c", 1)
        fg.unregister(u)
    assert found == dict(values)
    found.clear()
    for u in users:  # all four at once
        fg.register(u)
    lab.call("chain_c", 1)
    assert found == dict(values)


def test_overrun_is_counted_and_never_corrupts(lab):
    fg = lab.fgraph

    def fill(trace, gops, fregs):  # take as much of the shadow stack as is left
        any(fg.reserve_data(size) for size in (256, 64, 8))
        return 1

    hog = FgraphOps(fill, lambda t, g, f: None, name="hog")
    fg.register(hog)
    assert lab.call("fib", 18) == 2584
    assert fg.trace_overrun > 0
    assert fg.curr_ret_stack == 0 and fg.curr_ret_depth == -1
    fg.unregister(hog)


def test_sixteen_users_at_most(lab):
    fg = lab.fgraph
    users = [FgraphOps(lambda t, g, f: 1, name=f"u{i}") for i in range(16)]
    for u in users:
        fg.register(u)
    assert sorted(u.idx for u in users) == list(range(16))
    with pytest.raises(Exception, match="all 16 fgraph_ops slots are in use"):
        fg.register(FgraphOps(lambda t, g, f: 1))
    assert lab.call("fib", 5) == 5


def test_unwinding_through_hooked_frames(lab):
    """ftrace_graph_ret_addr: a stack trace from a retfunc shows the real return addresses."""
    fg, m, traces = lab.fgraph, lab.machine, []

    def ret(trace, gops, fregs):
        if trace.depth == 2:
            args = (m, lab.karch, fregs.get_instruction_pointer(), fregs.get_frame_pointer())
            traces.append(
                (
                    [m.symbols.lookup(a)[0].name for a in stack_trace(*args, [fg.ret_addr])],
                    [m.symbols.lookup(a)[0].name for a in stack_trace(*args)],
                )
            )

    fg.register(FgraphOps(lambda t, g, f: 1, ret))
    lab.call("chain_a", 10)
    assert traces == [(["chain_b", "chain_a", "ftlab_caller"], ["chain_b", "return_to_handler", "return_to_handler"])]
