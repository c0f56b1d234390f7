"""DWARF as the lab's BTF: the prototypes a -g object's DWARF gives (tracers.calls) against the C
prototypes the catalog writes by hand, typed results against the catalog's result kinds, and probe
events with parameter names, `$arg*` and a typed `$retval` against values computed here from the
catalog's example arguments. An object without DWARF keeps its C-text arity and no BTF."""

from __future__ import annotations

import re

import pytest

from fixtures import catalog
from helpers import ARCHES, EXAMPLES
from tracers import Lab
from tracers.builtin.probe import ProbeEventTracer
from tracers.calls import CType, source_signatures
from tracers.kernel_version import KernelVersion
from tracers.output.sinks import ListSink
from tracers.probe_events import ProbeSpecError

# The C spellings funcs.c uses, as (kind, size, signed) once typedefs and const are passed (LP64)
C_TYPES = {
    "int": ("int", 4, True),
    "long": ("int", 8, True),
    "unsigned long": ("int", 8, False),
    "u32": ("int", 4, False),
    "const u8 *": ("pointer", 8, False),
    "struct pair": ("struct", 16, False),
}
# fetch_type_from_btf_type() (kernel/trace/trace_probe.c): the fetch type of each of those
FETCH = {"int": "s32", "long": "s64", "unsigned long": "u64", "u32": "u32", "const u8 *": "x64", "struct pair": None}


def prototype(text: str) -> tuple[str, str, list[tuple[str, str]]]:
    """'int add3(int a, long b)' -> ('int', 'add3', [('int', 'a'), ('long', 'b')])."""
    m = re.fullmatch(r"(.+?)\s*\b(\w+)\((.*)\)", text)
    assert m, text
    params = [re.fullmatch(r"(.+?)\s*(\w+)", p.strip()).groups() for p in m.group(3).split(",")]
    return m.group(1), m.group(2), [(t.strip(), n) for t, n in params]


def shape(t: CType) -> tuple[str, int, bool]:
    return (t.kind, t.size, t.signed)


@pytest.mark.parametrize("arch", ARCHES)
def test_dwarf_prototypes_are_the_c_prototypes(arch):
    lab = Lab.open("funcs-g", arch)
    assert set(lab.calls.btf) == set(catalog.FUNCTIONS)
    text = source_signatures(catalog.OBJ_DIR.parent / "src" / "funcs.c")
    for func in catalog.FUNCTIONS.values():
        ret, name, params = prototype(func.signature)
        sig = lab.calls.signatures[name]
        assert sig.source == "funcs-g.o's DWARF" and not sig.variadic
        assert [p for p, _ in sig.typed.params] == [n for _, n in params], name
        assert [shape(t) for _, t in sig.typed.params] == [C_TYPES[t] for t, _ in params], name
        assert [t.fetch_type for _, t in sig.typed.params] == [FETCH[t] for t, _ in params], name
        assert shape(sig.typed.ret) == C_TYPES[ret], name
        # the C text the lab reads without DWARF agrees: the same names, in the same order
        assert [re.findall(r"\w+", p)[-1] for p in text[name].params] == [n for _, n in params], name


@pytest.mark.parametrize("ex", EXAMPLES, ids=str)
@pytest.mark.parametrize("arch", ARCHES)
def test_typed_result_is_the_return_type(arch, ex):
    lab = Lab.open("funcs-g", arch)
    assert lab.calls.ret_kind(ex.name) == ex.func.ret
    assert lab.call(ex.name, *ex.args, ret=lab.calls.ret_kind(ex.name)) == ex.expected


@pytest.mark.parametrize("arch", ARCHES)
def test_kprobe_at_entry_takes_names(arch):
    ex = next(e for e in EXAMPLES if e.name == "mix_flags")
    [event] = _hits(arch, ["p mix_flags b a x=$arg1"], ex)
    # a name is typed by BTF; NAME=$argN is not expanded (only a bare $argN is), so it keeps x64
    assert [(a.name, a.type, v) for a, v in event.fetch] == [
        ("b", "s64", ex.args[1]),
        ("a", "s64", ex.args[0]),
        ("x", "x64", ex.args[0]),
    ]


def test_no_btf_args_before_6_5(arch):
    lab = Lab.open("funcs-g", arch, kernel=KernelVersion(6, 4))
    with pytest.raises(ProbeSpecError, match="BTF is not available or not supported: 'n'"):
        ProbeEventTracer(lab, ListSink(), ["p fib n"])


