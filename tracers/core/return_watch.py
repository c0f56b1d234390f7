"""Where a user's trampoline must return after it called into the lab, checked as it leaves.

The kernel's contract for ftrace_caller is to return into the traced function at fregs->ip (the
instruction after the patch site, unless a handler moved it). A trampoline that returns anywhere
else runs the wrong code: a fault, or a wrong result far from the cause. For a user's trampoline
the lab watches its own code (a code hook on its instructions only) and checks the first return or
indirect branch that leaves it after each call into the lab, naming the file.
"""

from __future__ import annotations

import capstone

from emulator import FtlabError
from emulator.asm import decode


class ReturnWatch:
    def __init__(self, machine, span: range):
        """span: the user's code."""
        self.m, self.span = machine, span
        self.expected: list[tuple[str, int, str, dict[str, int], tuple[str, ...]]] = []  # innermost last
        machine.hook_code(self._step, span.start, span.stop - 1)
        machine.on_abandoned_call(self.expected.clear)

    def expect(self, name: str, addr: int, what: str, regs: dict[str, int] | None = None, free=()) -> None:
        """The next exit from the trampoline's code (`name`, as messages name it) must go to addr
        (`what`, in a phrase), with the registers `regs` (sp: after the exit) holding these values;
        `free` are those it may change, for the message."""
        self.expected.append((name, addr, what, regs or {}, tuple(free)))

    def _step(self, pc: int) -> None:
        if not self.expected:
            return
        exit_ = self._exit(pc)
        if exit_ is None or exit_[0] in self.span:
            return
        target, sp_after = exit_
        name, want, what, regs, free = self.expected.pop()
        if target != want:
            raise FtlabError(f"{name}: returns to {self.m.where(target)}, not to {what}, {self.m.where(want)}")
        sp = self.m.arch.sp
        actual = {r: sp_after if r == sp else self.m.reg(r) for r in regs}
        changed = [f"{r} {actual[r]:#x} (at the site {v:#x})" for r, v in regs.items() if actual[r] != v]
        if changed:
            may = f" (it may change only {', '.join(free)})" if free else ""
            raise FtlabError(f"{name}: returns to {what} with {', '.join(changed)}{may}")

    def _exit(self, pc: int) -> tuple[int, int] | None:
        """Where the instruction at pc goes, and sp after it, if it is a return or an indirect
        branch; else None."""
        m, arch = self.m, self.m.arch
        insn = decode(arch, m.read(pc, 16), pc)
        if insn is None or not (insn.group(capstone.CS_GRP_RET) or insn.group(capstone.CS_GRP_JUMP)):
            return None
        sp = m.reg(arch.sp)
        regs = [op for op in insn.operands if op.type == capstone.CS_OP_REG]
        if regs:
            return m.reg(insn.reg_name(regs[0].reg)), sp
        if not insn.group(capstone.CS_GRP_RET):
            return None  # a direct branch, or one through memory
        if arch.lr is not None:
            return m.reg(arch.lr), sp
        pops = sum(op.imm for op in insn.operands if op.type == capstone.CS_OP_IMM)  # ret N
        return m.u64(sp), sp + 8 + pops
