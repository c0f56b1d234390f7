"""The guest ring buffer: the same events as the Python path, guest code on the hot path, lost
events counted, and record/replay identical to a direct trace."""

import pytest

from emulator import FtlabError
from helpers import EXAMPLES, all_variants, ftlab
from tracers import FtraceOps, FunctionTracer, Lab
from tracers.cli.main import main
from tracers.core.ftrace import Ftrace
from tracers.output.sinks import ListSink


def _events(lab, ring, func, args, ret="i64", **kw):
    sink = ListSink()
    with FunctionTracer(lab, sink, ring=ring, **kw):
        result = lab.call(func, *args, ret=ret)
    return result, [(e.type, e.ip, e.parent_ip, e.depth, e.ts, e.args, e.regs, e.missing) for e in sink.events]


@pytest.mark.slow
@pytest.mark.parametrize("arch_name,variant", all_variants())
def test_ring_buffer_events_equal_the_python_path(arch_name, variant):
    # two machines running the same calls, so that even leftover register values agree
    ring = Lab.open(variant, arch_name, ring_records=100)  # small: it fills and drains often
    plain = Lab.open(variant, arch_name)
    for ex in EXAMPLES:
        r1, guest = _events(ring, True, ex.name, ex.args, ex.func.ret)
        r2, python = _events(plain, False, ex.name, ex.args, ex.func.ret)
        assert r1 == r2 == ex.expected, ex
        assert guest == python and guest


def test_the_hot_path_is_guest_code(arch, monkeypatch):
    dispatched = []
    python_dispatch = Ftrace._dispatch  # the lab hooks it when it builds the Ftrace

    def counted(self, addr):
        dispatched.append(addr)
        python_dispatch(self, addr)

    monkeypatch.setattr(Ftrace, "_dispatch", counted)
    lab = Lab.open("funcs", arch)
    tracer = FunctionTracer(lab, ListSink())
    with tracer:
        assert set(lab.ftrace._call_sites.values()) == {lab.tracer_code.function_trace_call}
        assert not lab.machine.code_hooks  # each would slow every instruction under the budget
        calls = []
        lab.machine.hook_code(calls.append, lab.ftrace.list_func)
        lab.call("fib", 10)
    assert calls == [] and dispatched == [] and len(tracer.sink.events) == 177
    lab.ftrace.register(FtraceOps(lambda *a: None))  # the Python path, for contrast
    lab.call("fib", 10)
    assert len(dispatched) == 177
    assert set(lab.ftrace._call_sites.values()) == {lab.ftrace.list_func}  # back after unregister


def test_sharing_the_sites_falls_back_to_the_same_records(arch):
    """With another ops on the sites, the list function runs and Python writes the same records."""
    shared, alone = Lab.open("funcs", arch), Lab.open("funcs", arch)
    shared.ftrace.register(FtraceOps(lambda *a: None, name="other"))
    _, via_python = _events(shared, True, "chain_a", (10,))
    _, via_guest = _events(alone, True, "chain_a", (10,))
    assert via_python == via_guest and len(via_guest) == 4


@pytest.mark.parametrize("mode", ["drop", "overwrite"])
def test_a_full_buffer_without_a_reader_counts_what_it_loses(arch, mode):
    lab = Lab.open("funcs", arch, ring_records=50)
    sink = ListSink()
    with FunctionTracer(lab, sink, buffer_mode=mode):
        lab.call("fib", 10)  # 177 calls
    kept = [e.ts for e in sink.events]
    counters = sink.summary["counters"]
    if mode == "drop":
        assert kept == list(range(1, 51)) and counters["lost"] == 127
    else:
        assert kept == list(range(128, 178)) and counters["overwritten"] == 127


@pytest.mark.parametrize("tracer", ["function", "function_graph"])
def test_record_then_replay_is_the_direct_trace(capsys, arch, tmp_path, tracer):
    path = str(tmp_path / "fib.ftl")
    graph = ["--funcgraph-retval"] if tracer == "function_graph" else []
    for fmt in ("text", "json"):
        assert main(["trace", "--arch", arch, "funcs", "fib(12)", "--tracer", tracer, "--format", fmt, *graph]) == 0
        direct = capsys.readouterr().out
        assert (
            main(["record", "--arch", arch, "funcs", "fib(12)", "--tracer", tracer, "-o", path, "--buffer-size", "64"])
            == 0
        )
        assert main(["replay", path, "--format", fmt, *graph]) == 0
        assert capsys.readouterr().out == direct and direct.count("\n") > 400


