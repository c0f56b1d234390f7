"""The trace text and probe-event definitions as the kernel prints and accepts them (issue #10),
each checked against the kernel source, release by release where it changed."""

import io
import json

import pytest

from emulator import FtlabError
from emulator.symbols import Symbol, SymbolTable
from helpers import ftlab
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


@pytest.mark.parametrize(
    "arch, offset, kernel, kretprobe",
    [("x86_64", 9, "6.17", "....."), ("arm64", 12, "6.17", "d...."), ("arm64", 12, "6.8", ".....")],
)
def test_probe_events_show_irqs_off_as_the_cpu_had_it(capsys, arch, offset, kernel, kretprobe):
    """The irqs-off column (trace_print_lat_fmt()) is the CPU's interrupt mask when the event was
    recorded: 'd' in the int3/BRK handler of a kprobe and of arm64's BRK #7 kretprobe (6.9+);
    '.' in fprobe's handlers, x86's rethook trampoline and arm64's pre-6.9 __kretprobe_trampoline,
    and for a kprobe on an ftrace site (x86 fib+0), which ftrace calls like any ops."""
    out = ftlab(capsys, "trace", "--arch", arch, "funcs", "fib(2)", "--kernel", kernel, "--fprobe-design", "fgraph",
                "-e", f"p:px fib+{offset}", "-e", "p:p0 fib", "-e", "f:fx fib", "-e", "r:rx fib")  # fmt: skip
    # "           ftlab-1       [000] d....            1: px: (fib+0x9/0x36)": (flags, event)
    seen = {(ln.split("] ")[1][:5], ln.split(": ")[1]) for ln in out.splitlines() if not ln.startswith("#")}
    p0 = "....." if arch == "x86_64" else "d...."  # arm64 has no kprobes on ftrace
    assert seen == {("d....", "px"), (p0, "p0"), (".....", "fx"), (kretprobe, "rx")}
