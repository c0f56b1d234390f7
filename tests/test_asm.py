"""Every instruction keystone assembles for the lab is checked against capstone's decoding; the
preprocessor's macros and repetitions expand as GNU as's do."""

import platform
import re
import shutil
import struct
import subprocess
from functools import cache
from pathlib import Path
from unittest.mock import patch

import pytest

from emulator import FtlabError
from emulator import arch as arches
from emulator.asm import assemble, disassemble, roundtrip
from tracers import Lab
from tracers.arch import kernel_arch
from tracers.builtin.probe import ProbeEventTracer
from tracers.core.bpf_trampoline import BpfTrampolines
from tracers.core.ftrace import FtraceOps
from tracers.kernel_version import CHANGES, MODELLED, OLDEST, KernelVersion
from tracers.output.sinks import CountSink

ROOT = Path(__file__).resolve().parent.parent  # not the working directory: pytest may run from tests/
SOURCES = [
    p
    for p in sorted(ROOT.glob("emulator/arch/*/*.S")) + sorted(ROOT.glob("tracers/arch/*/*.S"))
    if p.name != "macros.S"
]
# probe_events.S: assembled with a trace's handlers; these use every fetch macro (before 6.18 no
# exit ftrace_regs holds sp: $stack at the exit faults)
PROBE_SPECS = (
    "f:e crc32_bitwise a=$arg1 s=$stack1 i=\\7 m=@fib:u8 h=+2($arg2):u16 w=+0($arg2):u32 q=+0(+0($arg2)):x64",
    "f:x crc32_bitwise%return $retval a=$arg2 st=$stack",
)
# kprobe_ftrace.S and probe_events.S's kprobe handler: a p event on an ftrace site, where the arch has
# ftrace_regs_caller (KPROBES_ON_FTRACE), with the f events above
KPROBE_SPECS = ("p:k fib n=$arg1 s=$stack0 b=+0($stack):u8 far=$stack2047",)


def test_every_lab_source_is_round_tripped():
    """An empty SOURCES would skip the round trip silently: each arch has its runtime and trampolines."""
    for arch_name in arches.ARCHES:
        names = {p.name for p in SOURCES if p.parent.name == arch_name}
        karch = kernel_arch(arches.get(arch_name))
        returns = {t.source for _, t in karch.rethook.trampolines} | {
            r.source for _, r in karch.fgraph.return_to_handlers
        }
        assert len(returns) >= 1
        assert {
            "runtime.S",
            "ftrace_caller.S",
            "return_to_handler.S",
            "entry.S",
            "function_trace.S",
            "ring_buffer.S",
        } | returns <= names, arch_name


@cache
def _assembled(arch_name: str) -> dict:
    """Each .S file a lab assembles, as it assembled it (with its constants, at its address)."""
    made = {}

    def capture(arch, source, base, constants=None, name="<lab>", where=None):
        made[(where / name).resolve()] = asm = assemble(arch, source, base, constants, name, where)
        return asm

    with patch("emulator.asm.assemble", capture):
        # each release's return trampolines (the rethook's, fgraph's return_to_handler)
        for kernel in sorted({OLDEST, MODELLED} | {first for first, _ in CHANGES.values()}):
            lab = Lab.open("funcs", arch_name, kernel=kernel)
        BpfTrampolines(lab.ftrace)  # bpf_trampoline.S
        for name in ("a", "b"):  # ops_list.S: loaded when several ops with guest code share ftrace
            lab.ftrace.register(FtraceOps(lambda *a: None, name=name, guest_func=lab.tracer_code.function_trace_call))
        probed = Lab.open("funcs", arch_name, kernel=KernelVersion(6, 14))
        with ProbeEventTracer(probed, CountSink(), PROBE_SPECS) as tracer:
            assert tracer._guest is not None
        if probed.ftrace.regs_caller is not None:
            with ProbeEventTracer(probed, CountSink(), PROBE_SPECS + KPROBE_SPECS) as tracer:
                assert tracer._guest is not None and probed.kprobes.code is not None
    return made


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_lab_sources_roundtrip(path):
    arch = arches.get(path.parent.name)
    asm = _assembled(arch.name)[path.resolve()]  # every source is used by a lab
    assert asm.code and asm.exported
    assert roundtrip(arch, asm) == []


def test_roundtrip_catches_a_wrong_encoding():
    arch = arches.get("x86_64")
    good = assemble(arch, "shl rdx, 32\nret\n", 0x1000)
    assert roundtrip(arch, good) == []
    # The same statements over bytes that say 0x32 (keystone's radix trap) must be reported.
    bad = type(good)(good.base, bytes.fromhex("48c1e232c3"), good.symbols, good.exported, good.statements)
    assert len(roundtrip(arch, bad)) == 1


@pytest.mark.parametrize("arch_name", list(arches.ARCHES))
def test_site_call_encoding_decodes_to_its_target(arch_name):
    arch = arches.get(arch_name)
    sites = kernel_arch(arch).sites
    for ip, target in ((0x40000000, 0x3F000040), (0x40001000, 0x40000000), (0x3F000000, 0x40FFFFF0)):
        code = sites.encode_call(ip, target)
        [(_, size, text)] = disassemble(arch, code, ip)
        assert size == sites.size
        assert int(text.split()[-1].lstrip("#"), 16) == target


