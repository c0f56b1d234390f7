"""The trace text and probe-event definitions as the kernel prints and accepts them (issue #10),
each checked against the kernel source, release by release where it changed."""

import io
import json

import pytest

from emulator import FtlabError
from emulator.machine import Machine
from emulator.symbols import Symbol, SymbolTable
from helpers import ftlab, trace_file
from tracers import Lab
from tracers.kernel_version import MODELLED, KernelVersion
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


@pytest.mark.parametrize(
    "arch, kernel", [("x86_64", "6.17"), ("arm64", "6.17"), ("arm64", "7.0")]
)  # arm64's return_to_handler never saved sp; x86's did from 6.18 (the tests below)
def test_stack_at_an_fprobe_exit_on_fgraph_is_a_fault(capsys, arch, kernel):
    """$stack is the sp of the handler's regs (FETCH_OP_STACKP in trace_fprobe.c process_fetch_insn):
    on fgraph (6.14+) return_to_handler's ftrace_regs hold none there, so it is a fault."""
    [ev, _] = _json(ftlab(capsys, "trace", "--arch", arch, "--kernel", kernel, *PROBE_STACK))
    assert ev["fetch"] == {"s": "(fault)", "s1": "(fault)", "r": 6}


@pytest.mark.parametrize("arch", ["x86_64"])  # 8bc11700e0d2 is x86's; arm64's has no sp (above)
def test_stack_at_an_fprobe_exit_on_fgraph_is_the_true_sp_from_7_0(capsys, arch):
    """7.0's return_to_handler stores the sp it was entered with (8bc11700e0d2): $stack is the true
    sp after the function's ret, and $stack1 reads the caller's stack, as the rethook design's
    complete pt_regs gave them (6.12)."""
    [ev, _] = _json(ftlab(capsys, "trace", "--arch", arch, "--kernel", "7.0", "--verify", *PROBE_STACK))
    [rethook, _] = _json(ftlab(capsys, "trace", "--arch", arch, "--kernel", "6.12", *PROBE_STACK))
    assert ev["regs"]["kind"] == "ftrace_regs" and ev["regs"]["mismatch"] == []
    assert ev["fetch"]["s"] == ev["regs"]["truth"]["sp"] and ev["fetch"] == rethook["fetch"]


@pytest.mark.parametrize("arch", ["x86_64"])  # 20a0bc10272f is x86's
def test_stack_at_an_fprobe_exit_on_fgraph_is_the_ftrace_regs_in_6_18(capsys, arch):
    """6.18 and 6.19 store %rsp after building the ftrace_regs (20a0bc10272f): $stack is that
    ftrace_regs' address, 8 + FRAME_SIZE below the true sp, and $stack21 is the return slot
    `subq $8, %rsp` stepped back over, which still holds return_to_handler."""
    spec = "f:fx add3%return s=$stack s21=$stack21 r=$retval"
    lab = Lab.open("funcs", arch, kernel=KernelVersion.parse("6.18"))
    for kernel in ("6.18", "6.19"):
        out = ftlab(capsys, "trace", "--arch", arch, "--kernel", kernel, "--verify", "funcs", "add3(1,2,3)",
                    "-e", spec, "--format", "json")  # fmt: skip
        [ev, _] = _json(out)
        true_sp = ev["regs"]["truth"]["sp"]
        assert ev["regs"]["mismatch"] == ["sp"] and ev["regs"]["fields"]["sp"] == ev["fetch"]["s"]
        assert ev["fetch"]["s"] == true_sp - 8 - lab.karch.ftrace_regs.size
        assert ev["fetch"]["s21"] == lab.fgraph.return_to_handler


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


# -- the trace file's header (kernel/trace/trace.c, v6.17) ---------------------------------------
# s_show() prints "# tracer: %s\n" and "#\n", then the tracer's print_header or, for the function
# and nop tracers (which have none), trace_default_header(): with the default irq-info option,
# print_func_help_header_irq(), which starts with print_event_info(). Its E is what the buffer holds
# (ring_buffer_entries_cpu) and T that plus what overwriting replaced (ring_buffer_overrun_cpu);
# a record refused by a full buffer in no-overwrite mode is in neither (dropped_events).
EVENT_INFO = "# entries-in-buffer/entries-written: %lu/%lu   #P:%d\n".replace("%lu", "%d")
IRQ_HELP = [  # print_func_help_header_irq's format strings; %.*s with prec 2 without record-tgid
    "#                            %.*s  _-----=> irqs-off/BH-disabled\n",
    "#                            %.*s / _----=> need-resched\n",
    "#                            %.*s| / _---=> hardirq/softirq\n",
    "#                            %.*s|| / _--=> preempt-depth\n",
    "#                            %.*s||| / _-=> migrate-disable\n",
    "#                            %.*s|||| /     delay\n",
]


def kernel_trace_header(tracer: str, entries: int, total: int) -> str:
    """The header the kernel's `trace` file starts with, from its format strings, on one CPU."""
    prec, space = 2, "            "
    lines = [f"# tracer: {tracer}\n", "#\n", EVENT_INFO % (entries, total, 1), "#\n"]
    lines += [fmt.replace("%.*s", space[:prec]) for fmt in IRQ_HELP]
    lines.append("#           TASK-PID  %.*s CPU#  |||||  TIMESTAMP  FUNCTION\n".replace("%.*s", "     TGID   "[:prec]))
    lines.append("#              | |    %.*s   |   |||||     |         |\n".replace("%.*s", "       |    "[:prec]))
    return "".join(lines)


