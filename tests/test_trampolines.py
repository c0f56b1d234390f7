"""Bring your own trampoline (--trampoline NAME=FILE, Lab(trampolines=...)): a copy of the lab's own
changes nothing; each deliberately broken one in fixtures/trampolines/<arch>/ is caught, with a
message naming the file and what is wrong; bad files and names are one-line errors."""

from __future__ import annotations

import difflib
import re
import shutil
from pathlib import Path

import pytest

from emulator import FtlabError
from emulator import arch as arches
from fixtures import catalog
from helpers import ftlab
from tracers import FunctionTracer, Lab
from tracers.arch import kernel_arch
from tracers.builtin.function_graph import FunctionGraphTracer
from tracers.cli.main import main
from tracers.kernel_version import MODELLED
from tracers.output.sinks import ListSink

BROKEN = Path(__file__).parent.parent / "fixtures" / "trampolines"
N = 6
FIB = catalog.FUNCTIONS["fib"]
CALLS = 2 * FIB.reference(N + 1) - 1  # fib(n) is entered 2*fib(n+1)-1 times
# per arch: the callee-saved register the clobbering fixture uses, the argument register the
# wrong-offset fixture stores in another's slot
CLOBBERED = {"x86_64": "bx", "arm64": "x19"}
MISPLACED = {"x86_64": "di", "arm64": "x0"}


def broken(arch: str, defect: str) -> Path:
    return BROKEN / arch / f"{defect}.S"


def own_copies(arch: str, tmp_path: Path) -> dict[str, Path]:
    """Every replaceable trampoline, as a copy of the lab's own .S in a directory of its own (its
    .include of macros.S finds the lab's), one name per file."""
    karch = kernel_arch(arches.get(arch))
    out: dict[str, Path] = {}
    for name, source in karch.trampoline_sources(MODELLED).items():
        if source not in {p.name for p in out.values()}:
            out[name] = tmp_path / source
            shutil.copy(karch.source_dir / source, out[name])
    return out


def traced(lab: Lab, tracer=FunctionTracer) -> tuple[int, ListSink]:
    sink = ListSink()
    with tracer(lab, sink, verify=True):
        result = lab.call("fib", N)
    return result, sink


def test_every_trampoline_kind_is_replaceable_on_each_arch(arch):
    names = kernel_arch(arches.get(arch)).trampoline_sources(MODELLED)
    rethook = {"x86_64": "arch_rethook_trampoline", "arm64": "__kretprobe_trampoline"}[arch]
    entry = {"x86_64": "asm_exc_int3", "arm64": "vectors"}[arch]
    assert {"ftrace_caller", "ftrace_caller_mcount", "return_to_handler", rethook, entry} <= names.keys()


@pytest.mark.parametrize("tracer", [FunctionTracer, FunctionGraphTracer])
def test_a_copy_of_the_labs_own_trampolines_traces_every_call_and_verifies(arch, tmp_path, tracer):
    lab = Lab.open("funcs", arch, trampolines=own_copies(arch, tmp_path))
    result, sink = traced(lab, tracer)
    assert result == FIB.reference(N)
    entries = [ev for ev in sink.events if ev.type == "entry"]
    assert len(entries) == CALLS
    assert sink.summary["verify"] == {"snapshots": len(sink.events), "mismatching": 0}


def after_site(lab: Lab, func: str = "fib") -> int:
    """The offset in func of the instruction after its patch site."""
    return lab.ftrace.site(func).ip + lab.karch.sites.size - lab.machine.symbols.get(func).addr


@pytest.mark.parametrize("at", ["entry", "body"])
def test_a_copy_of_the_labs_own_trampolines_gives_the_same_snapshots(capsys, arch, tmp_path, at):
    """Every mechanism's snapshot at fib's entry (ftrace, fgraph, fprobe, kprobe, kretprobe: the
    return trampolines too) and a kprobe in its body (the exception entry): field for field what
    the lab's own files give (which `regs` checks against the true registers)."""
    spec = "fib" if at == "entry" else f"fib+{after_site(Lab.open('funcs', arch)):#x}"
    options = [f"--trampoline={name}={path}" for name, path in own_copies(arch, tmp_path).items()]
    theirs = ftlab(capsys, "regs", "--arch", arch, "funcs", f"fib({N})", "--at", spec, *options)
    ours = ftlab(capsys, "regs", "--arch", arch, "funcs", f"fib({N})", "--at", spec)
    assert theirs == ours
    assert theirs.count(" equal") > 10


