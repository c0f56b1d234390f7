"""A sweep of bad and odd command lines through the CLI (issue #11): each ends in output and exit 0,
in exactly one `ftlab: error: ...` line and exit 1, or in argparse's usage error (exit 2), and
never in `ftlab: internal error` or a traceback. Runaway code is stopped by the lab's instruction
budget, so nothing here can hang.

The whole sweep is in the slow set; QUICK, a few of each kind, runs by default.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tracers.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
X86, ARM = "x86_64", "arm64"
SMALL = ("--budget", "200000")  # every case runs under a budget: nothing can hang

# Placeholders replaced by files made for each run (see _files).
EMPTY, TEXT, DIR, TRUNCATED, HOST_ELF, MISSING = "{empty}", "{text}", "{dir}", "{truncated}", "{host-elf}", "{missing}"


def _cases() -> list[tuple[str, list[str]]]:
    cases: list[tuple[str, list[str]]] = []

    def add(kind: str, *argv: str) -> None:
        cases.append((f"{kind}-{len(cases)}", list(argv)))

    # -- malformed calls --------------------------------------------------------------------------
    calls = [
        "",
        " ",
        "fib",
        "fib(",
        "fib)",
        "(1)",
        "fib(1,)",
        "fib(1 2)",
        "fib(n)",
        "fib(1.5)",
        "fib(True)",
        "fib(None)",
        "fib(-1)",
        "fib(2**70)",
        "fib(18446744073709551616)",
        "fib(-9223372036854775809)",
        "fib(1)(2)",
        "a.b(1)",
        "fib(*x)",
        "fib(k=1)",
        "fib([1])",
        "fib(b'')",
        "fib('x')",
        "fib(0x10)",
        "fib(1_0)",
        "fib(--1)",
        "lambda: 1",
        "fib(1); import os",
        "__import__('os').getcwd()",
        "fib((1))",
        "fib(((1,2)))",
        "fib(1j)",
        "fib(...)",
        "fib(b'\\x00' * 3)",
        "crc32_bitwise(0, '\\u00e9', 2)",
        "add3(" + ", ".join(["1"] * 40) + ")",
        "sum10(1,2,3,4,5,6,7,8,9,10,11,12,13)",
        "fib(\n3)",
        "FIB(3)",
        "fib (3)",
        "  fib(3)  ",
        "fib(3)\n",
        "f\u00efb(3)",
        "fib(3) + 1",
        "[fib(3)]",
    ]
    for call in calls:
        add("call", "run", "--arch", X86, *SMALL, "funcs", call)
    for call in calls[::5]:
        add("call", "trace", "--arch", ARM, *SMALL, "funcs", call)
    # -- unknown, odd and lab symbols ---------------------------------------------------------------
    for name in (
        "nosuch",
        "_start",
        "main",
        "ftlab_caller",
        "__fentry__",
        "_mcount",
        "ftrace_caller",
        "ftrace_regs_caller",
        "return_to_handler",
        "rb_reserve",
        "ring_buffer_full",
        "function_trace_call",
        "graph_trace_entry",
        "graph_trace_return",
        "arch_rethook_trampoline",
        "__kretprobe_trampoline",
        "memcpy",
        "memset",
        "helper",
    ):
        for arch in (X86, ARM):
            add("symbol", "run", "--arch", arch, *SMALL, "funcs", f"{name}(0, 0, 0)")
    add("symbol", "trace", "--arch", X86, *SMALL, "funcs", "ftrace_caller(0)")
    add("symbol", "trace", "--arch", ARM, *SMALL, "funcs", "return_to_handler(0)", "--tracer", "function_graph")
    # -- object files and fixture names ---------------------------------------------------------------
    for obj in (
        EMPTY,
        TEXT,
        DIR,
        TRUNCATED,
        HOST_ELF,
        MISSING,
        "nosuch",
        "nosuch.o",
        "funcs.o",
        "",
        ".",
        "/",
        "fixtures/obj",
        "fixtures/obj/arm64/imports.o",
        "fixtures/src/funcs.c",
        "README.md",
    ):
        add("obj", "run", "--arch", X86, *SMALL, obj, "fib(3)")
        add("obj", "sites", obj)
    for obj in (EMPTY, TEXT, TRUNCATED, HOST_ELF):
        add("obj", "trace", *SMALL, obj, "fib(3)")
    for arch in ("nosuch", "", "all", "ALL", "x86", "aarch64", "arm", "x86_64 ", "sparc"):
        add("arch", "run", "--arch", arch, *SMALL, "funcs", "fib(3)")
        add("arch", "run", "--arch", arch, *SMALL, "fixtures/obj/x86_64/funcs.o", "fib(3)")
    add("arch", "sites", "funcs")
    add("arch", "sites", "--arch", "all", "funcs-nop")
    add("arch", "sites", "--arch", ARM, "funcs-nop")
    # -- filter and notrace globs ---------------------------------------------------------------------
    globs = [
        "[",
        "[!",
        "[]",
        "[]]",
        "*[",
        "\\",
        "\\*",
        "!",
        "!*",
        "",
        " ",
        "!nosuch",
        "fib,add3",
        "**/",
        "[z-a]",
        "[a-",
        "[!a]*",
        "**",
        "*",
        "?",
        "????",
        "fib*",
        "*fib*",
        "!fib",
        "chain_?",
        "[[:alpha:]]*",
        "(",
        ".*",
        "^fib$",
        "fib\x00",
        "\u00e9*",
        "*" * 200,
    ]
    for glob in globs:
        add("glob", "trace", "--arch", X86, *SMALL, "funcs", "chain_a(3)", "--filter", glob)
        add("glob", "trace", "--arch", ARM, *SMALL, "funcs", "chain_a(3)", "--notrace", glob)
    for glob in globs[::4]:
        add(
            "glob",
            "trace",
            "--arch",
            ARM,
            *SMALL,
            "funcs",
            "chain_a(3)",
            "--tracer",
            "function_graph",
            "--filter",
            glob,
        )
        add(
            "glob",
            "trace",
            "--arch",
            X86,
            *SMALL,
            "funcs",
            "chain_a(3)",
            "--filter",
            "*",
            "--filter",
            glob,
            "--notrace",
            glob,
        )
    # -- option values ------------------------------------------------------------------------------
    values = {
        "--budget": [
            "-1",
            "0x10",
            "abc",
            "",
            "1",
            "10",
            "1e3",
            "99999999999999999999999",
            str(1 << 64),
            str((1 << 64) - 1),
            str(1 << 63),
            "0b101",
            "  5",
            "+5",
            "5.0",
            "-0",
        ],
        "--buffer-size": [
            "0",
            "-1",
            "1",
            "2",
            "1e3",
            "abc",
            "99999999999999999999999",
            str(1 << 64),
            "1000000",
            "0x10",
        ],
        "--clock": ["nosuch", "", "INSNS", "insns", "counter", "local", "global"],
        "--kernel": [
            "1.0",
            "abc",
            "",
            "6",
            "6.4",
            "6.5",
            "6.17",
            "7.0",
            "7.1",
            "99.0",
            "6.17.3",
            "v6.17",
            "6.17-rc1",
            "-1",
            "6.x",
        ],
        "--ret": ["nosuch", "", "i128", "pair", "u8", "I64"],
        "--format": ["nosuch", "", "json", "JSON"],
        "--buffer-mode": ["nosuch", "", "drop", "overwrite"],
        "--fprobe-design": ["nosuch", "", "rethook"],
        "--tracer": ["nosuch", "", "nop", "function", "function_graph"],
        "--max-graph-depth": ["-1", "0", "1", "abc", "99999999999999999999999", str(1 << 64)],
        "--stub": ["", "=", "=data", "helper=", "helper=nosuch", "fib", "fib=data", "x" * 300],
    }
    for option, vals in values.items():
        for value in vals:
            add("option", "trace", "--arch", X86, *SMALL, "funcs", "fib(3)", option, value)
            if option in ("--buffer-size", "--max-graph-depth", "--buffer-mode"):
                add(
                    "option",
                    "trace",
                    "--arch",
                    ARM,
                    *SMALL,
                    "funcs",
                    "fib(5)",
                    "--tracer",
                    "function_graph",
                    option,
                    value,
                )
    add("option", "trace", "--arch", X86, "funcs", "fib(3)", "--budget")
    add("option", "trace", "--arch", X86, "funcs", "fib(3)", "--nosuch")
    add("option", "trace", "--arch", X86, "funcs")
    add("option", "trace")
    add("option", "nosuch")
    add("option")
    add("option", "--help")
    add("option", "trace", "--help")
    add("option", "run", "--arch", X86, "funcs", "fib(3)", "extra")
    add("option", "run", "--arch", X86, "--stub", "helper", "fixtures/obj/x86_64/imports.o", "use_helper(1)")
    add("option", "run", "--arch", ARM, "--stub", "helper=data", "fixtures/obj/arm64/imports.o", "use_helper(1)")
    # -- probe specs ----------------------------------------------------------------------------------
    specs = [
        "",
        " ",
        ":",
        "f",
        "f:",
        "f:x",
        "f:x fib",
        "f fib",
        "f:g/ fib",
        "f:/e fib",
        "f:g/e/x fib",
        "f:1e fib",
        "f:e fib%return",
        "f:e fib%entry",
        "f:e fib%",
        "f:e fib+4",
        "f:e fib+0",
        "f:e nosuch",
        "f:e fib $arg0",
        "f:e fib $arg1",
        "f:e fib $arg99",
        "f:e fib $arg-1",
        "f:e fib $retval",
        "f:e fib%return $retval",
        "f:e fib $stack",
        "f:e fib $stack99999999999",
        "f:e fib $stack-1",
        "f:e fib %nosuch",
        "f:e fib %rax",
        "f:e fib %x0",
        "f:e fib @fib",
        "f:e fib @nosuch",
        "f:e fib @fib+999999",
        "f:e fib +0($arg1)",
        "f:e fib +0(+0(+0(+0($arg1))))",
        "f:e fib +0($arg1",
        "f:e fib +($arg1)",
        "f:e fib +x($arg1)",
        "f:e fib -8($stack)",
        "f:e fib $arg1:",
        "f:e fib $arg1:u7",
        "f:e fib $arg1:u128",
        "f:e fib $arg1:string",
        "f:e fib $arg1:symbol",
        "f:e fib $arg1:ustring",
        "f:e fib $arg1:x8[4]",
        "f:e fib $arg1:b4@2/8",
        "f:e fib a=$arg1 a=$arg1",
        "f:e fib =$arg1",
        "f:e fib a=",
        "f:e fib 1a=$arg1",
        "f:e fib $comm",
        "f:e fib $arg1->x",
        "f:e fib n",
        "f:e fib \\",
        "f:e fib '",
        'f:e fib "$arg1"',
        "p:e fib",
        "p:e fib+1",
        "p:e fib+0x4",
        "p:e fib+99999",
        "p:e fib+-1",
        "p:e fib-1",
        "p:e fib+0x",
        "p:e fib+0xzz",
        "p:e 0x40000000",
        "p:e nosuch+4",
        "p:e fib%return",
        "p:e fib%return $retval",
        "r:e fib",
        "r0:e fib",
        "r1:e fib $retval",
        "r-1:e fib",
        "r99999999999999999999:e fib",
        "rx:e fib",
        "r:e fib+4",
        "r:e nosuch",
        "t:e fib",
        "u:e /bin/ls:0",
        "e:e fib",
        "x:e fib",
        "-:e",
        "-:nosuch",
        "f:e fib " + " ".join(f"a{i}=$arg1" for i in range(200)),
        "f:" + "e" * 300 + " fib",
        "f:e fib \x00",
        "f:e fib\t$arg1",
        "f:e\u00e9 fib",
    ]
    for spec in specs:
        add("probe", "trace", "--arch", X86, *SMALL, "funcs", "fib(3)", "-e", spec)
        add("probe", "trace", "--arch", ARM, *SMALL, "funcs", "fib(3)", "-e", spec)
    add("probe", "trace", "--arch", X86, *SMALL, "funcs", "fib(3)", "-e", "f:g/e fib", "-e", "f:g/e fib")
    add("probe", "trace", "--arch", X86, *SMALL, "funcs", "fib(3)", "-e", "f:g/e fib", "-e", "r:g/e fib")
    add("probe", "trace", "--arch", ARM, *SMALL, "funcs", "fib(3)", "-e", "f:g/e fib", "-e", "f:g/e add3 a=$arg1")
    add("probe", "trace", "--arch", ARM, *SMALL, "funcs", "fib(3)", "-e", "f:e fib", "--tracer", "function_graph")
    add("probe", "trace", "--arch", ARM, *SMALL, "funcs", "fib(3)", "-e", "f:e fib", "--fprobe-design", "rethook")
    add("probe", "trace", "--arch", ARM, *SMALL, "funcs", "fib(3)", "-e", "f:e fib", "--kernel", "6.10")
    add("probe", "record", "--arch", ARM, *SMALL, "funcs", "fib(3)", "-o", os.devnull, "-e", "f:e fib")
    # -- --at ---------------------------------------------------------------------------------------
    for at in (
        "",
        "nosuch",
        "fib+",
        "fib+zz",
        "fib+0x1000",
        "fib+-1",
        "+4",
        "fib+1",
        "fib+2",
        "fib+0",
        "fib+4",
        "fib+0x10",
        "fib-4",
        "fib+99999999999999999999999",
        "fib%return",
        "add3",
        "ftlab_caller",
        "ftrace_caller",
        "fib+0x8",
    ):
        add("at", "regs", "--arch", ARM, *SMALL, "funcs", "fib(3)", "--at", at)
        add("at", "regs", "--arch", X86, *SMALL, "funcs", "fib(3)", "--at", at)
    for at in ("", "nosuch", "add3", "fib+4", "ftlab_caller"):
        add("at", "compare", *SMALL, "funcs", "fib(3)", "--at", at)
    # -- runaway code under a small budget ----------------------------------------------------------
    for budget in ("1", "2", "10", "1000", "100000"):
        for arch in (X86, ARM):
            add("budget", "run", "--arch", arch, "--budget", budget, "funcs", "fib(40)")
            add("budget", "trace", "--arch", arch, "--budget", budget, "funcs", "fib(40)", "--tracer", "function_graph")
        add("budget", "trace", "--arch", X86, "--budget", budget, "funcs", "fib(40)", "-e", "f:e fib%return")
        add("budget", "trace", "--arch", ARM, "--budget", budget, "funcs", "fib(40)", "-e", "p:k fib+0x18", "--verify")
        add("budget", "regs", "--arch", ARM, "--budget", budget, "funcs", "fib(40)", "--at", "fib")
    add("budget", "run", "--arch", X86, *SMALL, "funcs", "popcount_buf(16, 4)")
    add("budget", "trace", "--arch", ARM, *SMALL, "funcs", "popcount_buf(16, 4)", "--tracer", "function_graph")
    add("budget", "run", "--arch", X86, *SMALL, "funcs", "crc32_bitwise(0, b'x', 18446744073709551615)")
    add("budget", "run", "--arch", ARM, *SMALL, "funcs", "crc32_bitwise(0, b'x' * 17000000, 1)")
    # -- record and replay files --------------------------------------------------------------------
    for path in (EMPTY, TEXT, DIR, TRUNCATED, HOST_ELF, MISSING, "fixtures/obj/arm64/funcs.o"):
        add("replay", "replay", path)
    add("record", "record", "--arch", "all", *SMALL, "funcs", "fib(3)", "-o", os.devnull)
    add("record", "record", "--arch", ARM, *SMALL, "funcs", "fib(3)", "-o", DIR)
    add("record", "trace", "--arch", ARM, *SMALL, "funcs", "fib(3)", "-o", DIR)
    add("record", "trace", "--arch", ARM, *SMALL, "funcs", "fib(3)", "-o", "")
    return cases


CASES = _cases()
# A few of each kind run by default; the whole sweep is slow.
QUICK = {cid for i, (cid, _) in enumerate(CASES) if i % 12 == 0}


def _files(tmp: Path) -> dict[str, str]:
    funcs = (ROOT / "fixtures/obj/arm64/funcs.o").read_bytes()
    (tmp / "empty.o").write_bytes(b"")
    (tmp / "text.o").write_text("hello\n")
    (tmp / "dir.o").mkdir(exist_ok=True)
    (tmp / "truncated.o").write_bytes(funcs[:100])
    return {
        EMPTY: str(tmp / "empty.o"),
        TEXT: str(tmp / "text.o"),
        DIR: str(tmp / "dir.o"),
        TRUNCATED: str(tmp / "truncated.o"),
        HOST_ELF: sys.executable,
        MISSING: str(tmp / "missing.o"),
    }


USAGE = re.compile(r"usage: ftlab[^\n]*\n(?:[^\n]*\n)*?ftlab(?: \w+)?: error: [^\n]+\n\Z")


def run_case(argv: list[str]) -> tuple[int, str, str]:
    """main(argv) in-process: (exit code, stdout, stderr); argparse's exits as their codes."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
            code = -code if code == 2 else code  # argparse's exit, told apart from main's return 2
    return code, out.getvalue(), err.getvalue()


