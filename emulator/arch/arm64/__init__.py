"""arm64, the CPU: registers, AAPCS64, relocations, EL1h setup, BRK delivery."""

import struct
from pathlib import Path

import capstone
import keystone
import unicorn
from unicorn import arm64_const as A

from ..base import Arch, Reloc

X = [f"x{n}" for n in range(31)]

REGS = {
    **{x: getattr(A, f"UC_ARM64_REG_X{n}") for n, x in enumerate(X)},
    "sp": A.UC_ARM64_REG_SP,
    "pc": A.UC_ARM64_REG_PC,
    "pstate": A.UC_ARM64_REG_PSTATE,
}

# PSTATE as SPSR_EL1 lays it out (what pt_regs->pstate holds).
PSTATE_BITS = {
    "N": (31, 1),
    "Z": (30, 1),
    "C": (29, 1),
    "V": (28, 1),
    "TCO": (25, 1),
    "DIT": (24, 1),
    "UAO": (23, 1),
    "PAN": (22, 1),
    "SS": (21, 1),
    "IL": (20, 1),
    "ALLINT": (13, 1),
    "SSBS": (12, 1),
    "BTYPE": (10, 2),
    "D": (9, 1),
    "A": (8, 1),
    "I": (7, 1),
    "F": (6, 1),
    "nRW": (4, 1),
    "EL": (2, 2),
    "SP": (0, 1),
}

PSTATE_PAN = 1 << 22
word = struct.Struct("<I")

EXCP_BKPT = 7  # unicorn's intno for brk (PC still at the brk)
ESR_ELx_EC_BRK64, ESR_ELx_IL = 0x3C << 26, 1 << 25
DAIF_MASK, MODE_EL1H = 0x3C0, 0x5
PSTATE_KEEP = 0xF0000000 | 1 << 22 | 1 << 23  # NZCV, PAN, UAO (PAN stays set: SCTLR_EL1.SPAN)


def install_trap_vector(uc, vectors, page):
    uc.reg_write(A.UC_ARM64_REG_VBAR_EL1, vectors)


def deliver_trap(uc, intno, read):
    """What the CPU does for BRK at EL1h: ELR_EL1 = the brk, ESR_EL1 = EC BRK64 with the
    immediate, SPSR_EL1 = PSTATE, then DAIF masked, EL1h, and the vector at VBAR_EL1 + 0x200
    (current EL, SP_ELx, synchronous)."""
    if intno != EXCP_BKPT:
        return f"exception {intno} (only brk is delivered)"
    pc = uc.reg_read(A.UC_ARM64_REG_PC)
    imm = (word.unpack(read(pc, 4))[0] >> 5) & 0xFFFF
    old = uc.reg_read(A.UC_ARM64_REG_PSTATE)
    uc.reg_write(A.UC_ARM64_REG_ELR_EL1, pc)
    uc.reg_write(A.UC_ARM64_REG_ESR_EL1, ESR_ELx_EC_BRK64 | ESR_ELx_IL | imm)
    uc.reg_write(A.UC_ARM64_REG_PSTATE, (old & PSTATE_KEEP) | DAIF_MASK | MODE_EL1H)
    uc.cpr_write(3, 0, 4, 0, 0, old)  # SPSR_EL1; a CP_REG write also rebuilds the cached EL
    uc.reg_write(A.UC_ARM64_REG_PC, uc.reg_read(A.UC_ARM64_REG_VBAR_EL1) + 0x200)
    return None


def setup_cpu(uc, page):
    """EL1h with interrupts unmasked and PAN set, as kernel code normally runs (CONFIG_ARM64_PAN).
    SCR_EL3.RW=1 so that an EL1->EL1 eret is legal (with unicorn's reset RW=0, EL1 counts as AArch32
    and the eret is an illegal return that sets PSTATE.IL); SP_EL0 points at a zeroed "task" page
    (the stack canary lives there)."""
    uc.reg_write(A.UC_ARM64_REG_PSTATE, PSTATE_PAN | 0x5)
    uc.reg_write(A.UC_ARM64_REG_SP_EL0, page)
    uc.cpr_write(3, 6, 1, 1, 0, 0x400)  # SCR_EL3; a CP_REG write also rebuilds the cached EL


def _field(shift, width, scale=0):
    mask = ((1 << width) - 1) << shift
    return lambda old, value: (old & ~mask) | (((value >> scale) << shift) & mask)


def _adr(old, value):
    """ADR/ADRP immediate: immlo in bits 29-30, immhi in bits 5-23."""
    return (old & ~((3 << 29) | (0x7FFFF << 5))) | ((value & 3) << 29) | (((value >> 2) & 0x7FFFF) << 5)


