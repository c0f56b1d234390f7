"""A tracer and probe events in one trace (`ftlab trace --tracer ... -e ...`), as the kernel's trace
file shows current_tracer with dynamic events enabled: one buffer, one clock, in the order things
happened. The order is checked against a Python re-implementation of fib's calls (fixtures/src/funcs.c)
and the kernel's rules for who runs first at a shared site; the graph's comment lines against
print_graph_comment() in kernel/trace/trace_functions_graph.c."""

import json
import re

import pytest

from emulator import FtlabError
from fixtures import catalog
from helpers import ARCHES, FPROBE_DESIGNS, ftlab, trace_file
from tracers import FunctionTracer, Lab
from tracers.builtin.function_graph import FunctionGraphTracer
from tracers.builtin.probe import ProbeEventTracer
from tracers.cli.main import main
from tracers.output.sinks import ListSink, func_name

# the trace's paths: through the guest ring buffer (counter clock), or built in Python as they
# happen (verify mode; the insns clock)
PATHS = {"ring": {}, "verify": {"verify": True}, "insns": {"clock": "insns"}}
ARG_REG = {"x86_64": "di", "arm64": "x0"}  # the first argument's pt_regs name


def body(lab, func: str) -> int:
    """The offset of the instruction after func's patch site: a kprobe there is an int3 / BRK of
    its own, after the ftrace site, and the first argument is still in its register."""
    return lab.ftrace.site(func).ip + lab.karch.sites.size - lab.machine.address_of(func)


def fib_probes(lab) -> list[str]:
    return [
        "f:fibin fib n=$arg1:s64",
        f"p:kp fib+{body(lab, 'fib')} n=%{ARG_REG[lab.arch.name]}:s64",
        "f:fibout fib%return n=$arg1:s64 r=$retval:s64",
    ]


def reference(n: int, graph: bool, pool: int | None = None) -> tuple[list[tuple], int]:
    """What the trace holds for fib(n), from fib's own recursion (fixtures/src/funcs.c) and the
    return values of the catalog's reference, and how many exits the fprobe missed.

    At fib's ftrace site the fprobe's callback runs before the tracer's: its ftrace_ops
    (fprobe_ftrace_ops for an entry-only fprobe since 6.19, or its own on the rethook design) was
    registered after the tracer's, and ftrace_ops_list is walked newest first (add_ftrace_ops,
    kernel/trace/ftrace.c). The kprobe after the site comes next. At the return function_graph's
    exit (fgraph user 0 on the fgraph design; on the rethook design return_to_handler, which hooked
    the return after the rethook did) before the fprobe's exit. On the rethook design the exit
    fprobe has a pool of `pool` rethook nodes (6.4-6.13: num * num_possible_cpus() * 2): a call
    entered while all are in use has no exit event, and counts in nmissed."""
    events: list[tuple] = []
    active = missed = 0

    def fib(n: int) -> int:
        nonlocal active, missed
        events.extend([("fibin", n), ("fib",), ("kp", n)])
        hooked = pool is None or active < pool
        active += hooked
        missed += not hooked
        if n >= 2:
            fib(n - 1)
            fib(n - 2)
        result = catalog.FUNCTIONS["fib"].reference(n)
        if graph:
            events.append(("fib", "exit", result))
        if hooked:
            events.append(("fibout", n, result))
            active -= 1
        return result

    fib(n)
    return events, missed


def observed(lab, events) -> list[tuple]:
    """The trace's events in the reference's terms."""
    out: list[tuple] = []
    for ev in events:
        if ev.probe is not None:
            out.append((ev.probe.event, *(v for _, v in ev.fetch)))
        elif ev.type == "entry":
            out.append((func_name(lab.machine.symbols, ev.ip),))
        else:
            out.append((func_name(lab.machine.symbols, ev.ip), "exit", ev.retval))
    return out


