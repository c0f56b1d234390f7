"""function_graph's funcgraph-args (6.15+): `f(n=10) {` from the lab's BTF (the object's DWARF),
as print_function_args() prints the arguments the graph entry recorded. The expected arguments are
computed here from the catalog's references (chain_a passes x ^ 5 to chain_b, which passes x + 1
to chain_c)."""

from __future__ import annotations

import re

import pytest

from helpers import ARCHES, trace_file
from tracers.cli.main import main
from tracers.output.sinks import function_arg_items

GRAPH = ("--tracer", "function_graph")


def calls(text: str) -> list[str]:
    """The function-call column of a graph trace: 'chain_a(x=10) {', 'chain_c(x=16);', '}'."""
    return [m.group(1) for m in re.finditer(r"^ 0\) .{14}\|  +(.*)$", text, re.MULTILINE)]


@pytest.mark.parametrize("clock", ["counter", "insns"])  # the guest ring-buffer path and the Python one
@pytest.mark.parametrize("arch", ARCHES)
def test_arguments_of_every_call(capsys, arch, clock):
    x = 10
    out = trace_file(
        capsys, "trace", "--arch", arch, "funcs-g", f"chain_a({x})", *GRAPH, "--clock", clock, "--funcgraph-args"
    )
    assert calls(out) == [
        f"chain_a(x={x}) {{",
        f"chain_b(x={x ^ 5}) {{",
        f"chain_c(x={(x ^ 5) + 1});",
        "}",
        f"chain_c(x={x});",
        "}",
    ]


def test_only_ftrace_regs_max_args_are_recorded(capsys, arch):
    """FTRACE_REGS_MAX_ARGS is include/linux/ftrace_regs.h's 6 on both arches (arm64 passes eight
    arguments in registers but does not override it)."""
    args, recorded = list(range(1, 11)), 6
    out = trace_file(capsys, "trace", "--arch", arch, "funcs-g", f"sum10{tuple(args)}", *GRAPH, "--funcgraph-args")
    shown = ", ".join(f"a{n}={n}" for n in args[:recorded])
    assert calls(out) == [f"sum10({shown}, ...);"]


@pytest.mark.parametrize("kernel, shown", [("7.0", ("0x0", "0x9")), ("6.16", ("0", "9"))])
def test_unsigned_in_hex_since_6_17(capsys, kernel, shown):
    for arch in ARCHES:
        out = trace_file(
            capsys,
            "trace",
            "--arch",
            arch,
            "funcs-g",
            'crc32_bitwise(0, b"123456789", 9)',
            *GRAPH,
            "--funcgraph-args",
            "--kernel",
            kernel,
            kernel=kernel,
        )
        [line] = calls(out)
        assert re.fullmatch(rf"crc32_bitwise\(crc={shown[0]}, p=0x[0-9a-f]+, len={shown[1]}\);", line), line


def test_signed_ints_are_the_whole_register(capsys, arch):
    out = trace_file(capsys, "trace", "--arch", arch, "funcs-g", "add3(-1, -2, 3)", *GRAPH, "--funcgraph-args")
    assert calls(out) == ["add3(a=-1, b=-2, c=3);"]


def test_no_dwarf_no_arguments(capsys, arch):
    out = trace_file(capsys, "trace", "--arch", arch, "funcs", "fib(1)", *GRAPH, "--funcgraph-args")
    assert calls(out) == ["fib();"]


def test_refused_before_6_15(capsys, arch):
    code = main(["trace", "--arch", arch, "funcs-g", "fib(1)", *GRAPH, "--funcgraph-args", "--kernel", "6.14"])
    assert code == 1
    assert capsys.readouterr().err == (
        "ftlab: error: --funcgraph-args: Linux 6.14 has no funcgraph-args option (it came in 6.15)\n"
    )


def test_what_print_function_args_does_not_decode():
    """The kernel's own cases (trace_output.c print_function_args): a struct or union prints its
    BTF kind and one word per 8 bytes; running out of recorded words prints '...' there and ends."""
    words = [1, 2, 3, 4, 5, 6]
    pair = ("s", "struct", 16, False)
    assert function_arg_items([("k", "struct", 4, False)], words) == ["k=(STRUCT)[0x1]"]
    assert function_arg_items([pair, ("u", "union", 8, False)], words) == ["s=(STRUCT)[0x1:0x2]", "u=(UNION)[0x3]"]
    five = [(f"a{n}", "int", 8, True) for n in range(5)]
    assert function_arg_items([*five, pair, pair], words) == [
        "a0=1",
        "a1=2",
        "a2=3",
        "a3=4",
        "a4=5",
        "s=(STRUCT)[0x6:...]",
    ]
    assert function_arg_items([("e", "enum", 4, False), ("", "pointer", 8, False)], [(1 << 64) - 2, 16]) == [
        "e=-2",
        "=0x10",
    ]