def check(code: int, out: str, err: str) -> None:
    """The contract: output and 0, one error line and 1, or argparse's usage error."""
    assert "internal error" not in err and "Traceback" not in err, err
    if code == 0:
        assert err == "" and (out or "--help" in err), (out, err)
    elif code == 1:
        assert err.startswith("ftlab: error: ") and err.count("\n") == 1 and err.endswith("\n"), err
    else:
        assert code == -2, (code, err)
        assert USAGE.match(err), err


def _params():
    for cid, argv in CASES:
        marks = []
        if cid not in QUICK:
            marks.append(pytest.mark.slow)
        yield pytest.param(argv, id=cid, marks=marks)


@pytest.mark.parametrize("argv", list(_params()))
def test_bad_or_odd_input(argv, tmp_path, monkeypatch):
    files = _files(tmp_path)
    monkeypatch.chdir(ROOT)
    argv = [files.get(a, a) for a in argv]
    if argv[:1] == ["--help"] or "--help" in argv:
        with pytest.raises(SystemExit) as exit_:
            run_case_raw(argv)
        assert exit_.value.code == 0
        return
    check(*run_case(argv))


def run_case_raw(argv):
    with contextlib.redirect_stdout(io.StringIO()):
        main(argv)


@pytest.mark.parametrize("budget", [str(1 << 64), str((1 << 64) + 5), "99999999999999999999999"])
def test_budget_beyond_64_bits_is_refused(budget):
    """Unicorn's instruction count is 64 bits: 2**64+5 ran 5 instructions and then reported a
    budget of 18,446,744,073,709,551,621 exhausted."""
    code, out, err = run_case(["run", "--arch", ARM, "--budget", budget, "funcs", "fib(20)"])
    assert (code, out) == (-2, "") and "is more than unicorn counts" in err, err  # argparse's usage error