def run_mixed(lab, tracer_class, specs, design=None, **options):
    sink = ListSink()
    tracer = tracer_class(lab, sink, **options)
    clock = options.get("clock", "counter")
    tracer.add_events(
        ProbeEventTracer(lab, sink, specs, clock=clock, verify=options.get("verify", False), design=design)
    )
    with tracer:
        result = lab.call("fib", 4)
    return sink, result


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("arch, design", FPROBE_DESIGNS)
@pytest.mark.parametrize("tracer_class", [FunctionTracer, FunctionGraphTracer], ids=["function", "function_graph"])
def test_events_interleave_in_the_order_they_happened(arch, design, tracer_class, path):
    lab = Lab.open(catalog.DEFAULT, arch)
    graph = tracer_class is FunctionGraphTracer
    sink, result = run_mixed(lab, tracer_class, fib_probes(lab), design, **PATHS[path])
    assert result == 3
    expected, missed = reference(4, graph, pool=2 if design == "rethook" else None)  # one CPU, one ip
    assert observed(lab, sink.events) == expected
    ts = [ev.ts for ev in sink.events]
    if path == "insns":
        assert ts == sorted(ts) and ts[-1] > len(ts)
    else:  # trace_clock_counter: one tick per event, whoever wrote it
        assert ts == list(range(1, len(ts) + 1))
    calls = catalog.FUNCTIONS["fib"].calls(4)["fib"]
    counters = sink.summary["counters"]
    if graph:
        assert (counters["entries"], counters["exits"], counters["trace_overrun"]) == (calls, calls, 0)
        assert counters["events"] == 3 * calls - missed
    else:  # the function tracer's header counts every entry in its buffer, the probe events' too
        assert counters["entries-in-buffer"] == counters["entries-written"] == 4 * calls - missed
    assert sink.summary["probes"] == {
        "fprobes/fibin": {"hits": calls, "nmissed": 0},
        "kprobes/kp": {"hits": calls, "nmissed": 0},
        "fprobes/fibout": {"hits": calls - missed, "nmissed": missed},
    }
    if path == "verify":
        assert sink.summary["verify"] == {"snapshots": len(sink.events), "mismatching": 0}
    else:
        assert "verify" not in sink.summary


@pytest.mark.parametrize("tracer", ["function", "function_graph"])
def test_ring_and_python_paths_print_the_same_trace(capsys, arch, tracer):
    lab = Lab.open(catalog.DEFAULT, arch)
    argv = ["trace", "--arch", arch, "funcs", "fib(5)", "--tracer", tracer]
    for spec in fib_probes(lab):
        argv += ["-e", spec]
    ring = ftlab(capsys, *argv)
    verified = ftlab(capsys, *argv, "--verify").splitlines(True)
    assert verified[-2].startswith("# verify: ") and " 0 of " not in verified[-2]
    assert ring == "".join(verified[:-2] + verified[-1:])


def test_a_full_buffer_loses_probe_events_as_the_tracer_s_own(arch):
    """drop and overwrite apply to every record in the buffer: the probe events' too."""
    calls = catalog.FUNCTIONS["fib"].calls(4)["fib"]
    total = 2 * calls + 3 * calls  # graph entries and exits, three probe events per call
    for mode in ("drop", "overwrite"):
        lab = Lab.open(catalog.DEFAULT, arch, ring_records=8)
        sink, _ = run_mixed(lab, FunctionGraphTracer, fib_probes(lab), buffer_mode=mode)
        counters = sink.summary["counters"]
        assert len(sink.events) == 8
        assert counters["entries"] + counters["exits"] + counters["events"] == 8
        assert counters["lost" if mode == "drop" else "overwritten"] == total - 8
        # the probes were hit regardless, as kprobe_profile counts them
        assert all(c == {"hits": calls, "nmissed": 0} for c in sink.summary["probes"].values())
        kept = observed(lab, sink.events)
        full, _ = reference(4, True)
        assert kept == (full[:8] if mode == "drop" else full[-8:])


# -- the graph's comments, verbatim ---------------------------------------------------------------


def test_graph_comments_are_print_graph_comment_lines(capsys, arch):
    """kprobes in chain_a, chain_b and chain_c under function_graph: each event is a comment line
    with the empty duration column; after an entry at depth d it is indented (d + 1) * 2 spaces,
    but not at all when d is 0 (`if (depth > 0)`); an event between an entry and its exit makes
    the entry a nested `func() {` line, not a leaf."""
    lab = Lab.open(catalog.DEFAULT, arch)
    reg = ARG_REG[arch]
    where = {
        f: f"{f}+{body(lab, f):#x}/{lab.machine.symbols.get(f).size:#x}" for f in ("chain_a", "chain_b", "chain_c")
    }
    argv = ["trace", "--arch", arch, "funcs", "chain_a(1)", "--tracer", "function_graph"]
    for f in where:
        argv += ["-e", f"p:k{f[-1]} {f}+{body(lab, f)} x=%{reg}"]
    out = trace_file(capsys, *argv)
    assert out.splitlines()[4:] == [
        " 0)               |  chain_a() {",
        f" 0)               |  /* ka: ({where['chain_a']}) x=0x1 */",
        " 0)               |    chain_b() {",
        f" 0)               |      /* kb: ({where['chain_b']}) x=0x4 */",
        " 0)               |      chain_c() {",
        f" 0)               |        /* kc: ({where['chain_c']}) x=0x5 */",
        " 0)   2 ev        |      }",
        " 0)   5 ev        |    }",
        " 0)               |    chain_c() {",
        f" 0)               |      /* kc: ({where['chain_c']}) x=0x1 */",
        " 0)   2 ev        |    }",
        " 0)   11 ev       |  }",
        "# entries: 4, exits: 4, events: 4, trace_overrun: 0",
        "# kprobes/ka: hits 1 nmissed 0",
        "# kprobes/kb: hits 1 nmissed 0",
        "# kprobes/kc: hits 2 nmissed 0",
        "# chain_a(1) = 36 (0x24)",
    ]


