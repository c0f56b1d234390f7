"""Issue #11: every bad input is a clean one-line error, and an error during a trace loses nothing.

Options are checked by argparse with the kernel's meaning, calls against the function's signature
(the bundled fixtures' catalog, or the object's DWARF), `--at` against what the call reaches, and a
trace stopped by a fault or the budget still prints what it recorded, with why it stopped."""

import pytest

from tracers.cli.main import main


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
    ("option", "value"),
    [("--budget", "-1"), ("--budget", str(1 << 64)), ("--budget", "x"), ("--buffer-size", "0"), ("--buffer-size", "-5")],
)
def test_numeric_options_are_refused_out_of_range(capsys, option, value):
    line = usage_error(capsys, "trace", "--arch", "arm64", "funcs", "fib(3)", option, value)
    assert f"argument {option}:" in line


def test_the_largest_budget_is_unicorns(capsys, arch):
    assert run(capsys, "run", "--arch", arch, "--budget", str((1 << 64) - 1), "funcs", "fib(5)")[1] == "fib(5) = 5\n"
