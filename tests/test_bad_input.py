"""Issue #11: every bad input is a clean one-line error, and an error during a trace loses nothing.

Options are checked by argparse with the kernel's meaning, calls against the function's signature
(the bundled fixtures' catalog, or the object's DWARF), `--at` against what the call reaches, and a
trace stopped by a fault or the budget still prints what it recorded, with why it stopped."""

import json
import platform
import shutil
import subprocess

import pytest

from emulator import FtlabError, Machine
from emulator import arch as arches
from emulator.errors import BudgetExhausted
from fixtures import catalog
from tracers import Lab
from tracers.builtin.function import FunctionTracer
from tracers.builtin.tracer import stop_reason
from tracers.call_syntax import parse_calls
from tracers.calls import dwarf_signatures
from tracers.cli.main import main
from tracers.cli.mechanisms import capture_all
from tracers.output.sinks import ListSink


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def error(capsys, *argv) -> str:
    """The one line a refused command prints on stderr (exit 1), its stdout empty."""
    code, out, err = run(capsys, *argv)
    assert (code, out) == (1, ""), err
    assert err.startswith("ftlab: error: ") and err.count("\n") == 1, err
    return err[len("ftlab: error: ") : -1]


def usage_error(capsys, *argv) -> str:
    """argparse's refusal of an option's value: usage, then one line naming the option (exit 2)."""
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert "internal error" not in err
    return err.splitlines()[-1]


# -- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["-1", "0x2", "two", "1.5", "", "4294967296", str(1 << 64)])
def test_max_graph_depth_takes_what_the_kernel_file_takes(capsys, value):
    """graph_depth_write(): kstrtoul base 10 (no sign, no 0x) into the unsigned int fgraph_max_depth."""
    for cmd in (["trace", "--tracer", "function_graph"], ["record", "-o", "x.ftl"]):
        line = usage_error(capsys, *cmd, "--arch", "x86_64", "funcs", "fib(3)", "--max-graph-depth", value)
        assert "argument --max-graph-depth:" in line


def test_max_graph_depth_zero_is_no_limit_and_uint_max_is_accepted(capsys, arch):
    def calls(depth):
        code, out, err = run(
            capsys, "trace", "--arch", arch, "funcs", "fib(4)", "--tracer", "function_graph", "--max-graph-depth", depth
        )
        assert (code, err) == (0, "")
        return out.count("fib()")

    assert calls("0") == calls("4294967295") == calls("+4294967295") == 9  # fib(4) enters fib 9 times
    assert calls("1") == 1 and calls("2") == 3


@pytest.mark.parametrize(
    "option, value",
    [
        ("--budget", "-1"),
        ("--budget", str(1 << 64)),
        ("--budget", "x"),
        ("--buffer-size", "0"),
        ("--buffer-size", "-5"),
    ],
)
def test_numeric_options_are_refused_out_of_range(capsys, option, value):
    line = usage_error(capsys, "trace", "--arch", "arm64", "funcs", "fib(3)", option, value)
    assert f"argument {option}:" in line


def test_the_largest_budget_is_unicorns(capsys, arch):
    assert run(capsys, "run", "--arch", arch, "--budget", str((1 << 64) - 1), "funcs", "fib(5)")[1] == "fib(5) = 5\n"


# -- calls --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, message",
    [
        ("fib()", "fib() takes 1 argument (long n), got 0 (its signature from fixtures/src/funcs.c)"),
        ("fib(1, 2)", "fib() takes 1 argument (long n), got 2 (its signature from fixtures/src/funcs.c)"),
        ("add3(1)", "add3() takes 3 arguments (int a, long b, long c), got 1 (its signature from fixtures/"),
        (f"sum10({', '.join(['1'] * 10_000)})", "sum10() takes 10 arguments (long a1, "),
        ("ftrace_caller(1)", "'ftrace_caller' is the lab's own code, not a function of funcs.o"),
        ("return_to_handler()", "'return_to_handler' is the lab's own code, not a function of funcs.o"),
        ("ftlab_caller()", "'ftlab_caller' is the lab's own code, not a function of funcs.o"),
        ("nosuch(1)", "no symbol 'nosuch' in the loaded objects"),
    ],
)
def test_a_call_the_signature_refuses_is_one_line(capsys, arch, call, message):
    for cmd in ("run", "trace"):
        assert error(capsys, cmd, "--arch", arch, "funcs", call).startswith(message)
    assert error(capsys, "regs", "--arch", arch, "funcs", call, "--at", "fib").startswith(message)