def test_graph_comments_after_a_leaf_or_a_return(capsys, arch):
    """After a leaf or a closing brace at depth d the comment depth is d - 1, so a comment is at
    the level of that line (print_graph_entry_leaf, print_graph_return), and at none for d = 1.
    fprobe exits on fgraph come after function_graph's exit (fgraph users in index order)."""
    out = trace_file(
        capsys,
        *("trace", "--arch", arch, "funcs", "chain_a(1)", "--tracer", "function_graph", "--funcgraph-tail"),
        *("-e", "f:co chain_c%return r=$retval", "-e", "f:bo chain_b%return r=$retval"),
    )
    lines = [re.sub(r"\(\S+ <- ", "(RET <- ", ln) for ln in out.splitlines()[4:]]
    assert lines == [
        " 0)               |  chain_a() {",
        " 0)               |    chain_b() {",
        " 0)   1 ev        |      chain_c();",
        " 0)               |      /* co: (RET <- chain_c) r=0x10 */",
        " 0)   4 ev        |    } /* chain_b */",
        " 0)               |  /* bo: (RET <- chain_b) r=0x20 */",
        " 0)   1 ev        |    chain_c();",
        " 0)               |  /* co: (RET <- chain_c) r=0x4 */",
        " 0)   10 ev       |  } /* chain_a */",
        "# entries: 4, exits: 4, events: 3, trace_overrun: 0",
        "# fprobes/co: hits 2 nmissed 0",
        "# fprobes/bo: hits 1 nmissed 0",
        "# chain_a(1) = 36 (0x24)",
    ]


def test_function_tracer_lines_and_probe_lines_share_the_format(capsys, arch):
    out = trace_file(
        capsys, "trace", "--arch", arch, "funcs", "chain_a(1)", "--tracer", "function", "-e", "f:cin chain_c x=$arg1"
    )
    lines = out.splitlines()
    assert lines[0] == "# tracer: function"
    body_lines = [ln for ln in lines if not ln.startswith("#")]
    heads = [ln[: ln.index(": ") + 2] for ln in body_lines]
    assert heads == [f"           ftlab-1       [000] ..... {ts:12d}: " for ts in range(1, 7)]
    assert [ln.split(": ", 1)[1].split(" (")[0].split(" <-")[0] for ln in body_lines] == [
        "chain_a",
        "chain_b",
        "cin:",
        "chain_c",
        "cin:",
        "chain_c",
    ]
    # print_event_info(): every entry in the buffer, the probe events' too
    assert lines[2] == "# entries-in-buffer/entries-written: 6/6   #P:1"
    assert lines[-2:] == ["# fprobes/cin: hits 2 nmissed 0", "# chain_a(1) = 36 (0x24)"]


def test_json_has_both_kinds_of_event_and_one_summary(capsys, arch):
    out = ftlab(
        capsys,
        "trace",
        "--arch",
        arch,
        "funcs",
        "chain_a(1)",
        "--tracer",
        "function_graph",
        "--format",
        "json",
        "-e",
        "f:cin chain_c x=$arg1",
    )
    records = [json.loads(ln) for ln in out.splitlines()]
    assert [r["tracer"] for r in records].count("fprobe") == 2
    assert [r["ts"] for r in records[:-1]] == list(range(1, len(records)))
    probe = next(r for r in records if r["tracer"] == "fprobe")
    assert (probe["event"], probe["fetch"]) == ("fprobes/cin", {"x": 5})
    summary = records[-1]
    assert (summary["type"], summary["tracer"]) == ("summary", "function_graph")
    assert summary["counters"] == {"entries": 4, "exits": 4, "events": 2, "trace_overrun": 0}
    assert summary["probes"] == {"fprobes/cin": {"hits": 2, "nmissed": 0}}


def test_record_refuses_probe_events(capsys, tmp_path):
    code = main(["record", "--arch", "x86_64", "funcs", "fib(2)", "-o", str(tmp_path / "f.ftl"), "-e", "f fib"])
    _, err = capsys.readouterr()
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("ftlab: error: record: probe events (-e) cannot be recorded")
    lab = Lab.open(catalog.DEFAULT, ARCHES[0])
    tracer = FunctionTracer(lab, ListSink(), ring=True, consumer=lambda chunk: None)
    with pytest.raises(FtlabError, match="probe events cannot be recorded"):
        tracer.add_events(ProbeEventTracer(lab, ListSink(), ["f fib"]))
