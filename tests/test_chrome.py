"""--format chrome: Chrome trace-event JSON. Every document is checked as a viewer reads it (valid
JSON, per thread B/E balanced and nested, ts never going back), then against references computed
here: fib's calls from a Python recursion, and the same trace's JSON-lines events."""

from __future__ import annotations

import io
import json
from itertools import pairwise

import pytest

from emulator.symbols import Symbol, SymbolTable
from helpers import ftlab
from tracers.cli.main import main
from tracers.kernel_version import MODELLED
from tracers.output.chrome import ChromeSink
from tracers.output.events import Event

GRAPH = ("--tracer", "function_graph")


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def fib_calls(n: int, depth: int = 0) -> list[tuple[int, list[str], str]]:
    """fib(n)'s calls in entry order: (depth, funcgraph-args' items, funcgraph-retval's text)."""
    calls = [(depth, [f"n={n}"], f"{fib(n):#x}")]
    if n >= 2:
        calls += fib_calls(n - 1, depth + 1) + fib_calls(n - 2, depth + 1)
    return calls


def document(capsys, *argv: str) -> dict:
    return json.loads(ftlab(capsys, *argv, "--format", "chrome"))


def processes(doc: dict) -> dict[int, str]:
    return {e["pid"]: e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "process_name"}


def spans(doc: dict, pid: int) -> list[dict]:
    """pid's calls in entry order, {name, depth, ts, end, args, end_args}, after checking what a
    viewer needs: one thread (tid = pid) named ftlab, ts non-decreasing, every B closed by an E of
    the same name after its children's."""
    events = [e for e in doc["traceEvents"] if e["pid"] == pid]
    assert {e["tid"] for e in events} == {pid}
    assert [e["args"]["name"] for e in events if e["name"] == "thread_name"] == ["ftlab"]
    timed = [e for e in events if e["ph"] != "M"]
    assert all(a["ts"] <= b["ts"] for a, b in pairwise(timed))
    out, stack = [], []
    for e in timed:
        if e["ph"] == "B":
            stack.append({"name": e["name"], "depth": len(stack), "ts": e["ts"], "args": e.get("args", {})})
            out.append(stack[-1])
        elif e["ph"] == "E":
            call = stack.pop()
            assert e["name"] == call["name"]
            call["end"], call["end_args"] = e["ts"], e.get("args", {})
    assert stack == []
    return out


def json_events(capsys, *argv: str) -> list[dict]:
    return [r for r in map(json.loads, ftlab(capsys, *argv, "--format", "json").splitlines()) if "ts" in r]


@pytest.mark.parametrize("clock", ["counter", "insns"])  # the guest ring-buffer path and the Python one
@pytest.mark.parametrize("n", [1, 4, 7])
def test_a_span_per_call_with_its_arguments_and_result(capsys, arch, n, clock):
    argv = ["trace", "--arch", arch, *GRAPH, "funcs-g", f"fib({n})", "--clock", clock]
    doc = document(capsys, *argv, "--funcgraph-args", "--funcgraph-retval")
    [(pid, name)] = processes(doc).items()
    got = spans(doc, pid)
    assert name == arch and len(got) == 2 * fib(n + 1) - 1
    assert [(s["depth"], s["args"]["args"], s["end_args"]["retval"]) for s in got] == fib_calls(n)
    # the spans are the trace's own entries and exits, at their timestamps
    exits = [e for e in json_events(capsys, *argv) if e["type"] == "exit"]
    assert sorted((s["ts"], s["end"]) for s in got) == sorted((e["ts"] - e["duration"], e["ts"]) for e in exits)
    assert doc["otherData"]["clock"] == clock
    assert doc["otherData"]["ts_unit"] == {"counter": "1 us = 1 event", "insns": "1 us = 1 instruction"}[clock]


def test_without_the_options_the_spans_carry_no_args(capsys, arch):
    got = spans(document(capsys, "trace", "--arch", arch, *GRAPH, "funcs", "fib(3)"), 1)
    assert len(got) == 5 and all(s["args"] == s["end_args"] == {} for s in got)


def test_both_arches_are_one_document(capsys):
    doc = document(capsys, "trace", "--arch", "all", *GRAPH, "funcs-g", "fib(5)", "--funcgraph-retval")
    assert processes(doc) == {1: "x86_64", 2: "arm64"}
    for pid in (1, 2):
        assert [(s["depth"], s["end_args"]["retval"]) for s in spans(doc, pid)] == [
            (depth, ret) for depth, _, ret in fib_calls(5)
        ]
    assert list(doc["otherData"]["arches"]) == ["x86_64", "arm64"]


@pytest.mark.parametrize("tracer", ["function", "function_graph"])
def test_a_replay_is_the_trace_it_recorded(capsys, arch, tmp_path, tracer):
    rec = str(tmp_path / "fib.rec")
    ftlab(capsys, "record", "--arch", arch, "--tracer", tracer, "funcs", "fib(5)", "-o", rec)
    options = ("--funcgraph-retval",) if tracer == "function_graph" else ()
    traced = ftlab(
        capsys, "trace", "--arch", arch, "--tracer", tracer, "funcs", "fib(5)", "--format", "chrome", *options
    )
    assert ftlab(capsys, "replay", rec, "--format", "chrome", *options) == traced


