"""x86_64, the CPU: registers, SysV calling convention, relocations, CPU setup, int3 delivery."""

import struct
from pathlib import Path

import capstone
import keystone
import unicorn
from unicorn import x86_const as X

from ..base import Arch, Reloc

REGS = {
    "r15": X.UC_X86_REG_R15,
    "r14": X.UC_X86_REG_R14,
    "r13": X.UC_X86_REG_R13,
    "r12": X.UC_X86_REG_R12,
    "bp": X.UC_X86_REG_RBP,
    "bx": X.UC_X86_REG_RBX,
    "r11": X.UC_X86_REG_R11,
    "r10": X.UC_X86_REG_R10,
    "r9": X.UC_X86_REG_R9,
    "r8": X.UC_X86_REG_R8,
    "ax": X.UC_X86_REG_RAX,
    "cx": X.UC_X86_REG_RCX,
    "dx": X.UC_X86_REG_RDX,
    "si": X.UC_X86_REG_RSI,
    "di": X.UC_X86_REG_RDI,
    "ip": X.UC_X86_REG_RIP,
    "cs": X.UC_X86_REG_CS,
    "flags": X.UC_X86_REG_RFLAGS,
    "sp": X.UC_X86_REG_RSP,
    "ss": X.UC_X86_REG_SS,
}

# RFLAGS fields (bit 1 always reads 1 and is not named).
RFLAGS_BITS = {
    "CF": (0, 1),
    "PF": (2, 1),
    "AF": (4, 1),
    "ZF": (6, 1),
    "SF": (7, 1),
    "TF": (8, 1),
    "IF": (9, 1),
    "DF": (10, 1),
    "OF": (11, 1),
    "IOPL": (12, 2),
    "NT": (14, 1),
    "RF": (16, 1),
    "VM": (17, 1),
    "AC": (18, 1),
    "VIF": (19, 1),
    "VIP": (20, 1),
    "ID": (21, 1),
}

KERNEL_CS, KERNEL_DS = 0x10, 0x18  # __KERNEL_CS / __KERNEL_DS


IDT_OFFSET = 0x400  # the IDT's place in the per-cpu page
INT3_VECTOR, X86_EFLAGS_IF, X86_EFLAGS_TF = 3, 1 << 9, 1 << 8


def install_trap_vector(uc, handler, page):
    """An IDT whose gate 3 (#BP, int3) is a 64-bit interrupt gate to handler."""
    idt = page + IDT_OFFSET
    gate = struct.pack("<HHBBHIi", handler & 0xFFFF, KERNEL_CS, 0, 0x8E, (handler >> 16) & 0xFFFF, handler >> 32, 0)
    uc.mem_write(idt + 16 * INT3_VECTOR, gate)
    uc.reg_write(X.UC_X86_REG_IDTR, (0, idt, 16 * 256 - 1, 0))


def deliver_trap(uc, intno, read):
    """What the CPU does for int3 through an interrupt gate: align the stack, push ss, rsp,
    rflags, cs and rip (already past the int3), clear IF and TF, jump to the gate's handler.
    (The gap for emulated calls is the entry code's, not the CPU's: tracers/arch/x86_64/entry.S.)"""
    if intno != INT3_VECTOR:
        return f"interrupt {intno} (only int3 is delivered)"
    base = uc.reg_read(X.UC_X86_REG_IDTR)[1]
    lo, _selector, _ist, _type_attr, mid, hi, _ = struct.unpack("<HHBBHIi", read(base + 16 * intno, 16))
    rip, rsp, flags = (uc.reg_read(r) for r in (X.UC_X86_REG_RIP, X.UC_X86_REG_RSP, X.UC_X86_REG_RFLAGS))
    frame = (rsp & ~0xF) - 40
    uc.mem_write(frame, struct.pack("<5Q", rip, KERNEL_CS, flags, rsp, KERNEL_DS))
    uc.reg_write(X.UC_X86_REG_RSP, frame)
    uc.reg_write(X.UC_X86_REG_RFLAGS, flags & ~(X86_EFLAGS_IF | X86_EFLAGS_TF))
    uc.reg_write(X.UC_X86_REG_RIP, lo | mid << 16 | hi << 32)
    return None


def setup_cpu(uc, page):
    """Long mode at CPL 0 with real kernel selectors: a GDT (unicorn starts with none, and iretq then
    raises #GP), IF on, and GS pointing at a zeroed per-cpu page (the stack canary lives at %gs:0x28)."""
    gdt = page + 0x800
    uc.mem_write(gdt, struct.pack("<4Q", 0, 0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF))
    uc.reg_write(X.UC_X86_REG_GDTR, (0, gdt, 4 * 8 - 1, 0))
    uc.reg_write(X.UC_X86_REG_CS, KERNEL_CS)
    uc.reg_write(X.UC_X86_REG_SS, KERNEL_DS)
    uc.reg_write(X.UC_X86_REG_GS_BASE, page)
    uc.reg_write(X.UC_X86_REG_RFLAGS, 0x202)


