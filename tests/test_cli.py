"""The ftlab command line: what the README's tour shows, and a one-line error for each bad input."""

import json
import re
import subprocess
import sys

import pytest

from fixtures import catalog
from helpers import FPROBE_DESIGNS
from tracers.cli.main import main, parser
from tracers.kernel_version import MODELLED, KernelVersion

LINE = re.compile(r"^ {11}ftlab-1 {7}\[000\] \.{5} +\d+: \w+ <-\w+$")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def ok(capsys, *argv) -> str:
    """The output of a command that must succeed."""
    code, out, err = run(capsys, *argv)
    assert (code, err) == (0, "")
    return out


def test_run_prints_the_result(capsys, arch):
    assert run(capsys, "run", "--arch", arch, "funcs", "fib(20)") == (0, "fib(20) = 6765 (0x1a6d)\n", "")
    out = ok(capsys, "run", "--arch", arch, "funcs", 'crc32_bitwise(0, b"123456789", 9)')
    assert out.endswith("= 3421780262 (0xcbf43926)\n")
    assert (
        run(capsys, "run", "--arch", arch, "funcs", "divmod(-47, 5)", "--ret", "pair")[1]
        == "divmod(-47, 5) = (-9, -2)\n"
    )


def test_run_on_both_arches_and_on_a_file(capsys):
    assert (
        run(capsys, "run", "--arch", "all", "funcs", "add3(-1, 0x100000000, 5)")[1]
        == "x86_64: add3(-1, 0x100000000, 5) = 4\narm64: add3(-1, 0x100000000, 5) = 4\n"
    )
    path = str(catalog.variant("arm64", "funcs-bti").path)
    assert run(capsys, "run", path, "fib(10)")[1] == "fib(10) = 55 (0x37)\n"  # arch from the ELF header


def test_sites_lists_three_states(capsys, arch):
    out = ok(capsys, "sites", "--arch", arch, "funcs")
    assert out.startswith("# funcs.o: 12 patch sites")
    assert out.count("    compiled ") == out.count("    init ") == out.count("    enabled ") == 12
    assert out.count("<ftrace_caller>") == 12


def test_trace_text_is_the_kernel_function_format(capsys, arch):
    out = ok(capsys, "trace", "--arch", arch, "funcs", "chain_a(10)", "--verify")
    lines = out.splitlines()
    assert lines[:2] == [f"# ftlab: Linux {MODELLED} model, {arch}", "# tracer: function"]
    events = [ln for ln in lines if not ln.startswith("#")]
    assert all(LINE.match(ln) for ln in events) and len(events) == 4
    assert events[1].endswith("2: chain_b <-chain_a")
    assert "# verify: 4 of 4 snapshots equal the true registers in every captured field" in lines
    assert lines[-1] == "# chain_a(10) = 129 (0x81)"


def test_trace_json_events(capsys, arch):
    out = ok(
        capsys,
        "trace",
        "--arch",
        arch,
        "funcs",
        "sum10(1,2,3,4,5,6,7,8,9,10)",
        "--format",
        "json",
        "--verify",
        "--filter",
        "sum*",
    )
    [event, summary] = [json.loads(ln) for ln in out.splitlines()]
    assert summary == {
        "arch": arch,
        "tracer": "function",
        "type": "summary",
        "kernel": str(MODELLED),
        "counters": {"entries-in-buffer": 1, "entries-written": 1},
        "verify": {"snapshots": 1, "mismatching": 0},
    }
    assert {k: event[k] for k in ("arch", "tracer", "type", "func", "depth", "args", "ts")} == {
        "arch": arch,
        "tracer": "function",
        "type": "entry",
        "func": "sum10",
        "depth": 0,
        "args": [1, 2, 3, 4, 5, 6],
        "ts": 1,
    }
    regs = event["regs"]
    assert regs["kind"] == "ftrace_regs" and regs["mismatch"] == []
    assert "pstate" in regs["missing"] or "flags" in regs["missing"]
    assert event["ip"] < event["regs"]["fields"]["ip" if arch == "x86_64" else "pc"]