def _trace(capsys, arch: str, defect: str, *extra: str) -> tuple[int, str, str]:
    code = main(
        ["trace", "--arch", arch, "funcs", f"fib({N})", "--trampoline", f"ftrace_caller={broken(arch, defect)}", *extra]
    )
    out, err = capsys.readouterr()
    return code, out, err


def test_a_clobbered_register_is_named(capsys, arch):
    code, _, err = _trace(capsys, arch, "clobber", "--verify")
    reg = CLOBBERED[arch]
    name = re.escape(f"ftrace_caller ({broken(arch, 'clobber')})")
    assert code == 1
    assert re.fullmatch(
        rf"ftlab: error: {name}: returns to the instruction after the site with {reg} 0x[0-9a-f]+ "
        rf"\(at the site 0x[0-9a-f]+\) \(it may change only [^)]*\)\n",
        err,
    ), err


def test_a_field_at_the_wrong_offset_is_named_by_verify(capsys, arch):
    """The registers survive (saved and restored through the same wrong slot), the result is right,
    and verify names the field: its saved value is not the argument fib was called with."""
    code, out, _ = _trace(capsys, arch, "wrong_offset", "--verify")
    reg = MISPLACED[arch]
    assert code == 0
    assert f"# fib({N}) = {FIB.reference(N)}\n" in out
    first = re.search(rf"# verify: {reg} saved (0x[0-9a-f]+), true (0x[0-9a-f]+)\n", out)
    assert first is not None, out
    assert int(first.group(2), 16) == N != int(first.group(1), 16)


def test_a_misaligned_stack_is_named_with_the_kernels_rule(capsys, arch):
    code, _, err = _trace(capsys, arch, "misaligned")
    align = kernel_arch(arches.get(arch)).stack_align
    name = re.escape(f"ftrace_caller ({broken(arch, 'misaligned')})")
    found = re.fullmatch(
        rf"ftlab: error: {name}: calls ftrace_ops_list_func with sp (0x[0-9a-f]+), not {align}-byte aligned \(.+\)\n",
        err,
    )
    assert code == 1 and found, err
    assert int(found.group(1), 16) % align


@pytest.mark.parametrize("verify", [(), ("--verify",)])
def test_a_return_to_the_wrong_place_is_named(capsys, arch, verify):
    """The fixture returns to fib's caller, skipping fib: the lab's call stub, not fib's next
    instruction after the site."""
    code, _, err = _trace(capsys, arch, "wrong_return", *verify)
    after = after_site(Lab.open("funcs", arch))
    name = re.escape(f"ftrace_caller ({broken(arch, 'wrong_return')})")
    assert code == 1
    assert re.fullmatch(
        rf"ftlab: error: {name}: returns to 0x[0-9a-f]+ <ftlab_caller>: .+, not to the instruction after "
        rf"the site, 0x[0-9a-f]+ <fib\+{after:#x}>: .+\n",
        err,
    ), err


@pytest.mark.parametrize(
    "defect, message",
    [
        ("clobber", "returns to the instruction after the site with {clobbered} "),
        ("misaligned", "calls ftrace_ops_list_func with sp "),
        ("wrong_return", "returns to 0x"),
    ],
)
def test_the_python_api_raises_the_same(arch, defect, message):
    lab = Lab.open("funcs", arch, trampolines={"ftrace_caller": broken(arch, defect)})
    with pytest.raises(FtlabError, match=re.escape(message.format(clobbered=CLOBBERED[arch]))):
        traced(lab)