def test_without_dwarf_nothing_is_typed(arch):
    lab = Lab.open("funcs", arch)
    assert lab.calls.btf == {} and lab.calls.ret_kind("fib") is None
    assert lab.calls.signatures["fib"].source == "fixtures/src/funcs.c"
    with pytest.raises(ProbeSpecError, match="BTF is not available or not supported: 'n'"):
        ProbeEventTracer(lab, ListSink(), ["f fib n"])


def test_kernel_type_mapping():
    """fetch_type_from_btf_type(): enums s32 (s64 for ENUM64), pointers x64, ints by size and sign,
    the rest the default; and the result kinds a call reads."""
    cases = [
        (CType("enum", 4), "s32", "i32"),
        (CType("enum", 8), "s64", "i64"),
        (CType("int", 1, False), "u8", "u8"),
        (CType("int", 2, True), "s16", None),  # RETURN_KINDS has no i16
        (CType("int", 1, False, "_Bool"), "u8", "u8"),
        (CType("pointer", 8), "x64", "u64"),
        (CType("union", 8), None, "u64"),
        (CType("struct", 24), None, None),
        (CType("float", 8), None, None),
        (CType("void", 0), None, None),
    ]
    for ctype, fetch, ret in cases:
        assert (ctype.fetch_type, ctype.ret_kind) == (fetch, ret), ctype


def _as(value: int, c_type: str) -> str:
    """How the probe prints an example argument of that C type: the register's low bits as the
    fetch type (s: signed decimal, u: decimal, x: hex)."""
    kind, size, signed = C_TYPES[c_type]
    bits = 8 * size
    v = value & ((1 << bits) - 1)
    if kind == "pointer":
        return "0x"  # an address the lab chose: checked by its prefix only
    return str(v - (1 << bits) if signed and v >> (bits - 1) else v)


def _hits(arch, specs, ex):
    lab = Lab.open("funcs-g", arch)
    sink = ListSink()
    with ProbeEventTracer(lab, sink, specs):
        ex.call(lab)
    return sink.events


@pytest.mark.parametrize("ex", EXAMPLES, ids=str)
@pytest.mark.parametrize("arch", ARCHES)
def test_arg_star_names_and_types_every_parameter(arch, ex):
    _, name, params = prototype(ex.func.signature)
    values = [0 if isinstance(a, bytes) else a for a in ex.args]  # a bytes argument is a pointer
    if arch == "arm64":  # ftrace_regs_get_argument() (arm64 asm/ftrace.h): x0-x7, then 0
        values = values[:8] + [0] * len(values[8:])
    entry = _hits(arch, [f"f {name} $arg*"], ex)[0]  # the outermost call
    got = [(arg.name, arg.type, value) for arg, value in entry.fetch]
    assert [n for n, _, _ in got] == [n for _, n in params]
    assert [t for _, t, _ in got] == [FETCH[t] or "x64" for t, _ in params]
    for (_, _t, value), (c_type, _), want in zip(got, params, values, strict=True):
        if C_TYPES[c_type][0] != "pointer":
            assert str(value) == _as(want, c_type)


@pytest.mark.parametrize("kind", ["f add3%return", "r add3"])  # fprobe (ftrace_regs), kretprobe (pt_regs)
@pytest.mark.parametrize("arch", ARCHES)
def test_names_and_typed_retval_at_exit(arch, kind):
    ex = next(e for e in EXAMPLES if e.name == "add3" and e.args[0] < 0)
    [event] = _hits(arch, [f"{kind} $retval a c"], ex)
    assert [(a.name, a.type, v) for a, v in event.fetch] == [
        ("arg1", "s32", ex.expected),  # $retval: no C name, so argN; typed as the int add3 returns
        ("a", "s32", ex.args[0]),
        ("c", "s64", ex.args[2]),
    ]


@pytest.mark.parametrize(
    "spec, message, column",
    [
        ("f fib count", "This variable is not found at this probe point", 7),
        ("f fib $arg2", "This variable is not found at this probe point", 7),
        ("f fib n.x", "Non pointer structure/union argument is not supported.", 8),
        ("f fib n-x", "Failed to parse single hyphen. Forgot '>'?", 8),
        ("f fib $arg* $arg*", "$arg* can be used only once in the parameters", 13),
        ("p fib+4 n", "BTF is not available or not supported", 9),
    ],
)
def test_btf_errors_as_the_kernel_logs_them(arch, spec, message, column):
    lab = Lab.open("funcs-g", arch)
    with pytest.raises(ProbeSpecError) as err:
        ProbeEventTracer(lab, ListSink(), [spec])
    assert (err.value.message, err.value.column) == (message, column)
