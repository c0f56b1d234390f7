"""`ftlab compare --beside` (issue #15): a -pg mcount build beside the entry-site build of the same
functions, and what moved to -mfentry / patchable entries, on both arches.

The references are independent of the lesson's code: the calls' arguments as Python has them, the
objects' relocations (pyelftools, test_mcount.relocated_sites), the prologues' stack use and the
enabled sites' call targets decoded with capstone, the C source's call graph, and each mechanism's
capture measured again on a fresh lab."""

import io
import json
import re

import pytest

from emulator.asm import disassemble
from fixtures import catalog
from helpers import ARCHES
from test_mcount import relocated_sites
from tracers import Lab
from tracers.call_syntax import parse_calls
from tracers.cli.main import main
from tracers.cli.mcount_lesson import TITLE, mcount_lesson
from tracers.cli.mechanisms import capture
from tracers.cli.views import columns

MASK64 = (1 << 64) - 1
MCOUNT = [
    pytest.param(a, n, id=f"{a}-{n}")
    for a in ARCHES
    for n in catalog.names(a)
    if catalog.variant(a, n).site_kind == "mcount"
]
# each catalog function's smallest call whose arguments are integers Python knows (no buffers)
INTEGER_CALLS = [
    (f.name, min(calls))
    for f in catalog.FUNCTIONS.values()
    if (calls := [args for args in f.examples if all(isinstance(a, int) and a >= 0 for a in args)])
]


def lesson(arch: str, variant: str, call: str, func: str | None = None):
    """(the entry column, the mcount column, {topic: line}) of funcs beside the variant."""
    calls = parse_calls(call)
    func = func or calls.calls[0].name
    [entry, mcount] = columns([Lab.open("funcs", arch)], func, calls, [Lab.open(variant, arch)])
    rows = mcount_lesson([entry, mcount], func, calls, io.StringIO())
    assert {r["arch"] for r in rows} == {arch} and {r["object"] for r in rows} == {variant}
    return entry, mcount, {r["lesson"]: r["text"] for r in rows}


def named_arguments(line: str) -> list[str]:
    return re.findall(r"(\w+) (?:not saved|wrong:)", line)


@pytest.mark.parametrize("name,args", INTEGER_CALLS, ids=[n for n, _ in INTEGER_CALLS])
@pytest.mark.parametrize("arch,variant", MCOUNT)
def test_the_argument_line_names_the_registers_that_differ_from_the_calls_arguments(arch, variant, name, args):
    """The entry site's snapshot holds every argument of the call; the line names exactly the
    argument registers the mcount snapshot does not hold or holds otherwise."""
    entry, mcount, text = lesson(arch, variant, f"{name}({', '.join(map(str, args))})")
    regs = entry.lab.machine.arch.arg_regs[: len(args)]
    real = [a & MASK64 for a in args][: len(regs)]  # those past the registers are on the stack
    assert [entry.captures["ftrace_caller"].fields[r] for r in regs] == real
    saved = mcount.captures["ftrace_caller"].fields
    assert named_arguments(text["arguments"]) == [r for r, a in zip(regs, real, strict=False) if saved.get(r) != a]
    assert f"{name}'s {len(regs)} argument register" in text["arguments"]


@pytest.mark.parametrize("arch,variant", MCOUNT)
def test_the_argument_line_says_when_the_site_held_a_copy_of_lr(arch, variant):
    """arm64 gcc's prologue copies lr into x0 before BL _mcount (capstone); clang's and x86's do not."""
    _, mcount, text = lesson(arch, variant, "add3(1, 2, 3)")
    m = mcount.lab.machine
    start = mcount.site.func.addr
    prologue = [t for _, _, t in disassemble(m.arch, m.read(start, mcount.site.addr - start), start)]
    assert ("a copy of x30" in text["arguments"]) == ("mov x0, x30" in prologue)


