"""arm64 kprobes: what arch/arm64/kernel/probes/ (decode-insn.c, simulate-insn.c) decide.

A probe is BRK #4 over the instruction; the exception's ELR points at the BRK itself. The
instruction then runs out of line, copied into a slot followed by BRK #6, with DAIF masked; or,
when it is a branch or PC-relative (b, bl, b.cond, cbz/cbnz, tbz/tbnz, adr, adrp, ldr literal,
ret, br, blr), it is simulated here on the saved registers, as the kernel does.
"""

import struct

from capstone import arm64_const as C

BREAKPOINT = struct.pack("<I", 0xD4200080)  # BRK #4 (KPROBES_BRK_IMM)
SS_BREAKPOINT = struct.pack("<I", 0xD42000C0)  # BRK #6 (KPROBES_BRK_SS_IMM)
TRAP_IP_OFFSET = 0  # regs->pc = the probe address
IRQ_BITS = 0x3C0  # DAIF: masked while the copy runs
SIMULATED = {"b", "bl", "cbz", "cbnz", "tbz", "tbnz", "adr", "adrp", "ldr", "ldrsw", "ret", "br", "blr"}
REFUSED = {
    "brk",
    "hlt",
    "svc",
    "hvc",
    "smc",
    "eret",
    "ldxr",
    "ldaxr",
    "stxr",
    "stlxr",
    "ldxp",
    "stxp",
    "msr",
    "mrs",
    "wfi",
    "wfe",
    "isb",
    "udf",
}
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


def _literal(insn) -> bool:
    return insn.mnemonic in ("ldr", "ldrsw") and insn.operands[-1].type == C.ARM64_OP_IMM


def decode(insn) -> str:
    """'simulate', 'xol', or why the instruction cannot be probed."""
    base = insn.mnemonic.split(".")[0]
    if base in REFUSED:
        return f"'{insn.mnemonic}' is not steppable on arm64 (aarch64_insn_is_steppable)"
    if base in SIMULATED and (base not in ("ldr", "ldrsw") or _literal(insn)):
        return "simulate"
    return "xol"


def copy_for_slot(insn, slot: int) -> bytes:
    return bytes(insn.bytes) + SS_BREAKPOINT


def _reg(regs, insn, reg_id) -> int:
    name = insn.reg_name(reg_id)
    if name in ("xzr", "wzr"):
        return 0
    value = regs.reg("x" + name[1:] if name[0] == "w" else name)
    return value & 0xFFFFFFFF if name[0] == "w" else value


def _set(regs, insn, reg_id, value) -> None:
    name = insn.reg_name(reg_id)
    if name not in ("xzr", "wzr"):
        regs.set_reg("x" + name[1:] if name[0] == "w" else name, value & (0xFFFFFFFF if name[0] == "w" else -1))


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
    elif base in ("ret", "br", "blr"):
        target = _reg(regs, insn, ops[0].reg) if ops else regs.reg("x30")
        if base == "blr":
            regs.set_reg("x30", pc + 4)
    else:
        raise ValueError(f"ftlab cannot simulate '{insn.mnemonic}'")
    regs.instruction_pointer_set(target)