def test_function_graph_text_and_json(capsys, arch):
    out = ok(capsys, "trace", "--arch", arch, "funcs", "tail_a(5)", "--tracer", "function_graph", "--funcgraph-tail")
    assert [ln[4:] for ln in out.splitlines() if not ln.startswith("#")] == [
        "              |  tail_a() {",
        "  1 ev        |    tail_b();",
        "  3 ev        |  } /* tail_a */",
    ]
    assert "# entries: 2, exits: 2, trace_overrun: 0" in out
    out = ok(
        capsys, "trace", "--arch", arch, "funcs", "fib(2)", "--tracer", "function_graph", "--format", "json", "--verify"
    )
    records = [json.loads(ln) for ln in out.splitlines()]
    assert [(r["type"], r.get("depth")) for r in records] == [
        ("entry", 0),
        ("entry", 1),
        ("exit", 1),
        ("entry", 1),
        ("exit", 1),
        ("exit", 0),
        ("summary", None),
    ]
    assert [r["retval"] for r in records if r["type"] == "exit"] == [1, 0, 1]
    assert all(r["regs"]["mismatch"] == [] for r in records[:-1])
    assert records[-1]["counters"] == {"entries": 3, "exits": 3, "trace_overrun": 0}


PROBES = [
    "f:crc crc32_bitwise crc=$arg1:x32 buf=+0($arg2):string second=+1($arg2):u8 len=$arg3",
    "f crc32_bitwise%return $retval:x32 len=$arg3:u32",
    "r2:grp/ret crc32_bitwise r=$retval:u32",
]


@pytest.mark.parametrize("arch, design", FPROBE_DESIGNS)
def test_probe_events(capsys, arch, design):
    argv = ["trace", "--arch", arch, "funcs", 'crc32_bitwise(0, b"123456789", 9)', "--fprobe-design", design]
    out = ok(capsys, *argv, *(arg for p in PROBES for arg in ("-e", p)))
    lines = [ln.split(": ", 1)[1] for ln in out.splitlines() if not ln.startswith("#")]
    site = "0x0" if arch == "x86_64" else "0x4"
    assert lines[0].startswith(f"crc: (crc32_bitwise+{site}/0x")
    assert lines[0].endswith(') crc=0x0 buf="123456789" second=50 len=0x9')
    assert sorted(ln.split(": ")[0] for ln in lines[1:]) == ["crc32_bitwise__exit", "ret"]
    # the kretprobe hooked the return after the fprobe did, so its caller may be the other hook's
    # trampoline (return_to_handler / arch_rethook_trampoline / __kretprobe_trampoline), exactly as
    # the kernel would print
    assert any(ln.startswith("ret: (") and ln.endswith("<- crc32_bitwise) r=3421780262") for ln in lines)
    assert any(ln.endswith("<- crc32_bitwise) arg1=0xcbf43926 len=9") for ln in lines)
    assert "# fprobes/crc: hits 1 nmissed 0" in out and "# grp/ret: hits 1 nmissed 0" in out
    out = ok(capsys, *argv, "-e", PROBES[0], "--format", "json")
    event = json.loads(out.splitlines()[0])
    assert (event["event"], event["tracer"], event["type"]) == ("fprobes/crc", "fprobe", "entry")
    assert event["fetch"] == {"crc": 0, "buf": '"123456789"', "second": 50, "len": 9}


def test_kprobe_events(capsys, arch):
    reg = {"x86_64": "%di", "arm64": "%x0"}[arch]
    out = ok(
        capsys,
        "trace",
        "--arch",
        arch,
        "funcs",
        "fib(2)",
        "-e",
        f"p:myk fib+{{off}} n={reg}:u32".format(off="0xf" if arch == "x86_64" else "0x18"),
        "-e",
        "p fib%return ret=$retval:s64",
        "--verify",
    )
    lines = [ln.split(": ", 1)[1] for ln in out.splitlines() if not ln.startswith("#")]
    assert [ln.split(" ", 1)[0] for ln in lines].count("myk:") == 3
    assert [ln.rsplit(" ", 1)[1] for ln in lines if ln.startswith("myk:")] == ["n=2", "n=1", "n=0"]
    assert sorted(ln.rsplit(" ", 1)[1] for ln in lines if ln.startswith("r_fib_0:")) == ["ret=0", "ret=1", "ret=1"]
    # both arches' kretprobe pt_regs are exact: x86's rethook trampoline, arm64's BRK #7 (6.9+)
    assert "# verify: 6 of 6 snapshots equal the true registers in every captured field" in out