def test_site_call_out_of_range_is_refused():
    with pytest.raises(ValueError, match="out of range"):
        kernel_arch(arches.get("arm64")).sites.encode_call(0x40000000, 0x40000000 + (128 << 20))
    with pytest.raises(ValueError, match="out of rel32 range"):
        kernel_arch(arches.get("x86_64")).sites.encode_call(0x40000000, 0x40000000 + 5 + (1 << 31))


def test_nops_and_mov_x9_lr_are_what_the_kernel_writes():
    x86, a64 = arches.get("x86_64"), arches.get("arm64")
    assert disassemble(x86, kernel_arch(x86).sites.nop, 0)[0][1:] == (5, "nop dword ptr [rax + rax]")
    init = kernel_arch(a64).sites.init(0x1004, struct.pack("<II", 0xD503201F, 0xD503201F), 0)
    assert [t for _, _, t in disassemble(a64, init, 0x1000)] == ["mov x9, x30", "nop"]


# -- the preprocessor: GNU as's macros with arguments, and .irp ---------------------------------

MACROS = r"""
.macro store reg, off=8, base=rsp
    mov [\base+\off], \reg
.endm
.macro copy src, dst, kind
    .irp f, A, B
    mov r11, [\src+IN_\f]
    mov [\dst+\kind\()_\f], r11
    .endr
.endm
.macro twice reg
    store \reg
    store \reg, off=OUT_B
.endm
store rax
store rcx, 16
store rdx, base=rdi
store off=24, reg=rsi
copy rcx, rax, OUT
twice r8
.irp r, r9, r10
.irp o, 32, 40
store \r, \o
.endr
.endr
ret
"""
CONSTANTS = {"IN_A": 8, "IN_B": 16, "OUT_A": 48, "OUT_B": 56}
EXPANDED = [
    "mov [rsp+8], rax",
    "mov [rsp+16], rcx",
    "mov [rdi+8], rdx",
    "mov [rsp+24], rsi",
    "mov r11, [rcx+8]",
    "mov [rax+48], r11",
    "mov r11, [rcx+16]",
    "mov [rax+56], r11",
    "mov [rsp+8], r8",
    "mov [rsp+56], r8",
    "mov [rsp+32], r9",
    "mov [rsp+40], r9",
    "mov [rsp+32], r10",
    "mov [rsp+40], r10",
    "ret",
]


def test_macro_arguments_and_irp_expand():
    x86 = arches.get("x86_64")
    asm = assemble(x86, MACROS, 0x1000, CONSTANTS)
    assert list(asm.statements) == EXPANDED
    assert roundtrip(x86, asm) == []


@pytest.mark.skipif(shutil.which("as") is None or platform.machine() != "x86_64", reason="needs GNU as for x86_64")
def test_macros_expand_as_gnu_as_expands_them(tmp_path):
    """The same source through GNU as itself gives the same bytes."""
    source = tmp_path / "macros.s"
    source.write_text(".intel_syntax noprefix\n" + "".join(f"{k} = {v}\n" for k, v in CONSTANTS.items()) + MACROS)
    subprocess.run(["as", "--64", "-o", tmp_path / "macros.o", source], check=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", tmp_path / "macros.o", tmp_path / "text"], check=True)
    gnu, ours = (tmp_path / "text").read_bytes(), assemble(arches.get("x86_64"), MACROS, 0, CONSTANTS).code
    assert ours[: len(gnu)] == gnu and len(ours) - len(gnu) < 8  # then the lab's alignment padding


def test_other_lab_codes_symbols_are_named_like_constants():
    for arch_name, call in (("x86_64", "call helper"), ("arm64", "bl helper")):
        arch = arches.get(arch_name)
        asm = assemble(arch, f"{call}\nret\n", 0x3F001000, {"helper": 0x3F000100})
        assert asm.statements[0].endswith(str(0x3F000100)) and roundtrip(arch, asm) == []


@pytest.mark.parametrize(
    "source,error",
    [
        (".macro m a\nmov rax, \\b\n.endm\nm 1\n", "names an argument no macro or .irp around it has"),
        (".macro m a\nmov rax, \\a\n.endm\nm 1, 2\n", "too many arguments to macro m"),
        (".macro m a\nmov rax, \\a\n", ".macro without .endm"),
        (".irp r, rax\npush \\r\n", ".irp without .endr"),
        ("push rax\n.endr\n", ".endr without its .macro or .irp"),
        (".macro m\nm\n.endm\nm\n", "macros nested more than"),
    ],
)
def test_malformed_macros_are_one_line_errors(source, error):
    with pytest.raises(FtlabError, match=re.escape(error)) as err:
        assemble(arches.get("x86_64"), source, 0x1000, name="bad.S")
    assert str(err.value).startswith("bad.S: ") and "\n" not in str(err.value)