@pytest.mark.parametrize("defect", ["clobber", "misaligned", "wrong_return"])
def test_the_x86_defects_are_caught_at_mcount_sites_too(capsys, defect):
    """x86_64's ftrace_caller_mcount is built from the same macro as ftrace_caller, so each fixture
    breaks both; the message names the mcount trampoline. (arm64's fixtures break only its
    patchable-entry ftrace_caller, a separate body.)"""
    obj = str(Path(catalog.__file__).parent / "obj" / "x86_64" / "funcs-mcount.o")
    path = broken("x86_64", defect)
    code = main(["trace", obj, f"fib({N})", "--verify", "--trampoline", f"ftrace_caller={path}"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith(f"ftlab: error: ftrace_caller_mcount ({path}): "), err


def test_the_broken_fixtures_say_what_is_broken(arch):
    for path in sorted((BROKEN / arch).glob("*.S")):
        assert "BROKEN ON PURPOSE" in path.read_text()
        assert "// BROKEN:" in path.read_text(), path


def test_each_broken_fixture_is_the_labs_file_with_only_its_defect(arch):
    """Past their header, the broken copies differ from the lab's ftrace_caller.S only next to a
    `// BROKEN:` line, so a change to the lab's trampoline that they miss fails here, not later."""
    lab = (Path(__file__).parent.parent / "tracers" / "arch" / arch / "ftrace_caller.S").read_text().splitlines()
    for path in sorted((BROKEN / arch).glob("*.S")):
        text = path.read_text()
        body = text[text.index("*/\n") + 3 :].splitlines()  # after the BROKEN ON PURPOSE header
        marks = [n for n, line in enumerate(body) if "// BROKEN:" in line]
        for tag, _, _, j1, j2 in difflib.SequenceMatcher(None, lab, body, autojunk=False).get_opcodes():
            if tag != "equal":
                assert any(j1 - 3 <= m <= j2 + 2 for m in marks), f"{path.name}: lines {j1}-{j2} differ unmarked"


# -- one-line errors ---------------------------------------------------------------------------


def _error(capsys, arch: str, *options: str) -> str:
    assert main(["trace", "--arch", arch, "funcs", "fib(3)", *options]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    return err


def test_an_unknown_name_lists_the_replaceable_ones(capsys, arch):
    names = ", ".join(kernel_arch(arches.get(arch)).trampoline_sources(MODELLED))
    err = _error(capsys, arch, "--trampoline", f"nosuch={broken(arch, 'clobber')}")
    assert err == f"ftlab: error: --trampoline nosuch: no such trampoline on {arch} (replaceable: {names})\n"


def test_a_missing_global_is_named(capsys, arch, tmp_path):
    lab_file = kernel_arch(arches.get(arch)).source_dir / "ftrace_caller.S"
    mine = tmp_path / "mine.S"
    mine.write_text(lab_file.read_text().replace(".globl ftrace_ops_list_lab\n", ""))
    err = _error(capsys, arch, "--trampoline", f"ftrace_caller={mine}")
    assert err.startswith(
        f"ftlab: error: {mine}: defines no global ftrace_ops_list_lab, which the lab's ftrace_caller.S"
    )


def test_a_missing_local_label_the_lab_uses_is_named(capsys, arch, tmp_path):
    lab_file = kernel_arch(arches.get(arch)).source_dir / "ftrace_caller.S"
    mine = tmp_path / "mine.S"
    mine.write_text(
        lab_file.read_text()
        .replace("ops_list_args:", "ops_list_argz:")
        .replace("+ops_list_args]", "+ops_list_argz]")
        .replace(" ops_list_args\n", " ops_list_argz\n")
    )
    err = _error(capsys, arch, "--trampoline", f"ftrace_caller={mine}")
    label = "ops_list_args, which the lab's ftrace_caller.S defines and the lab uses"
    assert err == f"ftlab: error: {mine}: defines no label {label}\n"


def test_an_assembly_error_names_the_users_file_and_line(capsys, arch, tmp_path):
    lines = (kernel_arch(arches.get(arch)).source_dir / "ftrace_caller.S").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("ftrace_ops_list_func:")) + 1
    lines.insert(at, "    frobnicate 1, 2")
    mine = tmp_path / "mine.S"
    mine.write_text("\n".join(lines) + "\n")
    err = _error(capsys, arch, "--trampoline", f"ftrace_caller={mine}")
    assert err.startswith(f"ftlab: error: {mine}:{at + 1}: keystone cannot assemble 'frobnicate 1, 2'")


def test_an_include_found_nowhere_is_named(capsys, arch, tmp_path):
    mine = tmp_path / "mine.S"
    mine.write_text('.include "nothere.S"\n')
    err = _error(capsys, arch, "--trampoline", f"ftrace_caller={mine}")
    assert err.startswith(f'ftlab: error: {mine}: .include "nothere.S": no such file beside it or in the lab\'s ')


def test_two_names_of_one_file_must_name_one_file(capsys, arch, tmp_path):
    a, b = own_copies(arch, tmp_path)["ftrace_caller"], tmp_path / "other.S"
    shutil.copy(a, b)
    err = _error(capsys, arch, "--trampoline", f"ftrace_caller={a}", "--trampoline", f"ftrace_caller_mcount={b}")
    assert f"are all defined by one file, the lab's ftrace_caller.S, which {a} already replaces" in err


def test_a_missing_file_and_a_malformed_option_are_named(capsys, arch):
    err = _error(capsys, arch, "--trampoline", "ftrace_caller=/nonexistent/my.S")
    assert err == "ftlab: error: --trampoline ftrace_caller=/nonexistent/my.S: no such file\n"
    with pytest.raises(SystemExit):
        main(["trace", "--arch", arch, "funcs", "fib(3)", "--trampoline", "ftrace_caller"])
    assert "is not NAME=FILE.S" in capsys.readouterr().err
