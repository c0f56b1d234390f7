"""Hand-written test functions: a .S file loaded as an object (emulator/asm_object.py), checked
against GNU as building the same file into an ELF object the lab's loader reads, against the Python
references, and traced like a compiled object; its errors are one line naming file:line."""

import shutil
import subprocess

import pytest
from capstone import CS_GRP_CALL, CS_GRP_JUMP, CS_GRP_RET

from emulator import FtlabError, Machine
from emulator import arch as arches
from emulator.asm import decode, disassemble
from fixtures import bundled, bundled_names, source
from fixtures.asm.insns import FUNCTIONS
from helpers import trace_file
from tracers import Lab
from tracers.core.fprobe import Fprobe
from tracers.lab import resolve

GAS = {"x86_64": "gcc", "arm64": "aarch64-linux-gnu-gcc"}  # their assemblers, through the driver


@pytest.fixture
def gas_object(arch, tmp_path):
    """insns.S assembled by GNU as: an independent build of the same source."""
    if shutil.which(GAS[arch]) is None:
        pytest.skip(f"{GAS[arch]} is not installed")
    out = tmp_path / "insns.o"
    subprocess.run([GAS[arch], "-c", str(bundled(arch, "insns")), "-o", str(out)], check=True)
    return out


def test_the_object_is_what_gnu_as_makes_of_the_same_source(arch, gas_object):
    lab_m, gas_m = Machine(arches.get(arch)), Machine(arches.get(arch))
    ours, theirs = lab_m.load(bundled(arch, "insns")), gas_m.load(gas_object)

    def functions(obj):
        return {f.name: (f.addr - obj.base, f.size) for f in obj.functions}

    assert functions(ours) == functions(theirs)
    assert set(ours.sections) == set(theirs.sections)
    assert {k: [p - ours.base for p in v] for k, v in ours.imports.items()} == {
        k: [p - theirs.base for p in v] for k, v in theirs.imports.items()
    }
    for fn in ours.functions:
        other = gas_m.symbols.get(fn.name)
        mine = [decode(lab_m.arch, lab_m.read(a, 16), a - ours.base) for a, _, _ in disassemble(
            lab_m.arch, lab_m.read(fn.addr, fn.size), fn.addr)]  # fmt: skip
        gas = [decode(gas_m.arch, gas_m.read(a, 16), a - theirs.base) for a, _, _ in disassemble(
            gas_m.arch, gas_m.read(other.addr, other.size), other.addr)]  # fmt: skip
        # The same instructions at the same offsets; control flow exactly (data moves with the layout)
        assert [(i.address, i.size, i.mnemonic) for i in mine] == [(i.address, i.size, i.mnemonic) for i in gas]
        for a, b in zip(mine, gas, strict=True):
            if any(a.group(g) for g in (CS_GRP_JUMP, CS_GRP_CALL, CS_GRP_RET)) and "[" not in a.op_str:
                assert a.op_str == b.op_str, (fn.name, a.mnemonic, a.op_str, b.op_str)


def test_every_function_returns_its_reference_as_gnu_as_builds_it(arch, gas_object):
    for path in (bundled(arch, "insns"), gas_object):
        m = Machine(arches.get(arch))
        obj = m.load(path)
        for fn in obj.functions:
            reference, examples = FUNCTIONS[fn.name]
            for args in examples:
                assert m.call(fn.name, *args) == reference(*args), (path.name, fn.name, args)


def test_patch_sites_are_the_authors_as_in_gnu_as_object(arch, gas_object):
    ours, theirs = Lab.open("insns", arch), Lab(resolve(str(gas_object), arch)[0])

    def sites(lab):
        return sorted((s.func.name, s.ip - s.func.addr) for s in lab.sites)

    assert sites(ours) == sites(theirs)
    assert {name for name, _ in sites(ours)} == {f.name for f in ours.obj.functions}  # one per function


def test_bundled_and_found_by_name(arch):
    assert "insns" in bundled_names(arch)
    path = bundled(arch, "insns")
    assert path.suffix == ".S" and source(path) is None  # no C prototypes: calls pass what they are given
    assert resolve("insns", arch)[0].path == path


def test_a_source_file_needs_an_arch(tmp_path):
    src = tmp_path / "f.S"
    src.write_text("")
    with pytest.raises(FtlabError, match=r"f\.S is assembly source: say which --arch"):
        resolve(str(src), None)
    assert resolve(str(src), "arm64")[0].arch is arches.get("arm64")


def test_function_graph_and_fprobe_see_them_as_compiled_functions(arch, capsys):
    out = trace_file(capsys, "trace", "insns", "call_local(4)", "--arch", arch, "--tracer", "function_graph")
    assert "call_local() {" in out and "double_it();" in out and "# call_local(4) = 9" in out
    lab = Lab.open("insns", arch)
    seen = []
    fprobes = lab.fprobes()
    fprobes.register(
        Fprobe(
            entry_handler=lambda fp, ip, ret_ip, fregs, data: seen.append(("entry", fregs.get_argument(0))) and 0,
            exit_handler=lambda fp, ip, ret_ip, fregs, data: seen.append(("exit", fregs.get_return_value())),
        ),
        "double_it",
    )
    assert lab.call("call_reg", 21) == 45
    assert seen == [("entry", 21), ("exit", 42)]


