"""arm64 kprobes: what arch/arm64/kernel/probes/ (decode-insn.c, simulate-insn.c) decide.

A probe is BRK #4 over the instruction; the exception's ELR points at the BRK itself. The
instruction then runs out of line, copied into a slot followed by BRK #6, with DAIF masked; or,
when it is a branch or PC-relative (b, bl, b.cond, cbz/cbnz, tbz/tbnz, adr, adrp, ldr literal,
ret, br, blr) or a NOP, it is simulated here on the saved registers, as the kernel does.
"""

import struct

BREAKPOINT = struct.pack("<I", 0xD4200080)  # BRK #4 (KPROBES_BRK_IMM)
SS_BREAKPOINT = struct.pack("<I", 0xD42000C0)  # BRK #6 (KPROBES_BRK_SS_IMM)
TRAP_IP_OFFSET = 0  # regs->pc = the probe address
IRQ_BITS = 0x3C0  # DAIF: masked while the copy runs
# __AARCH64_INSN_FUNCS(name, mask, value) of arch/arm64/include/asm/insn.h: insn & mask == value
INSN = {
    "b": (0xFC000000, 0x14000000),
    "bl": (0xFC000000, 0x94000000),
    "cbz": (0x7F000000, 0x34000000),
    "cbnz": (0x7F000000, 0x35000000),
    "tbz": (0x7F000000, 0x36000000),
    "tbnz": (0x7F000000, 0x37000000),
    "bcond": (0xFF000010, 0x54000000),
    "br": (0xFFFFFC1F, 0xD61F0000),
    "br_auth": (0xFEFFF800, 0xD61F0800),
    "blr": (0xFFFFFC1F, 0xD63F0000),
    "blr_auth": (0xFEFFF800, 0xD63F0800),
    "ret": (0xFFFFFC1F, 0xD65F0000),
    "ret_auth": (0xFFFFFBFF, 0xD65F0BFF),
    "eret": (0xFFFFFFFF, 0xD69F03E0),
    "eret_auth": (0xFFFFFBFF, 0xD69F0BFF),
    "exception": (0xFF000000, 0xD4000000),
    "hint": (0xFFFFF01F, 0xD503201F),
    "mrs": (0xFFF00000, 0xD5300000),
    "msr_imm": (0xFFF8F01F, 0xD500401F),
    "msr_reg": (0xFFF00000, 0xD5100000),
    "adr": (0x9F000000, 0x10000000),
    "adrp": (0x9F000000, 0x90000000),
    "ldr_lit": (0xBF000000, 0x18000000),
    "ldrsw_lit": (0xFF000000, 0x98000000),
    "prfm_lit": (0xFF000000, 0xD8000000),
    "exclusive": (0x3F800000, 0x08000000),
}
BRANCH = ("b", "bl", "cbz", "cbnz", "tbz", "tbnz", "ret", "ret_auth", "bcond", "br", "br_auth", "blr", "blr_auth")
LITERAL = ("ldr_lit", "ldrsw_lit", "adr", "adrp", "prfm_lit")  # aarch64_insn_uses_literal()
# What arm_probe_decode_insn() simulates when the instruction is not steppable.
SIMULATED = ("bcond", "cbz", "cbnz", "tbz", "tbnz", "adr", "adrp", "b", "bl", "br", "blr", "ret")
CAPSTONE_NAMES = {"fp": "x29", "lr": "x30"}  # capstone's names for them
AARCH64_INSN_SPCLREG_DAIF = 0xDA11  # op0 3, op1 3, CRn 4, CRm 2, op2 1
HINT_NOP = 0x000
# aarch64_insn_is_steppable_hint(): NOP, XPACLRI, PACIA1716, PACIB1716, PACIAZ, PACIASP, PACIBZ,
# PACIBSP, BTI, BTI C, BTI J, BTI JC, by (insn & 0xFE0); every other hint (AUTIASP, WFI, ...) is not.
STEPPABLE_HINTS = {0x000, 0x0E0, 0x100, 0x140, 0x300, 0x320, 0x340, 0x360, 0x400, 0x440, 0x480, 0x4C0}
CONDS = {  # condition on (N, Z, C, V)
    "eq": lambda n, z, c, v: z,
    "ne": lambda n, z, c, v: not z,
    "hs": lambda n, z, c, v: c,
    "cs": lambda n, z, c, v: c,
    "lo": lambda n, z, c, v: not c,
    "cc": lambda n, z, c, v: not c,
    "mi": lambda n, z, c, v: n,
    "pl": lambda n, z, c, v: not n,
    "vs": lambda n, z, c, v: v,
    "vc": lambda n, z, c, v: not v,
    "hi": lambda n, z, c, v: c and not z,
    "ls": lambda n, z, c, v: not c or z,
    "ge": lambda n, z, c, v: n == v,
    "lt": lambda n, z, c, v: n != v,
    "gt": lambda n, z, c, v: not z and n == v,
    "le": lambda n, z, c, v: z or n != v,
    "al": lambda n, z, c, v: True,
}


