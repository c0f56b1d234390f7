"""x86_64 kprobes: what arch/x86/kernel/kprobes/core.c decides per instruction.

A probe is an int3 (0xCC) over the instruction's first byte; the trap leaves ip one past it. The
instruction then runs out of line, copied into a slot followed by another int3 (rip-relative
displacements rewritten for the slot), or, when it is a branch, call or return, it is emulated
here as the kernel's emulate_op does.
"""

import struct

from capstone import x86_const as C

BREAKPOINT = b"\xcc"  # INT3_INSN_OPCODE
SS_BREAKPOINT = b"\xcc"  # after the copy in its slot
TRAP_IP_OFFSET = 1  # regs->ip = probe address + 1 at the trap
IRQ_BITS = 1 << 9  # IF: cleared while the copy runs
IF_MODIFIERS = {"cli", "sti", "pushfq", "popfq", "pushf", "popf"}  # kprobe_emulate_ifmodifiers
X86_EFLAGS_IF = 1 << 9
# kprobe_emulate_loop: LOOPNE (E0), LOOPE (E1), LOOP (E2) -> the ZF they also require (None: any)
LOOPS = {"loopne": 0, "loope": 1, "loop": None}
EMULATED_GROUPS = (C.X86_GRP_JUMP, C.X86_GRP_CALL, C.X86_GRP_RET)
JCC = {  # condition on (CF, PF, ZF, SF, OF)
    "jo": lambda c, p, z, s, o: o,
    "jno": lambda c, p, z, s, o: not o,
    "jb": lambda c, p, z, s, o: c,
    "jae": lambda c, p, z, s, o: not c,
    "je": lambda c, p, z, s, o: z,
    "jne": lambda c, p, z, s, o: not z,
    "jbe": lambda c, p, z, s, o: c or z,
    "ja": lambda c, p, z, s, o: not (c or z),
    "js": lambda c, p, z, s, o: s,
    "jns": lambda c, p, z, s, o: not s,
    "jp": lambda c, p, z, s, o: p,
    "jnp": lambda c, p, z, s, o: not p,
    "jl": lambda c, p, z, s, o: s != o,
    "jge": lambda c, p, z, s, o: s == o,
    "jle": lambda c, p, z, s, o: z or s != o,
    "jg": lambda c, p, z, s, o: not z and s == o,
}
# prepare_emulation() sends ret (c3), ret imm16 (c2) and the far returns (cb, ca) alike to
# kprobe_emulate_ret(), whose int3_emulate_ret() (arch/x86/include/asm/text-patching.h) pops the
# return address and jumps there: a probed `ret imm16` leaves its imm16 bytes on the stack, and a
# far return is taken as a near one (arch/x86/kernel/kprobes/core.c, so since 6256e668b7af, 5.13's
# "Use int3 instead of debug trap for single-step"). Kernel code never uses either; a hand-written
# test function may (fixtures/asm/x86_64/insns.S, pop_two).
RETURNS = ("ret", "retq", "retf", "retfq")
ENDBR64 = 0xFA1E0FF3  # gen_endbr(): f3 0f 1e fa (arch/x86/include/asm/ibt.h)
ENDBR_INSN_SIZE = 4
REG = {"rax": "ax", "rbx": "bx", "rcx": "cx", "rdx": "dx", "rsi": "si", "rdi": "di", "rbp": "bp", "rsp": "sp"}
U64 = struct.Struct("<Q")
U32 = struct.Struct("<I")


def arch_adjust_kprobe_addr(addr: int, offset: int, read) -> tuple[int, bool]:
    """(the probe's address, on_func_entry) for symbol address addr + offset. After an ENDBR the
    function's entry is +4, the fentry site: +0 and +4 both probe there (arch/x86/kernel/kprobes/
    core.c since 5.18's "x86/ibt,kprobes: Fix more +0 assumptions"; is_endbr() folds ENDBR32 in)."""
    if U32.unpack(read(addr, 4))[0] & ~0x01000000 == ENDBR64:
        on_func_entry = offset in (0, ENDBR_INSN_SIZE)
        return addr + (ENDBR_INSN_SIZE if on_func_entry else offset), on_func_entry
    return addr + offset, offset == 0


def irqs_masked(flags: int) -> int:
    return flags & ~IRQ_BITS