def test_every_bundled_function_takes_what_the_catalog_says(arch):
    """The prototypes read from the fixtures' C source against the catalog's (the tests' oracle):
    the same parameters, so each catalog example passes and one argument more or less does not."""
    lab = Lab.open("funcs", arch)
    for f in catalog.FUNCTIONS.values():
        params = f.signature[f.signature.index("(") + 1 : -1].split(", ")
        sig = lab.calls.signatures[f.name]
        assert sig.params == tuple(params) and not sig.variadic
        for args in f.examples:
            assert lab.call(f.name, *args, ret=f.ret) == f.reference(*args)
            for wrong in (args[:-1], (*args, 0)):
                with pytest.raises(FtlabError, match=rf"^{f.name}\(\) takes {len(params)} argument"):
                    lab.call(f.name, *wrong)


def test_stubs_and_data_are_not_callable_and_imports_c_has_its_signature(capsys, arch):
    obj = f"fixtures/obj/{arch}/imports.o"
    stubs = ["--stub", "helper", "--stub", "jiffies_like=data"]
    assert error(capsys, "run", obj, *stubs, "helper(1)") == (
        "'helper' is undefined in imports.o (a --stub stands in for it), not one of its functions"
    )
    assert error(capsys, "run", obj, *stubs, "jiffies_like(1)") == (
        "'jiffies_like' is a data stub (--stub jiffies_like=data), not a function: it cannot be called"
    )
    assert error(capsys, "run", obj, *stubs, "use_helper()").endswith("(its signature from fixtures/src/imports.c)")
    assert run(capsys, "run", obj, *stubs, "use_helper(4)")[1] == "use_helper(4) = 1\n"  # stubs: 0, 0


def test_without_a_signature_a_call_is_passed_as_given_up_to_the_argument_area(capsys, arch, tmp_path):
    """An object with neither a bundled source nor DWARF: any count, as long as the arguments past
    the registers fit in the stack area the lab reserves for them."""
    obj = tmp_path / "copy.o"
    shutil.copy(catalog.variant(arch, "funcs").path, obj)
    assert run(capsys, "run", str(obj), "fib(10, 2)")[1] == "fib(10, 2) = 55 (0x37)\n"
    assert run(capsys, "run", str(obj), "fib()")[0] == 0  # whatever the register held
    regs = len(arches.get(arch).arg_regs)
    most = regs + Machine.ARG_AREA // 8
    assert run(capsys, "run", str(obj), f"fib({', '.join(['3'] * most)})")[1].endswith(" = 2\n")
    assert error(capsys, "run", str(obj), f"fib({', '.join(['3'] * (most + 1))})") == (
        f"fib: {most + 1} arguments do not fit: at most {most} ({regs} in registers, {most - regs} in the "
        f"{Machine.ARG_AREA} bytes of stack the lab reserves for arguments)"
    )


DWARF_C = """
struct pt { long x, y; };
long one(long x) { return x + 1; }
long none(void) { return 7; }
long knr() { return 3; }
long va(long n, ...) { return n; }
long ptrs(const char *s, struct pt *p, unsigned int u) { return p->x + s[0] + u; }
"""