def arch_adjust_kprobe_addr(addr: int, offset: int, read) -> tuple[int, bool]:
    """(the probe's address, on_func_entry): kernel/kprobes.c's __weak default, which arm64 keeps
    (a BTI landing pad at +0 is probed where it is)."""
    return addr + offset, offset == 0


def irqs_masked(pstate: int) -> int:
    return pstate | IRQ_BITS


def _is(name: str, insn: int) -> bool:
    mask, value = INSN[name]
    return insn & mask == value


def aarch64_insn_is_steppable(insn: int) -> str | None:
    """None if the instruction may run from the XOL slot, else why not (decode-insn.c)."""
    if insn >> 25 & 0xF in (0xA, 0xB):  # AARCH64_INSN_CLS_BR_SYS
        if any(_is(n, insn) for n in (*BRANCH, "msr_imm", "msr_reg")):
            return "it writes the PC or is an MSR"
        if any(_is(n, insn) for n in ("exception", "eret", "eret_auth")):
            return "it generates or returns from an exception"
        if _is("mrs", insn):  # DAIF reads are masked while stepping
            return "it reads DAIF (MRS)" if (insn & 0x1FFFE0) >> 5 == AARCH64_INSN_SPCLREG_DAIF else None
        if _is("hint", insn) and insn & 0xFE0 not in STEPPABLE_HINTS:
            return "it is a HINT not on the steppable list (aarch64_insn_is_steppable_hint)"
        return None
    if any(_is(n, insn) for n in LITERAL):
        return "it loads a PC-relative literal"
    if _is("exclusive", insn):
        return "it is an exclusive load/store"
    return None


def decode(insn) -> str:
    """'simulate', 'xol', or why the instruction cannot be probed: arm_kprobe_decode_insn() and
    arm_probe_decode_insn() (arch/arm64/kernel/probes/decode-insn.c), which simulate literal loads
    and NOP, step what aarch64_insn_is_steppable() allows, simulate the branches and adr/adrp it
    refuses, and reject the rest."""
    word = struct.unpack("<I", bytes(insn.bytes))[0]
    if _is("ldr_lit", word) or _is("ldrsw_lit", word) or (_is("hint", word) and word & 0xFE0 == HINT_NOP):
        return "simulate"
    why = aarch64_insn_is_steppable(word)
    if why is None:
        return "xol"
    if any(_is(n, word) for n in SIMULATED):
        return "simulate"
    return f"'{insn.mnemonic}' is rejected on arm64: not steppable ({why}) and not simulated"


def copy_for_slot(insn, slot: int) -> bytes:
    return bytes(insn.bytes) + SS_BREAKPOINT


def _member(insn, reg_id) -> tuple[str | None, int]:
    """The pt_regs member an operand names (None: the zero register) and its width's mask, as
    get_x_reg()/get_w_reg() read it (simulate-insn.c). Capstone calls x29 and x30 fp and lr."""
    name = CAPSTONE_NAMES.get(insn.reg_name(reg_id), insn.reg_name(reg_id))
    mask = 0xFFFFFFFF if name[0] == "w" else (1 << 64) - 1
    return (None if name in ("xzr", "wzr") else "x" + name[1:]), mask


def _reg(regs, insn, reg_id) -> int:
    member, mask = _member(insn, reg_id)
    return 0 if member is None else regs.reg(member) & mask


def _set(regs, insn, reg_id, value) -> None:
    member, mask = _member(insn, reg_id)
    if member is not None:
        regs.set_reg(member, value & mask)


def simulate(insn, regs, machine) -> None:
    """simulate-insn.c: the instruction's effect on the saved registers."""
    pc, ops = insn.address, insn.operands
    base, _, cond = insn.mnemonic.partition(".")
    nzcv = [regs.fields["pstate"] >> b & 1 for b in (31, 30, 29, 28)]
    target = pc + 4
    if base in ("b", "bl"):
        if not cond or CONDS[cond](*nzcv):
            target = ops[0].imm
        if base == "bl":
            regs.set_reg("x30", pc + 4)
    elif base in ("cbz", "cbnz"):
        if (_reg(regs, insn, ops[0].reg) == 0) == (base == "cbz"):
            target = ops[1].imm
    elif base in ("tbz", "tbnz"):
        if (_reg(regs, insn, ops[0].reg) >> ops[1].imm & 1 == 0) == (base == "tbz"):
            target = ops[2].imm
    elif base in ("adr", "adrp"):
        _set(regs, insn, ops[0].reg, ops[1].imm)
    elif base in ("ldr", "ldrsw"):
        wide = insn.reg_name(ops[0].reg)[0] == "x" and base == "ldr"
        value = machine.u64(ops[1].imm) if wide else struct.unpack("<I", machine.read(ops[1].imm, 4))[0]
        if base == "ldrsw" and value >> 31:
            value |= 0xFFFFFFFF00000000
        _set(regs, insn, ops[0].reg, value)
    elif base == "nop":
        pass  # simulate_nop
    elif base in ("ret", "br", "blr"):
        target = _reg(regs, insn, ops[0].reg) if ops else regs.reg("x30")
        if base == "blr":
            regs.set_reg("x30", pc + 4)
    else:
        raise ValueError(f"ftlab cannot simulate '{insn.mnemonic}'")
    regs.instruction_pointer_set(target)