def test_replay_refuses_other_files(capsys, tmp_path):
    bad = tmp_path / "x.ftl"
    bad.write_text("hello\n")
    assert main(["replay", str(bad)]) == 1
    assert capsys.readouterr().err == f"ftlab: error: {bad}: not an ftlab recording\n"


def _graph(lab, ring, func, args, ret="i64", **kw):
    from tracers.builtin.function_graph import FunctionGraphTracer

    sink = ListSink()
    with FunctionGraphTracer(lab, sink, ring=ring, **kw):
        result = lab.call(func, *args, ret=ret)
    return (
        result,
        [
            (e.type, e.ip, e.parent_ip, e.depth, e.ts, e.args, e.regs, e.missing, e.retval, e.duration)
            for e in sink.events
        ],
        sink.summary,
    )


@pytest.mark.slow
@pytest.mark.parametrize("arch_name,variant", all_variants())
def test_guest_function_graph_equals_the_python_path(arch_name, variant):
    ring, plain = Lab.open(variant, arch_name, ring_records=64), Lab.open(variant, arch_name)
    for ex in EXAMPLES:
        r1, guest, s1 = _graph(ring, True, ex.name, ex.args, ex.func.ret)
        r2, python, s2 = _graph(plain, False, ex.name, ex.args, ex.func.ret)
        assert r1 == r2 == ex.expected, ex
        assert guest == python and guest and s1 == s2
    assert ring.fgraph.curr_ret_stack == 0 and ring.fgraph.curr_ret_depth == -1


def test_guest_function_graph_runs_no_python_per_call(lab):
    from tracers.builtin.function_graph import FunctionGraphTracer

    calls = []
    tracer = FunctionGraphTracer(lab, ListSink())
    with tracer:
        assert not lab.machine.code_hooks
        for stub in (lab.ftrace.list_func, lab.fgraph._python_return):
            lab.machine.hook_code(calls.append, stub)
        lab.call("fib", 10)
    assert calls == [] and len(tracer.sink.events) == 2 * 177


def test_guest_function_graph_depth_limit_and_overrun_match_python(arch):
    for kw, call in (({"max_depth": 2}, ("fib", (8,))),):
        _, guest, s1 = _graph(Lab.open("funcs", arch), True, *call, **kw)
        _, python, s2 = _graph(Lab.open("funcs", arch), False, *call, **kw)
        assert guest == python and {e[3] for e in guest} == {0, 1} and s1 == s2


def test_with_another_fgraph_user_the_records_come_from_python(arch):
    """A second user takes fgraph off the guest fast path; the tracer's events stay the same."""
    from tracers.core.fgraph import FgraphOps

    shared, alone = Lab.open("funcs", arch), Lab.open("funcs", arch)
    shared.fgraph.register(FgraphOps(lambda t, g, f: 0, name="other"))
    _, via_python, _ = _graph(shared, True, "chain_a", (10,))
    _, via_guest, _ = _graph(alone, True, "chain_a", (10,))
    assert via_python == via_guest and len(via_guest) == 8


def test_graph_buffer_mode_from_the_command_line(capsys, arch):
    argv = f"trace --arch {arch} funcs fib(6) --tracer function_graph --buffer-size 10 --buffer-mode drop"
    out = ftlab(capsys, *argv.split())
    # 25 calls make 50 records; the first 10 are kept (7 entries, then 3 exits), 40 are lost
    assert "# entries: 7, exits: 3, lost: 40, trace_overrun: 0" in out


def test_one_user_or_one_group_holds_the_buffer(lab):
    """claim: users of one group share the buffer (the ring tracers), anyone else is refused until
    the last of them releases it; drain empties the buffer before its consumer runs."""
    rb, got = lab.ring_buffer, []
    rb.claim("a", "stream", got.append, group="g")
    rb.claim("b", "stream", got.append, group="g")
    with pytest.raises(FtlabError, match=r"^c cannot use the ring buffer: a holds it"):
        rb.claim("c", "stream", got.append)
    rb.release("a")
    with pytest.raises(FtlabError, match="b holds it"):
        rb.claim("c", "stream", got.append)
    rb.release("b")
    assert rb.holder is None

    def consumer(chunk):
        got.append((chunk, rb.write(1, 7)))  # a record written while draining: into the empty buffer

    rb.claim("c", "stream", consumer)
    rb.write(1, 5)
    rb.drain()
    assert len(got) == 1 and got[0][0][16:24] == (5).to_bytes(8, "little")
    got.clear()
    rb.drain()
    assert len(got) == 1 and got[0][0][16:24] == (7).to_bytes(8, "little")
    rb.release("c")