def test_the_function_tracers_instants_are_its_events(capsys, arch):
    argv = ["trace", "--arch", arch, "funcs", "chain_a(3)"]
    instants = [e for e in document(capsys, *argv)["traceEvents"] if e["ph"] != "M"]
    assert {(e["ph"], e["s"], e["cat"]) for e in instants} == {("i", "t", "function")}
    assert [(e["name"], e["ts"], e["args"]) for e in instants] == [
        (e["func"], e["ts"], {"parent_ip": hex(e["parent_ip"]), "parent": e["parent"]})
        for e in json_events(capsys, *argv)
    ]


def test_probe_events_are_instants_with_their_fields(capsys, arch):
    """Inside function_graph's spans, as the kernel writes them into one buffer."""
    probes = ("-e", "p:in fib n=$arg1:s32", "-e", "r:out fib ret=$retval:s32")
    doc = document(capsys, "trace", "--arch", arch, *GRAPH, "funcs-g", "fib(4)", *probes)
    assert len(spans(doc, 1)) == len(fib_calls(4))
    instants = [e for e in doc["traceEvents"] if e["ph"] == "i"]
    assert [e["args"]["n"] for e in instants if e["name"] == "in"] == [args[0][2:] for _, args, _ in fib_calls(4)]
    # a return's order: the deepest call first
    rets = [e["args"] for e in instants if e["name"] == "out"]
    assert sorted(int(r["ret"]) for r in rets) == sorted(int(ret, 16) for _, _, ret in fib_calls(4))
    assert {r["__probe_func"] for r in rets} == {"fib"}
    assert all(e["args"]["__probe_ip"].startswith("fib+0x0/0x") for e in instants if e["name"] == "in")


@pytest.mark.parametrize("mode", ["drop", "overwrite"])
def test_a_full_buffer_still_gives_balanced_spans(capsys, arch, mode):
    """drop keeps the first records: the calls whose exits it refused end unfinished at the last
    timestamp. overwrite keeps the last: the exits whose entries it overwrote begin at the exit's
    ts less its duration, before every event kept."""
    argv = ["trace", "--arch", arch, *GRAPH, "funcs", "fib(6)", "--buffer-size", "10", "--buffer-mode", mode]
    got = spans(document(capsys, *argv), 1)
    events = json_events(capsys, *argv)
    entries = [e for e in events if e["type"] == "entry"]
    exits = [e for e in events if e["type"] == "exit"]
    unfinished = [s for s in got if s["end_args"] == {"unfinished": True}]
    lost = [s for s in got if s["args"] == {"entry_lost": True}]
    if mode == "drop":
        assert (len(unfinished), lost) == (len(entries) - len(exits), [])
        assert unfinished and all(s["end"] == events[-1]["ts"] for s in unfinished)
    else:
        assert (len(lost), unfinished) == (len(exits) - len(entries), [])
        assert lost and all(s["ts"] < events[0]["ts"] for s in lost)
    finished = [s for s in got if s not in unfinished]
    assert sorted((s["ts"], s["end"]) for s in finished) == sorted((e["ts"] - e["duration"], e["ts"]) for e in exits)


def test_a_stopped_trace_is_still_a_document(capsys, arch):
    """An error ends the trace: the calls open then are unfinished, and otherData says why."""
    code = main(["trace", "--arch", arch, *GRAPH, "funcs", "fib(12)", "--budget", "300", "--format", "chrome"])
    out, err = capsys.readouterr()
    assert code == 1 and err.startswith("ftlab: error: instruction budget of 300 exhausted")
    doc = json.loads(out)
    got = spans(doc, 1)
    assert got and all(s["end_args"] == {"unfinished": True} for s in got)
    assert err == f"ftlab: error: {doc['otherData']['arches'][arch]['stopped']}\n"


def test_a_call_without_its_exit_ends_where_the_next_at_its_depth_begins():
    """Events no live trace gives in this order (a record lost between an entry and its exit):
    the sink still writes spans a viewer nests, the lost exit's call unfinished."""
    symbols = SymbolTable()
    symbols.add(Symbol("f", 0x1000, 0x40, "func"))
    out = io.StringIO()
    sink = ChromeSink(out, symbols, "x86_64", MODELLED, retval=True)
    sink.begin("function_graph", "counter")
    for kind, depth, ts in [("entry", 0, 1), ("entry", 1, 2), ("entry", 1, 3), ("exit", 1, 4), ("exit", 0, 5)]:
        ev = Event("function_graph", kind, 0x1000, 0x2000, depth, ts, None, "ftrace_regs", {}, ())
        if kind == "exit":
            ev.retval, ev.duration = ts, 1 if depth else 4
        sink.event(ev)
    sink.end({"counters": {}})
    got = spans(json.loads(out.getvalue()), 1)
    assert [(s["depth"], s["ts"], s["end"], s["end_args"]) for s in got] == [
        (0, 1, 5, {"retval": "0x5"}),
        (1, 2, 3, {"unfinished": True}),
        (1, 3, 4, {"retval": "0x4"}),
    ]