@pytest.fixture(scope="module")
def dwarf_object(tmp_path_factory):
    """A small x86_64 object with DWARF (gcc -g), built here: the bundled fixtures have none."""
    gcc = shutil.which("gcc")
    if gcc is None or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("needs a native x86_64 gcc to build an object with DWARF")
    d = tmp_path_factory.mktemp("dwarf")
    (d / "d.c").write_text(DWARF_C)
    flags = "-g -O2 -fno-pic -mcmodel=kernel -mno-red-zone -ffreestanding -fno-stack-protector -pg -mfentry"
    done = subprocess.run([gcc, *flags.split(), "-c", "d.c", "-o", "d.o"], cwd=d, capture_output=True, check=False)
    if done.returncode:
        pytest.skip(f"gcc could not build the DWARF object: {done.stderr.decode()[:200]}")
    return d / "d.o"


def test_dwarf_signatures(dwarf_object):
    sigs = dwarf_signatures(dwarf_object)
    assert set(sigs) == {"one", "none", "va", "ptrs"}  # knr() is not prototyped: nothing known
    assert sigs["one"].params == ("long int x",) and sigs["none"].params == ()
    assert sigs["va"].params == ("long int n",) and sigs["va"].variadic
    assert sigs["ptrs"].params == ("const char *s", "struct pt *p", "unsigned int u")
    assert {s.source for s in sigs.values()} == {"d.o's DWARF"}


def test_dwarf_arity_on_the_command_line(capsys, dwarf_object):
    obj = str(dwarf_object)
    assert run(capsys, "run", obj, "one(41)")[1] == "one(41) = 42 (0x2a)\n"
    assert run(capsys, "run", obj, "knr(1, 2)")[1] == "knr(1, 2) = 3\n"  # K&R: passed as given
    assert run(capsys, "run", obj, "va(5, 6, 7)")[1] == "va(5, 6, 7) = 5\n"
    assert error(capsys, "run", obj, "one()") == (
        "one() takes 1 argument (long int x), got 0 (its signature from d.o's DWARF)"
    )
    assert error(capsys, "run", obj, "none(1)").startswith("none() takes 0 arguments (void), got 1")
    assert error(capsys, "run", obj, "va()").startswith("va() takes at least 1 argument (long int n, ...), got 0")


def test_unreadable_dwarf_is_no_signature(tmp_path):
    junk = tmp_path / "junk.o"
    junk.write_bytes(b"\x7fELF" + bytes(60))
    assert dwarf_signatures(junk) == {} and dwarf_signatures(tmp_path / "missing.o") == {}


# -- --at a function the call never reaches ----------------------------------------------------


def test_regs_and_compare_at_a_function_the_call_never_reaches(capsys, arch):
    """fib never calls chain_c: no snapshot to show, so one line says so (no table of zeros)."""
    lab = Lab.open("funcs", arch)
    after_site = lab.ftrace.site("chain_c").ip + lab.karch.sites.size - lab.machine.address_of("chain_c")
    for fmt in ("text", "json"):
        assert error(capsys, "regs", "--arch", arch, "funcs", "fib(3)", "--at", "chain_c", "--format", fmt) == (
            "fib(3) never reached chain_c"
        )
    at = f"chain_c+{after_site:#x}"  # a kprobe on the instruction after the patch site
    assert error(capsys, "regs", "--arch", arch, "funcs", "fib(3)", "--at", at) == f"fib(3) never reached {at}"
    assert error(capsys, "compare", "funcs", " fib(3) ", "--at", "chain_c") == "fib(3) never reached chain_c"
    out = run(capsys, "regs", "--arch", arch, "funcs", "chain_a(3)", "--at", "chain_c")[1]
    assert out.startswith(f"# {arch}: one hit at chain_c during chain_a(3)")  # reached: the table


def test_capture_all_names_the_call_it_was_given(arch):
    lab = Lab.open("funcs", arch)
    with pytest.raises(FtlabError, match=r'^crc32_bitwise\(0, b"12", 2\); fib\(1\) never reached chain_c$'):
        capture_all(lab, "chain_c", parse_calls('crc32_bitwise(0, b"12", 2);\n fib(1)'))


# -- an error during a trace --------------------------------------------------------------------