def _page(x):
    return x & ~0xFFF


def _lo12(shift):
    return Reloc(f"R_AARCH64_LDST{8 << shift}_ABS_LO12_NC", 4, lambda S, A, P: (S + A) & 0xFFF, _field(10, 12, shift))


NONE = Reloc("R_AARCH64_NONE", 0, lambda S, A, P: 0)
RELOCS = {
    0: NONE,  # R_ARM_NONE and R_AARCH64_NONE: the null relocations reloc_insn's caller skips
    256: NONE,  # (arch/arm64/kernel/module.c apply_relocate_add())
    257: Reloc("R_AARCH64_ABS64", 8, lambda S, A, P: S + A),
    258: Reloc("R_AARCH64_ABS32", 4, lambda S, A, P: S + A, bits=(32, False)),
    260: Reloc("R_AARCH64_PREL64", 8, lambda S, A, P: S + A - P),
    261: Reloc("R_AARCH64_PREL32", 4, lambda S, A, P: S + A - P, bits=(32, True)),
    273: Reloc("R_AARCH64_LD_PREL_LO19", 4, lambda S, A, P: S + A - P, _field(5, 19, 2), (21, True)),
    274: Reloc("R_AARCH64_ADR_PREL_LO21", 4, lambda S, A, P: S + A - P, _adr, (21, True)),
    275: Reloc("R_AARCH64_ADR_PREL_PG_HI21", 4, lambda S, A, P: (_page(S + A) - _page(P)) >> 12, _adr, (21, True)),
    276: Reloc("R_AARCH64_ADR_PREL_PG_HI21_NC", 4, lambda S, A, P: (_page(S + A) - _page(P)) >> 12, _adr),
    277: Reloc("R_AARCH64_ADD_ABS_LO12_NC", 4, lambda S, A, P: (S + A) & 0xFFF, _field(10, 12)),
    278: _lo12(0),
    284: _lo12(1),
    285: _lo12(2),
    286: _lo12(3),
    299: _lo12(4),
    279: Reloc("R_AARCH64_TSTBR14", 4, lambda S, A, P: S + A - P, _field(5, 14, 2), (16, True)),
    280: Reloc("R_AARCH64_CONDBR19", 4, lambda S, A, P: S + A - P, _field(5, 19, 2), (21, True)),
    282: Reloc("R_AARCH64_JUMP26", 4, lambda S, A, P: S + A - P, _field(0, 26, 2), (28, True)),
    283: Reloc("R_AARCH64_CALL26", 4, lambda S, A, P: S + A - P, _field(0, 26, 2), (28, True)),
}

PIC = "kernel code is built -fno-pic (-fno-PIE), which needs no GOT"
TLS = "thread-local (__thread) data has no place in kernel code (per-cpu data replaces it)"
# What arch/arm64/kernel/module.c apply_relocate_add() refuses ("unsupported RELA relocation").
RELOC_HINTS = {
    **dict.fromkeys(range(300, 313), PIC),  # MOVW_GOTOFF_G0 ... LD64_GOT_LO12_NC
    **dict.fromkeys(range(512, 574), TLS),  # TLSGD_ADR_PREL21 ... TLSDESC_*, TLSLE_*
}

CPU = Arch(
    name="arm64",
    elf_machine="EM_AARCH64",
    uc=(unicorn.UC_ARCH_ARM64, unicorn.UC_MODE_ARM),
    cs=(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM),
    ks=(keystone.KS_ARCH_ARM64, keystone.KS_MODE_LITTLE_ENDIAN),
    cpu_model=A.UC_CPU_ARM64_MAX,  # MAX has PAN, UAO and BTI; the default Cortex-A72 has none
    insn_align=4,
    regs=REGS,
    pc="pc",
    sp="sp",
    arg_regs=tuple(X[:8]),
    ret_regs=("x0", "x1"),
    lr="x30",
    fp="x29",
    flags_reg="pstate",
    flag_bits=PSTATE_BITS,
    irqs_off=("I", 1),
    stack_args_offset=0,
    install_trap_vector=install_trap_vector,
    deliver_trap=deliver_trap,
    relocs=RELOCS,
    setup_cpu=setup_cpu,
    runtime=Path(__file__).parent / "runtime.S",
    reloc_hints=RELOC_HINTS,
    site_flags="-fpatchable-function-entry=2",  # arch/arm64/Makefile (DYNAMIC_FTRACE_WITH_ARGS)
)
