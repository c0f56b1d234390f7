"""Every instruction keystone assembles for the lab is checked against capstone's decoding."""
import struct
from pathlib import Path

import pytest

from emulator import arch as arches
from emulator.asm import assemble, disassemble, roundtrip
from tracers.arch import kernel_arch
from tracers.core.ring_buffer import asm_constants

ROOT = Path(__file__).resolve().parent.parent          # not the working directory: pytest may run from tests/
SOURCES = [p for p in sorted(ROOT.glob("emulator/arch/*/*.S")) + sorted(ROOT.glob("tracers/arch/*/*.S"))
           if p.name != "macros.S"]


def test_every_lab_source_is_round_tripped():
    """An empty SOURCES would skip the round trip silently: each arch has its runtime and trampolines."""
    for arch_name in arches.ARCHES:
        names = {p.name for p in SOURCES if p.parent.name == arch_name}
        assert {"runtime.S", "ftrace_caller.S", "return_to_handler.S", "rethook_trampoline.S", "entry.S",
                "function_trace.S"} <= names, arch_name


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_lab_sources_roundtrip(path):
    arch = arches.get(path.parent.name)
    karch = kernel_arch(arch)
    asm = assemble(arch, path.read_text(), 0x3F000000, {**karch.asm_constants, **asm_constants(karch)},
                   where=path.parent)
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
    with pytest.raises(ValueError):
        kernel_arch(arches.get("arm64")).sites.encode_call(0x40000000, 0x40000000 + (128 << 20))
    with pytest.raises(ValueError):
        kernel_arch(arches.get("x86_64")).sites.encode_call(0x40000000, 0x40000000 + 5 + (1 << 31))


def test_nops_and_mov_x9_lr_are_what_the_kernel_writes():
    x86, a64 = arches.get("x86_64"), arches.get("arm64")
    assert disassemble(x86, kernel_arch(x86).sites.nop, 0)[0][1:] == (5, "nop dword ptr [rax + rax]")
    init = kernel_arch(a64).sites.init(0x1004, struct.pack("<II", 0xD503201F, 0xD503201F), 0)
    assert [t for _, _, t in disassemble(a64, init, 0x1000)] == ["mov x9, x30", "nop"]