FUNCTION = """\
    .text
    .globl f
    .type f, @function
f:
    {body}
    .size f, .-f
"""
BAD = [
    # (arch or None for both, source, message)
    (None, ".text\nnop\n.weak f\n", r"x\.S:3: unsupported directive '\.weak'"),
    ("x86_64", ".text\n.att_syntax\n", r"x\.S:2: only '\.intel_syntax noprefix' is supported"),
    (None, ".data\nd:\n.text\n.size d, .-d\n", r"x\.S:4: '\.size d, \.-d' in \.text, but d is in \.data"),
    (None, '.section .init.text, "ax"\n', r"x\.S:1: section '\.init\.text' is not supported"),
    (None, ".text\nf:\nnop\n.type f, @function\n", r"x\.S:4: function 'f' has no '\.size f, \.-f'"),
    (None, ".type g, @object\n", r"x\.S:1: '\.type g' names no label"),
    ("x86_64", ".text\nnop\n.data\nnop\n", r"x\.S:4: instruction 'nop' in \.data, which is not executable"),
    (None, ".bss\n.quad 5\n", r"x\.S:2: '\.quad 5' in \.bss: \.bss holds only"),
    (None, ".popsection\n", r"x\.S:1: \.popsection without \.pushsection"),
    (None, ".pushsection .data\n", r"x\.S: \.pushsection \.data without \.popsection"),
    ("x86_64", FUNCTION.format(body="jmp 1b"), r"x\.S:5: '1b' refers back to a label 1: that is not defined"),
    ("x86_64", FUNCTION.format(body="call nosuch"), r"x\.S: keystone cannot assemble 'call nosuch'"),
    ("arm64", FUNCTION.format(body="bl nosuch"), r"x\.S:5: undefined symbol 'nosuch'"),
    ("arm64", FUNCTION.format(body="adrp x0, :got:f"), r"x\.S:5: relocation operator ':got:' is not supported"),
    ("arm64", FUNCTION.format(body="add x0, x0, :lo12:nosuch"), r"x\.S:5: undefined symbol 'nosuch'"),
    (None, "f:\nf:\n", r"x\.S:2: symbol 'f' is already defined"),
    (None, '.section __mcount_loc, "a"\n.long 5\n', r"x\.S:2: '\.long 5' in __mcount_loc: a site table holds only"),
    (None, ".type f, @weird\n", r"x\.S:1: '\.type f, @weird': the type is @function or @object"),
    (None, "", r"x\.S: no code or data"),
]


@pytest.mark.parametrize("only, text, message", BAD)
def test_what_is_refused_is_one_line_naming_file_and_line(arch, tmp_path, only, text, message):
    if only not in (None, arch):
        pytest.skip(f"{only} syntax")
    src = tmp_path / "x.S"
    src.write_text(text)
    with pytest.raises(FtlabError, match=message) as err:
        Machine(arches.get(arch)).load(src)
    assert "\n" not in str(err.value)


def test_keystone_bugs_worked_around_are_checked_by_capstone(tmp_path):
    """On arm64, keystone 0.9.2 encodes `adrp` from a non-zero base with the wrong page and a `bl`
    to a symbol outside the file from its alignment fragment's start; the lab encodes both, and
    capstone reads back the page of the symbol and the symbol itself."""
    src = tmp_path / "x.S"
    src.write_text(
        FUNCTION.format(
            body="nop\n.p2align 4\nstp x29, x30, [sp, -16]!\nmov x2, 0\nbl memcpy\nldp x29, x30, [sp], 16\n"
            "adrp x0, data\nadd x0, x0, :lo12:data\nret"
        )
        + ".data\n.p2align 12\n.space 8\n.type data, @object\ndata:\n.quad 7\n"
    )
    m = Machine(arches.get("arm64"))
    obj = m.load(src)
    f, data, memcpy = (m.symbols.get(n).addr for n in ("f", "data", "memcpy"))
    size = m.symbols.get("f").size
    insns = {t.split()[0]: t for _, _, t in disassemble(m.arch, m.read(f, size), f)}
    assert insns["adrp"] == f"adrp x0, #{data & ~0xFFF:#x}"
    assert insns["bl"] == f"bl #{memcpy:#x}"
    lo12 = data & 0xFFF
    assert insns["add"] == f"add x0, x0, #{lo12:#x}" if lo12 > 9 else f"add x0, x0, #{lo12}"  # as capstone prints it
    assert obj.imports == {"memcpy": [f + 24]}
    assert m.call("f") == data
