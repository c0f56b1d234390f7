"""Issue #11, property-based: whatever the text, a CALL, a probe spec or an `--at` is parsed or
refused with one line (FtlabError, the probe parser's ProbeSpecError with its column), never
another exception. Deterministic: derandomized, a fixed number of examples each."""

import contextlib
import functools
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator import FtlabError
from tracers import Lab
from tracers.cli.main import main
from tracers.cli.views import parse_at
from tracers.lab import parse_call
from tracers.probe_events import ProbeSpec, ProbeSpecError, parse

FAST = settings(derandomize=True, max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(derandomize=True, max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# the characters these languages are made of, and some they are not
SYNTAX = st.sampled_from(list(" \t\n()[]{},;:+-*/%$@=\\\"'_.?!#&|<>^~`0123456789abcdefxoprsuABCZ\x00é\u202e"))
TEXT = st.one_of(st.text(max_size=60), st.text(SYNTAX, max_size=60))


def ftlab(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:  # argparse: a usage error (a spec starting with '-' reads as an option)
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def one_line(err: Exception) -> None:
    text = str(err)
    assert text and "\n" not in text and "\r" not in text, repr(text)


def mutated(valid: list[str]):
    """A valid text with a few characters inserted, deleted or replaced."""

    @st.composite
    def build(draw):
        text = draw(st.sampled_from(valid))
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(text)))
            op = draw(st.sampled_from(["insert", "delete", "replace"]))
            c = draw(SYNTAX)
            text = text[:i] + (c if op != "delete" else "") + text[i + (op != "insert") :]
        return text

    return build()


# -- CALL -----------------------------------------------------------------------------------------

CALLS = ["fib(20)", 'crc32_bitwise(0, b"123456789", 9)', "divmod(-47, 5)", "add3(-1, 0x100000000, +5)", 'f("é", b"")']


@FAST
@given(st.one_of(TEXT, mutated(CALLS)))
def test_parse_call_takes_any_text(text):
    try:
        name, args = parse_call(text)
    except FtlabError as err:
        one_line(err)
        return
    assert name.isidentifier() and all(isinstance(a, (int, bytes)) and not isinstance(a, bool) for a in args)


ARG = st.one_of(st.integers(-(1 << 70), 1 << 70), st.binary(max_size=8), st.text(max_size=8))


def _spell(value) -> str:
    if isinstance(value, int):
        return hex(value) if value % 2 else str(value)
    return repr(value)  # a bytes or str literal


@FAST
@given(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True), st.lists(ARG, max_size=12))
def test_parse_call_reads_back_what_was_written(name, values):
    text = f"{name}({', '.join(_spell(v) for v in values)})"
    got = parse_call(text)  # any C identifier names a function, Python's keywords too
    expected = tuple(v.encode("utf-8", "surrogatepass") if isinstance(v, str) else v for v in values)
    assert got == (name, expected)


@pytest.mark.parametrize("text", ["f(" + "(" * 500 + ")" * 500 + ")", 'f("\udcff")', "f(" + "0" * 5000 + "1)"])
def test_parse_call_survives_the_parsers_limits(text):
    with pytest.raises(FtlabError) as err:
        parse_call(text)
    one_line(err.value)


# -- probe specs ---------------------------------------------------------------------------------

REGS = ["ax", "bx", "cx", "dx", "si", "di", "bp", "sp", "r8", "ip", "flags", "orig_ax"]
SPECS = [
    "f fib n=$arg1",
    "f:grp/ev fib%return r=$retval",
    "p fib+4 %ax +8(%sp):u32",
    "r10 fib $retval:s32",
    "p:kprobes/e chain_c x=$stack0 s=$stack",
    'f fib $comm \\"hi\\"',
    "p 0xffffffff81000000 @fib+8:x64 +0(+8(%di)):string",
    "-:fprobes/ev",
    "r myfunc $retval $comm c=%ax:x32",
    "p fib \\123 s=@jiffies-4:symbol -8(+0(%sp)):s16",
    "p:my/probe fib%return $retval:x8",
]


def check_spec(text: str) -> None:
    try:
        spec = parse(text, REGS)
    except ProbeSpecError as err:
        refused = err
    else:
        assert isinstance(spec, ProbeSpec) and spec.text == text
        return
    one_line(refused)
    assert refused.column is None or 1 <= refused.column <= len(text) + 2, (refused.column, text)
    assert (refused.token is None) == (refused.column is None)


@FAST
@given(st.one_of(TEXT, mutated(SPECS)))
def test_the_probe_spec_parser_takes_any_text(text):
    check_spec(text)


@FAST
@given(st.lists(st.sampled_from(SPECS[:-1] + ["x=$arg2", "+0(%di):u8", "@fib", "$stack3"]), min_size=1, max_size=6))
def test_the_probe_spec_parser_takes_any_words(words):
    check_spec(" ".join(words))


@pytest.mark.slow
@SLOW
@given(mutated(SPECS))
def test_a_bad_probe_spec_on_the_command_line_is_one_line(text):
    code, _, err = ftlab("trace", "--arch", "x86_64", "funcs", "fib(2)", "-e", text)
    assert "internal error" not in err
    if code == 1:
        assert err.startswith("ftlab: error: ") and err.count("\n") == 1


# -- --at ----------------------------------------------------------------------------------------


@functools.cache
def _lab(arch: str) -> Lab:
    return Lab.open("funcs", arch)


AT = st.one_of(
    TEXT,
    mutated(["fib", "fib+0x8", "chain_c+4", "ftrace_caller", "sum10+0x10"]),
    st.builds(lambda f, o: f"{f}+{o}", st.sampled_from(["fib", "add3", "tail_b"]), st.integers(-100, 300)),
)


@FAST
@given(st.sampled_from(["x86_64", "arm64"]), AT)
def test_parse_at_takes_any_text(arch, text):
    lab = _lab(arch)
    try:
        func, offset = parse_at(lab, text)
    except FtlabError as err:
        one_line(err)
        return
    assert func in lab.calls.functions
    assert offset is None or 0 <= offset < lab.machine.symbols.get(func).size


@pytest.mark.slow
@SLOW
@given(st.sampled_from(["x86_64", "arm64"]), st.integers(0, 0x47))
def test_regs_at_any_offset_of_fib_is_a_table_or_one_line(arch, offset):
    """A kprobe anywhere in fib during fib(2): a snapshot, or a one-line refusal (not an instruction
    boundary, an ftrace site, a never reached branch), never an internal error."""
    code, out, err = ftlab("regs", "--arch", arch, "funcs", "fib(2)", "--at", f"fib+{offset:#x}")
    assert code in (0, 1) and "internal error" not in err
    assert (code == 0 and out.startswith(f"# {arch}: one hit at fib+")) or err.count("\n") == 1