STOPPED = {
    "function": [],
    "function_graph": ["--tracer", "function_graph"],
    "nop with a probe event": ["-e", "f fib n=$arg1"],
    "function with a probe event": ["--tracer", "function", "-e", "f fib n=$arg1"],
    "function, verified": ["--verify"],
    "function_graph, insns clock": ["--tracer", "function_graph", "--clock", "insns"],
}


@pytest.mark.parametrize("options", STOPPED.values(), ids=STOPPED.keys())
def test_a_trace_the_budget_stops_keeps_its_events_and_says_why(capsys, arch, options):
    """The budget runs out mid-recursion: the events recorded so far are all printed (the function
    tracer's held lines too, under a header counting them), then `# stopped: REASON`, then the
    error's one line on stderr."""
    code, out, err = run(capsys, "trace", "--arch", arch, "--budget", "3000", "funcs", "fib(10)", *options)
    assert code == 1 and err.startswith("ftlab: error: instruction budget of 3,000 exhausted at ")
    assert err.count("\n") == 1
    lines = out.splitlines()
    assert lines[-1] == "# stopped: " + err[len("ftlab: error: ") : -1]
    assert not any(line.startswith("# fib(10) =") for line in lines)  # no result
    events = [line for line in lines if not line.startswith("#")]
    assert len(events) > 10
    if "function_graph" not in options:
        header = next(line for line in lines if line.startswith("# entries-in-buffer/entries-written: "))
        assert header.split()[2].split("/") == [str(len(events))] * 2


@pytest.mark.parametrize("tracer", ["function", "function_graph"])
def test_a_json_trace_the_budget_stops_ends_with_a_stopped_record(capsys, arch, tracer):
    code, out, err = run(
        capsys, "trace", "--arch", arch, "--budget", "3000", "funcs", "fib(10)", "--tracer", tracer, "--format", "json"
    )
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 1 and [r["type"] for r in records[-2:]] == ["summary", "stopped"]
    assert records[-1]["reason"] == err[len("ftlab: error: ") : -1]
    assert records[-1]["reason"].startswith("instruction budget of 3,000 exhausted at ")
    assert len(records) > 12 and "stopped" not in records[-2]


def test_a_guest_fault_mid_trace_keeps_the_entry(capsys, arch):
    """popcount_buf faults on its first load: its entry is traced, then the fault stops the run."""
    for options in ([], ["--tracer", "function_graph"], ["-e", "f popcount_buf p=$arg1"]):
        code, out, err = run(capsys, "trace", "--arch", arch, "funcs", "popcount_buf(16, 4)", *options)
        reason = err[len("ftlab: error: ") : -1]
        assert code == 1 and reason.startswith("guest fault: read of unmapped address 0x10 at ")
        assert out.splitlines()[-1] == f"# stopped: {reason}"
        assert [line for line in out.splitlines() if "popcount_buf" in line and not line.startswith("#")]


def test_the_python_api_sees_why_a_trace_stopped(arch):
    lab = Lab.open("funcs", arch, budget=2000)
    sink = ListSink()
    with pytest.raises(BudgetExhausted), FunctionTracer(lab, sink):
        lab.call("fib", 10)
    assert sink.summary["stopped"].startswith("instruction budget of 2,000 exhausted")
    assert sink.summary["counters"]["entries-written"] == len(sink.events) > 0
    lab.machine.budget = 0
    with FunctionTracer(lab, sink):  # the lab traces again, and a whole trace has no `stopped`
        assert lab.call("fib", 3) == 2
    assert "stopped" not in sink.summary


def test_stop_reason_words():
    assert stop_reason(FtlabError("x")) == "x"
    assert stop_reason(KeyboardInterrupt()) == "interrupted"
    assert stop_reason(KeyError(3)) == "internal error: KeyError: 3"


def test_the_python_api_still_calls_an_address_as_given(arch):
    lab = Lab.open("funcs", arch)
    assert lab.call(lab.machine.address_of("fib"), 10) == 55
    with pytest.raises(FtlabError, match=r"^fib\(\) takes 1 argument"):
        lab.call("fib", 10, 11)