@pytest.mark.parametrize("arch,variant", MCOUNT)
def test_an_argument_saved_otherwise_is_named_wrong(arch, variant):
    """The line compares values: an argument register the mcount snapshot holds with another value
    than the entry site's is named wrong, with both values."""
    entry, mcount, _ = lesson(arch, variant, "add3(1, 2, 3)")
    second = entry.lab.machine.arch.arg_regs[1]
    mcount.captures["ftrace_caller"].fields[second] = 0x99
    rows = mcount_lesson([entry, mcount], "add3", parse_calls("add3(1, 2, 3)"), io.StringIO())
    [line] = [r["text"] for r in rows if r["lesson"] == "arguments"]
    assert f"{second} wrong: 0x99 (the {entry.site.encoding.name} snapshot's 0x2)" in line
    assert second in named_arguments(line)


def stack_use(arch, code: bytes, addr: int) -> int:
    """Bytes a prologue moves sp down by, from its instructions (capstone): x86 pushes and
    `sub rsp, N`; arm64 pre-indexed `stp ..., [sp, #-N]!` and `sub sp, sp, #N`."""
    used = 0
    for _, _, text in disassemble(arch, code, addr):
        if text.startswith("push "):
            used += 8
        elif m := re.fullmatch(r"sub (?:rsp|sp, sp), #?(0x[0-9a-f]+|\d+)", text):
            used += int(m.group(1), 0)
        elif m := re.search(r"\[sp, #-(0x[0-9a-f]+|\d+)\]!$", text):
            used += int(m.group(1), 0)
    return used


@pytest.mark.parametrize("func", ["add3", "chain_c", "sum10"])
@pytest.mark.parametrize("arch,variant", MCOUNT)
def test_the_place_line_gives_the_sites_and_the_prologues_stack_use(arch, variant, func):
    """The mcount site is where the object's relocation puts it, after the prologue; sp there is
    lower by what the prologue pushed. x86's ftrace_caller_mcount reports the entry's sp (found
    through rbp: the return address's slot), arm64's the site's own."""
    args = catalog.FUNCTIONS[func].examples[0]
    entry, mcount, text = lesson(arch, variant, f"{func}({', '.join(map(str, args))})")
    offset = relocated_sites(catalog.variant(arch, variant))[func]
    m = mcount.lab.machine
    used = stack_use(m.arch, m.read(mcount.site.func.addr, offset), mcount.site.func.addr)
    assert used > 0
    line = text["place"]
    assert f"mcount at {func}+{offset:#x}, after " in line
    assert f"sp there is {used} bytes below the entry's" in line
    # x86: sp through rbp, bp the function's own frame; arm64: the site's sp, fp from the frame record
    if arch == "x86_64":
        assert re.search(
            rf"the snapshot's sp is the entry's, its bp {func}'s own frame 0x[0-9a-f]+, not the entry's 0x[0-9a-f]+$",
            line,
        )
    else:
        assert line.endswith(f"the snapshot's sp is {used} bytes below the entry's, its fp the entry's")
    assert f"{entry.site.encoding.name} at {func}+{entry.site.ip - entry.site.func.addr:#x}, before" in line


@pytest.mark.parametrize("arch,variant", MCOUNT)
def test_the_parent_line_names_the_caller_the_c_source_calls(arch, variant):
    """chain_a(10) calls chain_b, which calls chain_c first: both sites name chain_b, each read
    where its kind reads it; a direct call's caller is the lab's ftlab_caller."""
    entry, mcount, text = lesson(arch, variant, "chain_a(10)", "chain_c")
    line = text["parent ip"]
    assert line.endswith("the same caller, chain_b: right")
    assert entry.site.encoding.where in line and mcount.site.encoding.where in line
    _, _, text = lesson(arch, variant, "chain_c(3)")
    assert text["parent ip"].endswith("the same caller, ftlab_caller: right")


def called(lab, site) -> str:
    """The symbol an enabled site calls (capstone's decoding of its bytes)."""
    [(_, _, insn)] = disassemble(lab.machine.arch, site.enabled[-len(site.encoding.nop) :], site.ip)
    return lab.machine.symbols.name(int(insn.split()[-1].lstrip("#"), 16))