@pytest.mark.parametrize("arch", [X86, ARM])
@pytest.mark.parametrize(
    "argv,message",
    [
        (["run", "funcs", "ftrace_caller(0)"], "'ftrace_caller' is the lab's own code, not a function"),
        (["trace", "funcs", "return_to_handler(0)", "--tracer", "function_graph"], "'return_to_handler' is the lab's"),
        (["trace", "funcs", "return_to_handler(0)", "--verify"], "'return_to_handler' is the lab's own code"),
    ],
)
def test_lab_trampolines_called_directly(arch, argv, message):
    """The lab's trampolines are not functions: a CALL naming one is refused before it runs (both
    were internal errors: a KeyError, and an OverflowError from the depth the pop left at -1; the
    guards deeper in, ftrace's dispatch refusing an ip that is no patch site and the guest exit
    path's empty shadow stack, stay for calls by address)."""
    code, out, err = run_case([argv[0], "--arch", arch, *SMALL, *argv[1:]])
    check(code, out, err)
    assert code == 1 and message in err, err


# -- output into a closed pipe: `ftlab ... | head -1` -----------------------------------------------


class _GonePipe(io.TextIOBase):
    """stdout whose reader has gone: writes are buffered, every flush fails as a pipe's does."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.parametrize(
    "argv,code",
    [
        (["trace", "--arch", X86, "funcs", "fib(5)"], 0),
        (["run", "--arch", X86, "funcs", "nosuch(1)"], 1),
        (["trace", "--arch", ARM, "--budget", "3000", "funcs", "fib(12)", "--tracer", "function_graph"], 1),
    ],
)
def test_error_after_the_reader_went_away(argv, code):
    """An error whose output before it cannot be flushed still ends in its one line, and a trace
    into a gone reader ends quietly: no BrokenPipeError out of main (it was, from the error path)."""
    err = io.StringIO()
    with contextlib.redirect_stdout(_GonePipe()), contextlib.redirect_stderr(err):
        got = main(argv)
    assert got == code
    assert err.getvalue() == "" if code == 0 else err.getvalue().startswith("ftlab: error: ")
    assert err.getvalue().count("\n") == code


PIPED = [
    ["sites", "--arch", "all", "funcs"],
    ["trace", "--arch", ARM, "funcs", "fib(18)"],
    ["trace", "--arch", X86, "funcs", "fib(16)", "--tracer", "function_graph"],
    ["trace", "--arch", X86, "funcs", "fib(14)", "--format", "json", "-e", "f:e fib%return r=$retval"],
    ["trace", "--arch", ARM, "funcs", "fib(16)", "--tracer", "function_graph", "-o", "/dev/stdout"],
    ["trace", "--arch", X86, "--budget", "3000", "funcs", "fib(12)", "--tracer", "function_graph"],
]


def _cli(argv: list[str], stdout) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tracers", *argv],
        cwd=ROOT,
        stdout=stdout,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _head_1(argv: list[str]) -> tuple[int, str, str]:
    """Run the CLI into a pipe whose reader takes one line and closes it, as `| head -1` does."""
    proc = _cli(argv, subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline().decode()
    proc.stdout.close()
    try:
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=120)
    finally:
        proc.kill()
    return code, first, err


def _no_reader(argv: list[str]) -> tuple[int, str]:
    """Run the CLI into a pipe whose reader closed before it started (`| true`)."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = _cli(argv, write)
    finally:
        os.close(write)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, err.decode()


def _quiet(code: int, err: str, argv: list[str]) -> None:
    assert "Traceback" not in err and "internal error" not in err and "Exception ignored" not in err, err
    if code == 1:  # an error before the pipe broke is still reported, in its one line
        assert "--budget" in argv and err.startswith("ftlab: error: instruction budget") and err.count("\n") == 1
    else:
        assert (code, err) in ((0, ""), (-signal.SIGPIPE, "")), (code, err)


@pytest.mark.parametrize("argv", [PIPED[1]] + [pytest.param(a, marks=pytest.mark.slow) for a in PIPED[2:]])
def test_head_1_exits_quietly(argv):
    code, first, err = _head_1(argv)
    assert first
    _quiet(code, err, argv)


@pytest.mark.parametrize("argv", [PIPED[0], PIPED[-1]] + [pytest.param(a, marks=pytest.mark.slow) for a in PIPED[1:-1]])
def test_no_reader_exits_quietly(argv):
    _quiet(*_no_reader(argv), argv)