FIB10 = ("funcs", "fib(10)", "--filter", "fib")  # 177 calls


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
@pytest.mark.parametrize(
    "options, entries, total, closing",
    [
        ((), 177, 177, None),
        (("--buffer-size", "50", "--buffer-mode", "stream"), 177, 177, None),
        # overwrite: the newest 50 are in the buffer, 177 were written
        (("--buffer-size", "50", "--buffer-mode", "overwrite"), 50, 177, None),
        # drop: the first 50 are in the buffer and counted as written; the rest were dropped
        (("--buffer-size", "50", "--buffer-mode", "drop"), 50, 50, "# lost: 127"),
    ],
)
def test_function_trace_starts_with_the_kernels_header(capsys, arch, options, entries, total, closing):
    out = trace_file(capsys, "trace", "--arch", arch, *FIB10, *options)
    header = kernel_trace_header("function", entries, total)
    assert out.startswith(header)
    body = out[len(header) :].splitlines()
    assert len([ln for ln in body if not ln.startswith("#")]) == entries
    assert [ln for ln in body if ln.startswith("#")] == [*([closing] if closing else []), "# fib(10) = 55 (0x37)"]


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
@pytest.mark.parametrize("mode, entries, total", [("stream", 177, 177), ("overwrite", 50, 177), ("drop", 50, 50)])
def test_function_trace_json_counts_entries_as_the_header_does(capsys, arch, mode, entries, total):
    options = ("--buffer-size", "50", "--buffer-mode", mode, "--format", "json")
    counters = _json(ftlab(capsys, "trace", "--arch", arch, *FIB10, *options))[-1]["counters"]
    assert (counters["entries-in-buffer"], counters["entries-written"]) == (entries, total)
    assert counters.get("overwritten", 0) == total - entries
    assert counters.get("lost", 0) == (127 if mode == "drop" else 0)


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_probe_events_trace_is_the_nop_tracers(capsys, arch):
    """Probe events are traced by the nop tracer: the same default header, E/T its events."""
    out = trace_file(capsys, "trace", "--arch", arch, "funcs", "fib(3)", "-e", "f:fibin fib n=$arg1:s64")
    assert out.startswith(kernel_trace_header("nop", 5, 5))
    assert out.splitlines()[-2:] == ["# fprobes/fibin: hits 5 nmissed 0", "# fib(3) = 2"]


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_function_graph_header_has_no_event_info(capsys, arch):
    """function_graph has its own print_header, print_graph_headers_flags() (kernel/trace/
    trace_functions_graph.c): no print_event_info line; with the default flags (CPU, OVERHEAD,
    DURATION) its two lines are these, from __print_graph_headers_flags()'s pieces."""
    first = "#" + " CPU" + "  DURATION   " + "               FUNCTION CALLS"
    second = "#" + " |  " + "   |   |      " + "               |   |   |   |"
    out = trace_file(capsys, "trace", "--arch", arch, *FUNCS)
    assert out.splitlines()[:4] == ["# tracer: function_graph", "#", first, second]


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_replay_prints_the_same_header(capsys, arch, tmp_path):
    path = str(tmp_path / "rec")
    direct = ftlab(capsys, "trace", "--arch", arch, *FIB10)
    ftlab(capsys, "record", "--arch", arch, *FIB10, "-o", path, "--buffer-size", "16")
    assert ftlab(capsys, "replay", path) == direct
    assert trace_file(capsys, "replay", path).startswith(kernel_trace_header("function", 177, 177))


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_the_trace_names_the_release_it_models(capsys, arch, tmp_path):
    """Above the kernel's header, one line names the release (MODELLED, or --kernel) and the
    arch; a replay names the recording's; JSON puts the release in its summary record."""
    assert ftlab(capsys, "trace", "--arch", arch, *FIB10).startswith(f"# ftlab: Linux {MODELLED} model, {arch}\n")
    path = str(tmp_path / "rec")
    ftlab(capsys, "record", "--arch", arch, *FIB10, "-o", path, "--kernel", "6.8")
    for argv in (("trace", "--arch", arch, *FIB10, "--kernel", "6.8"), ("replay", path)):
        assert trace_file(capsys, *argv, kernel="6.8").startswith("# tracer: function\n")
    assert _json(ftlab(capsys, "replay", path, "--format", "json"))[-1]["kernel"] == "6.8"


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_stack_n_outside_the_task_stack_reads_zero(capsys, arch):
    """regs_get_kernel_stack_nth() returns 0 for a word outside the task's stack
    (regs_within_kernel_stack, arch/<arch>/include/asm/ptrace.h), not a fault: $stackN past the
    stack's top is 0 (the kernel reads no memory there)."""
    spec = "p:k add3 sp=$stack out=$stack2000"
    [ev, _] = _json(ftlab(capsys, "trace", "--arch", arch, "funcs", "add3(1,2,3)", "-e", spec, "--format", "json"))
    base, size = Machine.STACK
    assert base <= ev["fetch"]["sp"] < base + size <= ev["fetch"]["sp"] + 8 * 2000
    assert ev["fetch"]["out"] == 0
