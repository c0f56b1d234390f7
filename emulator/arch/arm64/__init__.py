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
# arch/arm64/include/uapi/asm/ptrace.h: the mode field, and EL0 with SP_EL0 (user_mode())
PSR_MODE_MASK, PSR_MODE_EL0T = 0xF, 0x0
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


# SCR_EL3, HCR_EL2 and SCTLR_EL1 bits, and the system registers' (op0, op1, CRn, CRm, op2).
SCR_EL3_NS, SCR_EL3_RW, SCR_EL3_APK, SCR_EL3_API = 1, 1 << 10, 1 << 16, 1 << 17
HCR_RW, HCR_APK, HCR_API = 1 << 31, 1 << 40, 1 << 41
SCTLR_ELx_ENIA, SCTLR_ELx_ENIB, SCTLR_ELx_ENDA, SCTLR_ELx_ENDB = 1 << 31, 1 << 30, 1 << 27, 1 << 13
SCR_EL3, HCR_EL2, SCTLR_EL1 = (3, 6, 1, 1, 0), (3, 4, 1, 1, 0), (3, 0, 1, 0, 0)
APIAKEYLO_EL1, APIAKEYHI_EL1 = (3, 0, 2, 1, 0), (3, 0, 2, 1, 1)
ID_AA64ISAR1_EL1, ID_AA64ISAR2_EL1 = (3, 0, 0, 6, 1), (3, 0, 0, 6, 2)
ID_AA64ISAR1_APA_SHIFT, ID_AA64ISAR2_APA3_SHIFT = 4, 12
# The kernel's instruction key A. ptrauth_keys_init_kernel() draws it per task with
# get_random_bytes(); the lab's is fixed, so signed return addresses are the same on every run.
KERNEL_APIAKEY = (0x0123_4567_89AB_CDEF, 0xFEDC_BA98_7654_3210)  # lo, hi


def has_address_auth(uc) -> bool:
    """What __ptrauth_keys_init_cpu tests: ID_AA64ISAR1_EL1.{APA,API} or ID_AA64ISAR2_EL1.APA3."""
    apa_api = (uc.cpr_read(*ID_AA64ISAR1_EL1) >> ID_AA64ISAR1_APA_SHIFT) & 0xFF
    return bool(apa_api or (uc.cpr_read(*ID_AA64ISAR2_EL1) >> ID_AA64ISAR2_APA3_SHIFT) & 0xF)


def setup_cpu(uc, page):
    """EL1h with interrupts unmasked and PAN set, as kernel code normally runs (CONFIG_ARM64_PAN);
    SP_EL0 points at a zeroed "task" page (the stack canary lives there).

    EL1 is Non-secure, below an EL2 and EL3 set up as Documentation/arch/arm64/booting.rst asks of
    firmware: SCR_EL3.RW and HCR_EL2.RW (EL1 is AArch64; with unicorn's reset RW=0 an EL1->EL1
    eret is an illegal return that sets PSTATE.IL), SCR_EL3.{API,APK} and HCR_EL2.{API,APK} ("for
    CPUs with pointer authentication": PAC instructions and key registers are not trapped); HCR_EL2
    is the kernel's HCR_HOST_NVHE_FLAGS (arch/arm64/include/asm/kvm_arm.h) less HCR_ATA (no MTE).
    Then pointer authentication is on as __ptrauth_keys_init_cpu leaves it
    (arch/arm64/include/asm/asm_pointer_auth.h, torvalds/linux 292ca2d8): SCTLR_EL1.{EnIA, EnIB,
    EnDA, EnDB} set and the kernel's APIA key installed, so paciasp signs the return address and
    autiasp checks it (in Secure EL1 unicorn traps them, docs/unicorn.md)."""
    uc.reg_write(A.UC_ARM64_REG_PSTATE, PSTATE_PAN | 0x5)
    uc.reg_write(A.UC_ARM64_REG_SP_EL0, page)
    uc.cpr_write(*HCR_EL2, HCR_RW | HCR_API | HCR_APK)
    if has_address_auth(uc):
        enable = SCTLR_ELx_ENIA | SCTLR_ELx_ENIB | SCTLR_ELx_ENDA | SCTLR_ELx_ENDB
        uc.cpr_write(*SCTLR_EL1, uc.cpr_read(*SCTLR_EL1) | enable)
        uc.cpr_write(*APIAKEYLO_EL1, KERNEL_APIAKEY[0])
        uc.cpr_write(*APIAKEYHI_EL1, KERNEL_APIAKEY[1])
    # last: a CP_REG write also rebuilds the cached EL and security state
    uc.cpr_write(*SCR_EL3, SCR_EL3_NS | SCR_EL3_RW | SCR_EL3_APK | SCR_EL3_API)


PAC_ERROR_SHIFT = 61  # where AUTIA/AUTIB put their error code with TBI off (TCR_EL1.TBI0 is 0)
PAC_ERRORS = {0b01: "A", 0b10: "B"}  # error code -> key


def failed_authentication(addr, name):
    """Without FEAT_FPAC a failed AUTIA/AUTIB does not fault: it replaces the pointer's PAC field
    with copies of bit 55 and sets a per-key error code in bits 62:61 (the Arm ARM's AArch64.Auth;
    QEMU's pauth_auth), making it non-canonical. The fault comes at the use, such as a ret."""
    top = (addr >> 48) ^ (0xFFFF if addr >> 55 & 1 else 0)  # bits 63:48, 0 where they extend bit 55
    error = top >> (PAC_ERROR_SHIFT - 48)
    key = PAC_ERRORS.get(error)
    if key is None or top != error << (PAC_ERROR_SHIFT - 48):
        return None
    pointer = addr ^ error << PAC_ERROR_SHIFT
    return (
        f"a pointer that failed authentication: AUTI{key} (key {key}) found the PAC of {pointer:#x} "
        f"<{name(pointer)}> wrong and poisoned it (a return address corrupted after PACI{key}SP?)"
    )


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
    cpu_model=A.UC_CPU_ARM64_MAX,  # MAX has PAN, UAO, BTI and PAuth; the default Cortex-A72 none
    insn_align=4,
    regs=REGS,
    pc="pc",
    sp="sp",
    arg_regs=tuple(X[:8]),
    ret_regs=("x0", "x1"),
    lr="x30",
    fp="x29",
    flags_reg="pstate",
    user_mode=lambda reg: reg("pstate") & PSR_MODE_MASK == PSR_MODE_EL0T,
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
    refused=None,
    bad_pointer=failed_authentication,
)