@pytest.mark.parametrize("arch,variant", MCOUNT)
def test_the_cost_line_is_what_each_trampoline_costs(arch, variant):
    """Each kind's trampoline (the one its enabled site calls) and its cost per event, as a fresh
    capture of ftrace_caller's ftrace_regs measures it."""
    _, _, text = lesson(arch, variant, "chain_a(10)", "chain_c")
    costs = re.findall(r"(\w+) sites: (\w+) (\d+) insns, (\d+) bytes stored per event", text["cost"])
    calls = parse_calls("chain_a(10)")
    expected = []
    for obj in ("funcs", variant):
        lab = Lab.open(obj, arch)
        c = capture(lab, "ftrace_caller", "chain_c", calls)
        site = lab.ftrace.site("chain_c")
        expected.append((site.encoding.name, called(lab, site), f"{c.insns:.0f}", f"{c.stored:.0f}"))
    assert costs == expected
    assert expected[1][1] == "ftrace_caller_mcount" and expected[0][1] != expected[1][1]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_rows_name_their_object_and_the_lesson(capsys):
    code, out, _ = run(
        capsys, "compare", "--arch", "arm64", "funcs", "chain_c(3)", "--beside", "funcs-mcount", "--format", "json"
    )
    assert code == 0
    rows = json.loads(out)
    assert {r["object"] for r in rows} == {"funcs", "funcs-mcount"}
    mechanisms = [r for r in rows if "mechanism" in r]
    assert {r["object"] for r in mechanisms if not r["mechanism"].startswith("bpf:")} == {"funcs", "funcs-mcount"}
    assert {r["object"] for r in mechanisms if r["mechanism"].startswith("bpf:")} == {"funcs"}  # not at mcount sites
    assert [r["lesson"] for r in rows if "lesson" in r] == ["arguments", "parent ip", "place", "cost"]


@pytest.mark.parametrize("arch", ARCHES)
def test_without_beside_no_lesson_and_one_object(capsys, arch):
    code, out, _ = run(capsys, "compare", "--arch", arch, "funcs", "chain_c(3)")
    assert code == 0 and TITLE not in out and "prologue" not in out
    code, out, _ = run(capsys, "compare", "--arch", arch, "funcs", "chain_c(3)", "--format", "json")
    assert {r["object"] for r in json.loads(out)} == {"funcs"}


def test_two_builds_of_one_kind_have_no_lesson(capsys):
    code, out, _ = run(capsys, "compare", "funcs", "fib(1)", "--beside", "funcs-clang")
    assert code == 0
    assert out.endswith(
        f"{TITLE}: fib, first hit, ftrace_caller's ftrace_regs\n"
        "  x86_64: no lesson: funcs and funcs-clang both have fentry sites\n"
        "  arm64: no lesson: funcs and funcs-clang both have patchable sites\n"
    )


@pytest.mark.parametrize(
    "argv,message",
    [
        (["funcs", "fib(1)", "--beside", "nosuch"], "--beside nosuch: unknown fixture 'nosuch' for x86_64; known: "),
        (["--arch", "arm64", "funcs", "fib(1)", "--beside", "no/such.o"], "--beside no/such.o: no/such.o: "),
        (["funcs", "fib(1)", "--beside", "state"], "--beside state: no function 'fib' in state.o"),
        (["funcs", "chain_a(1)", "--at", "chain_c", "--beside", "state"], "--beside state: no function 'chain_c'"),
        (["funcs", "fib(1)", "--beside", "funcs-mcount-clang"], "--beside funcs-mcount-clang: unknown fixture"),
    ],
)
def test_bad_beside_is_one_line(capsys, argv, message):
    code, out, err = run(capsys, "compare", *argv)
    assert (code, out) == (1, "")
    assert err.startswith(f"ftlab: error: {message}") and err.count("\n") == 1, err