def decode(insn) -> str:
    """'simulate', 'xol', or why the instruction cannot be probed: prepare_emulation() and
    __copy_instruction() (arch/x86/kernel/kprobes/core.c) refuse int3, iret, far calls and jumps,
    VMX instructions, call/jmp through memory or with a 16/32-bit address, and mov ss; they
    emulate branches (loop* included), calls, returns and the IF modifiers (cli, sti, pushf,
    popf);
    everything else runs out of line."""
    op, mnem, reg, mod = insn.opcode[0], insn.mnemonic, insn.modrm >> 3 & 7, insn.modrm >> 6
    # (far call/jmp absolute 9A/EA, pop ss and the hypervisor's emulate prefix do not decode in
    # 64-bit mode, or not as one instruction, so are left out)
    if op in (0xCC, 0xCF) or (op == 0xFF and reg in (3, 5)):  # int3, iret, far call/jmp indirect
        return f"'{mnem}' is not supported by x86 kprobes (prepare_emulation: -EOPNOTSUPP)"
    if op == 0x0F and insn.opcode[1] == 0x01 and mod == 3 and reg == 0:
        return f"'{mnem}' is a VM extension, not supported by x86 kprobes (prepare_emulation)"
    if op == 0xFF and reg in (2, 4) and (insn.addr_size != 8 or mod != 3):  # call/jmp near indirect
        return f"'{mnem} {insn.op_str}' goes through memory, which x86 kprobes do not emulate (prepare_emulation)"
    if op == 0x8E and reg == 2:  # insn_masking_exception(): mov ss
        return f"'{mnem}' masks the debug exception (mov ss), not probed on x86 (__copy_instruction)"
    if mnem in IF_MODIFIERS or mnem in LOOPS or any(insn.group(g) for g in EMULATED_GROUPS):
        return "simulate"
    return "xol"


def copy_for_slot(insn, slot: int) -> bytes:
    """The instruction for its slot, rip-relative displacement adjusted, then the SS int3."""
    code = bytearray(insn.bytes)
    if insn.disp_size == 4 and any(op.type == C.X86_OP_MEM and op.mem.base == C.X86_REG_RIP for op in insn.operands):
        disp = struct.unpack_from("<i", code, insn.disp_offset)[0] + insn.address - slot
        if not -(1 << 31) <= disp < (1 << 31):
            raise ValueError("rip-relative target out of reach from the slot")
        struct.pack_into("<i", code, insn.disp_offset, disp)
    return bytes(code) + SS_BREAKPOINT


def _reg(regs, insn, reg_id) -> int:
    name = insn.reg_name(reg_id)
    return regs.reg(REG.get(name, name))


def _operand(insn, op, regs, machine) -> int:
    if op.type == C.X86_OP_IMM:
        return op.imm & (1 << 64) - 1
    if op.type == C.X86_OP_REG:
        return _reg(regs, insn, op.reg)
    m = op.mem
    base = insn.address + insn.size if m.base == C.X86_REG_RIP else _reg(regs, insn, m.base) if m.base else 0
    index = _reg(regs, insn, m.index) * m.scale if m.index else 0
    return machine.u64((base + index + m.disp) & (1 << 64) - 1)


def simulate(insn, regs, machine) -> None:
    """Emulate a branch, call or return on the saved registers (the kernel's int3_emulate_*)."""
    nxt, mnem = insn.address + insn.size, insn.mnemonic
    sp = regs.kernel_stack_pointer()
    flags = regs.fields["flags"]
    cf, pf, zf, sf, of = (flags >> b & 1 for b in (0, 2, 6, 7, 11))
    if mnem in IF_MODIFIERS:  # kprobe_emulate_ifmodifiers
        target = nxt
        if mnem == "cli":
            regs.set_reg("flags", flags & ~X86_EFLAGS_IF)
        elif mnem == "sti":
            regs.set_reg("flags", flags | X86_EFLAGS_IF)
        elif mnem.startswith("push"):
            machine.write(sp - 8, U64.pack(flags))  # int3_emulate_push
            regs.set_reg("sp", sp - 8)
        else:
            regs.set_reg("flags", machine.u64(sp))  # int3_emulate_pop
            regs.set_reg("sp", sp + 8)
    elif mnem == "call":
        target = _operand(insn, insn.operands[0], regs, machine)
        machine.write(sp - 8, U64.pack(nxt))  # into the gap the int3 entry leaves
        regs.set_reg("sp", sp - 8)
    elif mnem == "jmp":
        target = _operand(insn, insn.operands[0], regs, machine)
    elif mnem in JCC:
        target = insn.operands[0].imm if JCC[mnem](cf, pf, zf, sf, of) else nxt
    elif mnem in LOOPS:  # kprobe_emulate_loop: decrement rcx (ecx with 0x67), branch while non-zero
        mask = (1 << 64) - 1 if insn.addr_size == 8 else 0xFFFFFFFF
        cx = regs.reg("cx")
        count = (cx - 1) & mask
        regs.set_reg("cx", (cx & ~mask) | count)
        taken = count != 0 and (LOOPS[mnem] is None or zf == LOOPS[mnem])
        target = insn.operands[0].imm if taken else nxt
    elif mnem in ("jrcxz", "jecxz"):
        mask = (1 << 64) - 1 if mnem == "jrcxz" else 0xFFFFFFFF
        target = insn.operands[0].imm if regs.reg("cx") & mask == 0 else nxt
    elif mnem in RETURNS:  # kprobe_emulate_ret: int3_emulate_ret pops the return address, no more
        target = machine.u64(sp)
        regs.set_reg("sp", sp + 8)
    else:
        raise ValueError(f"ftlab cannot emulate '{mnem}'")
    regs.instruction_pointer_set(target)