# Legacy prefixes that may come before a VEX, EVEX or XOP opcode byte (a REX prefix there is #UD).
LEGACY_PREFIXES = frozenset(b"\x26\x2e\x36\x3e\x64\x65\x66\x67\xf0\xf2\xf3")
VEX = (
    "VEX-encoded (AVX, BMI): Unicorn runs 128-bit AVX with SSE semantics (vpaddd xmm0, xmm1, xmm2"
    " computes xmm0 + xmm2), so the lab runs no VEX instruction until one is verified"
)
REFUSED_OPCODES = {
    0xC4: VEX,
    0xC5: VEX,
    0x62: "EVEX-encoded (AVX-512): Unicorn does not implement it",
    0x8F: "XOP-encoded (AMD): Unicorn does not implement it",
}


def refused(code: bytes) -> str | None:
    """VEX (C4, C5), EVEX (62) and XOP (8F with ModRM.reg != 0, POP r/m otherwise) encodings: in
    64-bit mode C4, C5 and 62 after the legacy prefixes are nothing else (LES, LDS and BOUND are
    gone). Unicorn 2.1 runs 128-bit VEX ones with legacy SSE semantics (docs/unicorn.md, x86_64)."""
    i = next((n for n, b in enumerate(code) if b not in LEGACY_PREFIXES), len(code))
    opcode = code[i] if i < len(code) else None
    if opcode == 0x8F and (i + 1 >= len(code) or not code[i + 1] >> 3 & 7):
        return None
    return REFUSED_OPCODES.get(opcode) if opcode is not None else None


RELOCS = {
    0: Reloc("R_X86_64_NONE", 0, lambda S, A, P: 0),  # a no-op, as apply_relocate_add() takes it
    1: Reloc("R_X86_64_64", 8, lambda S, A, P: S + A),
    2: Reloc("R_X86_64_PC32", 4, lambda S, A, P: S + A - P, bits=(32, True)),
    4: Reloc("R_X86_64_PLT32", 4, lambda S, A, P: S + A - P, bits=(32, True)),
    10: Reloc("R_X86_64_32", 4, lambda S, A, P: S + A, bits=(32, False)),
    11: Reloc("R_X86_64_32S", 4, lambda S, A, P: S + A, bits=(32, True)),
    24: Reloc("R_X86_64_PC64", 8, lambda S, A, P: S + A - P),
}

PIC = "kernel code is built -fno-pic -mcmodel=kernel, which needs no GOT"
TLS = "thread-local (__thread) data has no place in kernel code (per-cpu data replaces it)"
# What arch/x86/kernel/module.c apply_relocate_add() refuses ("Unknown rela relocation"), named.
RELOC_HINTS = {
    **dict.fromkeys((3, 9, 25, 26, 27, 28, 29, 30, 31, 41, 42), PIC),  # GOT32 ... REX_GOTPCRELX
    **dict.fromkeys((16, 17, 18, 19, 20, 21, 22, 23, 34, 35, 36), TLS),  # DTPMOD64 ... TLSDESC
}

CPU = Arch(
    name="x86_64",
    elf_machine="EM_X86_64",
    uc=(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64),
    cs=(capstone.CS_ARCH_X86, capstone.CS_MODE_64),
    ks=(keystone.KS_ARCH_X86, keystone.KS_MODE_64),
    cpu_model=None,
    insn_align=1,
    regs=REGS,
    pc="ip",
    sp="sp",
    arg_regs=("di", "si", "dx", "cx", "r8", "r9"),
    ret_regs=("ax", "dx"),
    lr=None,
    fp="bp",
    flags_reg="flags",
    user_mode=lambda reg: bool(reg("cs") & 3),  # the RPL of the saved cs
    flag_bits=RFLAGS_BITS,
    irqs_off=("IF", 0),
    stack_args_offset=8,  # above the return address
    install_trap_vector=install_trap_vector,
    deliver_trap=deliver_trap,
    relocs=RELOCS,
    setup_cpu=setup_cpu,
    runtime=Path(__file__).parent / "runtime.S",
    reloc_hints=RELOC_HINTS,
    site_flags="-pg -mfentry -mrecord-mcount",  # arch/x86/Makefile, kernel/trace/Kconfig (CC_USING_FENTRY)
    refused=refused,
    bad_pointer=None,
)
