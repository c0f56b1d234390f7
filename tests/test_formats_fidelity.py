"""The trace text and probe-event definitions as the kernel prints and accepts them (issue #10),
each checked against the kernel source, release by release where it changed."""

import io
import json

import pytest

from emulator import FtlabError
from emulator.symbols import Symbol, SymbolTable
from helpers import ftlab
from tracers.cli.main import main
from tracers.kernel_version import KernelVersion
from tracers.output.events import Event
from tracers.output.sinks import GraphTextSink

FUNCS = ("funcs", "chain_a(10)", "--tracer", "function_graph", "--clock", "insns", "--funcgraph-retval")


def _body(text: str) -> list[str]:
    """The graph lines after the duration column."""
    return [ln.split("|", 1)[1] for ln in text.splitlines() if not ln.startswith("#")]


# print_graph_retval (kernel/trace/trace_functions_graph.c): 6.13 (commit 21e92806d39c) puts
# " ret=" before the value; 6.5 to 6.12 print "f(); /* = 0x31 */" and "} /* f = 0x62 */".
NEW = ["  chain_a() {", "    chain_b() {", "      chain_c(); /* ret=0x31 */", "    } /* chain_b ret=0x62 */"]
OLD = ["  chain_a() {", "    chain_b() {", "      chain_c(); /* = 0x31 */", "    } /* chain_b = 0x62 */"]


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
@pytest.mark.parametrize("kernel, expected", [("6.17", NEW), ("6.13", NEW), ("6.12", OLD), ("6.5", OLD)])
def test_funcgraph_retval_text_is_the_releases(capsys, arch, kernel, expected):
    out = ftlab(capsys, "trace", "--arch", arch, *FUNCS, "--kernel", kernel)
    assert _body(out)[:4] == expected
    assert _body(out)[5] == ("  } /* chain_a ret=0x81 */" if expected is NEW else "  } /* chain_a = 0x81 */")


def test_funcgraph_retval_before_6_5_is_refused(capsys):
    with pytest.raises(FtlabError, match=r"Linux 6\.4 has no funcgraph-retval option"):
        GraphTextSink(io.StringIO(), SymbolTable(), retval=True, kernel=KernelVersion(6, 4))


def _exit(retval: int) -> Event:
    return Event("function_graph", "exit", 0x1000, 0x2000, 0, 5, None, "ftrace_regs", {}, (), retval=retval, duration=3)


@pytest.mark.parametrize(
    "kernel, retval, leaf",
    [
        # an error code (-4095..-1, also as a 32-bit int) prints in decimal, anything else in hex
        ("6.17", (1 << 64) - 22, "f(); /* ret=-22 */"),
        ("6.17", 0xFFFFFFEA, "f(); /* ret=-22 */"),
        ("6.17", (1 << 64) - 4096, "f(); /* ret=0xfffffffffffff000 */"),
        ("6.17", 0, "f(); /* ret=0x0 */"),
        ("6.12", (1 << 64) - 22, "f(); /* = -22 */"),
    ],
)
def test_funcgraph_retval_error_codes(kernel, retval, leaf):
    symbols = SymbolTable()
    symbols.add(Symbol("f", 0x1000, 0x10, "func"))
    out = io.StringIO()
    sink = GraphTextSink(out, symbols, retval=True, kernel=KernelVersion.parse(kernel))
    sink.begin("function_graph", "counter")
    sink.event(Event("function_graph", "entry", 0x1000, 0x2000, 0, 2, (0,) * 6, "ftrace_regs", {}, ()))
    sink.event(_exit(retval))
    assert out.getvalue().splitlines()[-1].endswith("|  " + leaf)


@pytest.mark.parametrize("kernel", ["6.17", "6.12"])
def test_replay_prints_the_recorded_releases_retval_text(capsys, tmp_path, kernel):
    path = str(tmp_path / "rec")
    args = ("--arch", "arm64", "funcs", "chain_a(10)", "--kernel", kernel)
    ftlab(capsys, "record", *args, "--tracer", "function_graph", "-o", path)
    replayed = ftlab(capsys, "replay", path, "--funcgraph-retval")
    assert _body(replayed)[2].endswith("chain_c(); /* ret=0x31 */" if kernel == "6.17" else "chain_c(); /* = 0x31 */")