def test_python_m_tracers_is_the_cli():
    done = subprocess.run(
        [sys.executable, "-m", "tracers", "run", "--arch", "arm64", "funcs", "fib(12)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == "fib(12) = 144 (0x90)\n"


BAD = [
    (["run", "--arch", "arm64", "nosuch", "fib(1)"], r"unknown fixture 'nosuch' for arm64"),
    (["run", "funcs", "fib(1)"], r"'funcs' is a bundled fixture: say which --arch"),
    (["run", "--arch", "sparc", "funcs", "fib(1)"], r"unknown architecture 'sparc'"),
    (["run", "--arch", "arm64", "funcs", "nosuch(1)"], r"no symbol 'nosuch' in the loaded objects"),
    (["run", "--arch", "arm64", "funcs", "fib("], r"malformed CALL 'fib\(': expected NAME\(ARG, \.\.\.\)"),
    (["run", "--arch", "arm64", "funcs", "fib(n)"], r"malformed CALL 'fib\(n\)': argument 'n' is not"),
    (
        ["run", "--arch", "x86_64", "fixtures/obj/arm64/funcs.o", "fib(1)"],
        r"fixtures/obj/arm64/funcs.o is an arm64 object; --arch x86_64 contradicts it",
    ),
    (
        ["run", "--arch", "arm64", "funcs", "popcount_buf(16, 4)"],
        r"guest fault: read of unmapped address 0x10 at 0x[0-9a-f]+ <popcount_buf\+0x[0-9a-f]+>: ldrb",
    ),
    (
        ["run", "--arch", "x86_64", "--budget", "5000", "funcs", "fib(25)"],
        r"instruction budget of 5,000 exhausted at 0x[0-9a-f]+ <fib",
    ),
    (["run", "fixtures/obj/x86_64/imports.o", "use_helper(1)"], r"2 undefined symbols: helper \(used at use_helper"),
    (
        ["record", "--arch", "arm64", "funcs", "fib(3)", "-o", "/nonexistent/dir/x.ftl"],
        r"/nonexistent/dir/x.ftl: No such file or directory",
    ),
    (
        ["trace", "--arch", "arm64", "funcs", "fib(3)", "-o", "/nonexistent/dir/x.txt"],
        r"/nonexistent/dir/x.txt: No such file or directory",
    ),
    (["trace", "--arch", "arm64", "funcs", "fib(3)", "--filter", "nope"], r"filter 'nope' matches no"),
    (
        ["trace", "--arch", "arm64", "funcs", "fib(3)", "-e", "f fib $retval $foo"],
        r"bad probe spec 'f fib \$retval \$foo': Invalid \$-valiable specified: '\$foo' \(column 15\)",
    ),
    (["trace", "--arch", "x86_64", "funcs", "fib(3)", "-e", "f fib %x0"], r"Invalid \$-valiable specified"),
    (["trace", "--arch", "x86_64", "funcs", "fib(3)", "-e", "r fib %x0"], r"Invalid register name: '%x0'"),
    (["trace", "--arch", "arm64", "funcs", "fib(3)", "-e", "f nosuch"], r"'nosuch' has no patch site"),
    (["trace", "--arch", "arm64", "funcs", "fib(3)", "-e", "p fib+0x2"], r"Probe point is not an instruction boundary"),
    (
        ["trace", "--arch", "arm64", "funcs", "fib(3)", "-e", "p fib+0x4"],
        r"fib\+0x4 is an ftrace site, which needs KPROBES_ON_FTRACE",
    ),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a[:4]) for a, _ in BAD])
def test_bad_input_is_one_line_and_nonzero(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("ftlab: error: ")
    assert re.search(message, err), err


def test_negative_budget_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--arch", "arm64", "--budget", "-5", "funcs", "fib(3)"])
    assert exit_.value.code == 2 and "-5 is negative" in capsys.readouterr().err


def test_non_elf_file(capsys, tmp_path):
    bad = tmp_path / "notes.o"
    bad.write_text("hello")
    code, _, err = run(capsys, "run", str(bad), "f(1)")
    assert (code, err) == (1, f"ftlab: error: {bad}: not an ELF file\n")


def test_stubs_from_the_command_line(capsys):
    out = ok(
        capsys,
        "run",
        "fixtures/obj/arm64/imports.o",
        "use_helper(1)",
        "--stub",
        "helper",
        "--stub",
        "jiffies_like=data",
    )
    assert out == "use_helper(1) = 1\n"


def test_kernel_version_is_parsed_and_bounded(capsys):
    assert KernelVersion.parse("v6.13.7") == KernelVersion(6, 13) < MODELLED
    for bad, message in (
        ("7.1", f"kernel version 7.1: the lab models 5.18 to {MODELLED}"),
        ("six", "kernel version 'six': expected MAJOR.MINOR"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["run", "--arch", "arm64", "funcs", "fib(3)", "--kernel", bad])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert f"The lab models Linux {MODELLED}" in " ".join(parser().format_help().split())