def _json(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


PROBE_STACK = ("funcs", "add3(1,2,3)", "-e", "f:fx add3%return s=$stack s1=$stack1 r=$retval", "--format", "json")


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_stack_at_an_fprobe_exit_on_fgraph_is_a_fault(capsys, arch):
    """$stack is the sp of the handler's regs (FETCH_OP_STACKP in trace_fprobe.c process_fetch_insn):
    on fgraph (6.14+) return_to_handler's ftrace_regs hold none, so it is a fault."""
    [ev, _] = _json(ftlab(capsys, "trace", "--arch", arch, *PROBE_STACK))
    assert ev["fetch"] == {"s": "(fault)", "s1": "(fault)", "r": 6}


@pytest.mark.parametrize("arch", ["x86_64"])  # the rethook design (before 6.14) was x86's alone
def test_stack_at_an_fprobe_exit_on_rethook_is_the_true_sp(capsys, arch):
    """With rethook (6.12) the trampoline's pt_regs hold the true sp after the return."""
    [ev, _] = _json(ftlab(capsys, "trace", "--arch", arch, "--kernel", "6.12", "--verify", *PROBE_STACK))
    assert ev["fetch"]["s"] == ev["regs"]["truth"]["sp"] and ev["fetch"]["r"] == 6


@pytest.mark.parametrize("arch, offset", [("x86_64", 9), ("arm64", 12)])
def test_a_kprobe_inside_a_function_prints_as_json(capsys, arch, offset):
    """A p: event inside a function has no parent (the kernel records only __probe_ip)."""
    events = _json(
        ftlab(capsys, "trace", "--arch", arch, "funcs", "fib(3)", "-e", f"p:px fib+{offset}", "--format", "json")
    )
    assert [e["type"] for e in events] == ["entry"] * 5 + ["summary"]
    assert {(e["parent_ip"], e["parent"], e["event"]) for e in events[:-1]} == {(None, None, "kprobes/px")}
    assert events[-1]["probes"]["kprobes/px"]["hits"] == 5


def _refusal(capsys, arch: str, *events: str) -> str:
    argv = ["trace", "--arch", arch, "funcs", "fib(3)"] + [a for e in events for a in ("-e", e)]
    assert main(argv) != 0
    _out, err = capsys.readouterr()
    return err.strip()


@pytest.mark.parametrize(
    "events, error",
    [
        # append_trace_fprobe / append_trace_kprobe (trace_fprobe.c, trace_kprobe.c) with the
        # trace_probe.h ERRORS texts, at argv[0] (or the argument that differs)
        (("f:ev fib", "f:ev fib"), "'f:ev fib': There is already the exact same probe event: 'f:ev' (column 1)"),
        (("p fib", "p fib"), "'p fib': There is already the exact same probe event: 'p' (column 1)"),
        (
            ("f:ev fib", "f:ev fib%return"),
            "'f:ev fib%return': Probe type is different from existing probe: 'f:ev' (column 1)",
        ),
        (("p:ev fib", "r:ev fib"), "'r:ev fib': Probe type is different from existing probe: 'r:ev' (column 1)"),
        (
            ("f:ev fib n=$arg1", "f:ev add3 m=$arg1"),
            "'f:ev add3 m=$arg1': Argument type or name is different from existing probe: 'm=$arg1' (column 11)",
        ),
        (
            ("f:ev fib n=$arg1", "f:ev add3"),
            "'f:ev add3': Argument type or name is different from existing probe: '' (column 11)",
        ),
        (
            ("p:g/ev fib", "f:g/ev fib"),
            "'f:g/ev fib': Given group/event name is already used by another event: 'f:g/ev' (column 1)",
        ),
    ],
)
@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_probes_the_kernel_refuses_on_an_existing_event(capsys, arch, events, error):
    assert _refusal(capsys, arch, *events) == f"ftlab: error: bad probe spec {error}"


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_one_event_on_several_functions_counts_every_hit(capsys, arch):
    """The kernel appends a probe on another function with the same arguments to the event; its
    hits are all the event's."""
    out = ftlab(
        capsys,
        "trace",
        "--arch",
        arch,
        "funcs",
        "chain_a(10)",
        "-e",
        "f:ev chain_b n=$arg1",
        "-e",
        "f:ev chain_c n=$arg1",
    )
    lines = out.splitlines()
    # chain_a calls chain_b (which calls chain_c) and chain_c: one chain_b and two chain_c hits
    assert [ln.split("ev: (")[1].split("+")[0] for ln in lines if " ev: (" in ln] == ["chain_b", "chain_c", "chain_c"]
    assert "# fprobes/ev: hits 3 nmissed 0" in lines


@pytest.mark.parametrize("arch, offset", [("x86_64", 9), ("arm64", 12)])
def test_kprobe_events_show_irqs_off(capsys, arch, offset):
    """A kprobe event is recorded in the int3/BRK handler, interrupts masked: trace_print_lat_fmt()
    prints 'd' in the irqs-off column. fprobe and kretprobe handlers run with interrupts on."""
    out = ftlab(
        capsys,
        "trace",
        "--arch",
        arch,
        "funcs",
        "fib(2)",
        "-e",
        f"p:px fib+{offset}",
        "-e",
        "f:fx fib",
        "-e",
        "r:rx fib",
    )
    # "           ftlab-1       [000] d....            1: px: (fib+0x9/0x36)": (flags, event)
    seen = {(ln.split("] ")[1][:5], ln.split(": ")[1]) for ln in out.splitlines() if not ln.startswith("#")}
    assert seen == {("d....", "px"), (".....", "fx"), (".....", "rx")}
