"""Register snapshots as the guest saved them, and their comparison with the true registers.

A snapshot's fields are decoded from the bytes a trampoline stored in guest memory (one bulk
read over the arch's offset table). The truth is read from the emulator at the patch-site
instant, separately, and only used to check: never to fill a snapshot field.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

U64 = struct.Struct("<Q")


class FtraceRegs:
    """struct ftrace_regs as a trampoline left it, with the kernel's accessors.

    `saved` names the members the trampoline stored (ftrace_caller's by default; return_to_handler
    stores fewer). With verify mode on, `truth` holds the true registers at the instant the
    snapshot stands for, and `meaning` the true value of members the kernel defines by meaning."""

    kind = "ftrace_regs"

    def __init__(self, machine, addr: int, truth: dict[str, int] | None = None,
                 meaning: dict[str, int] | None = None, saved: tuple[str, ...] | None = None):
        arch = machine.arch
        self._m, self._arch, self._layout = machine, arch, arch.ftrace_regs
        self.addr, self.truth, self.meaning = addr, truth, meaning or {}
        self.saved = saved or arch.ftrace_regs_saved
        self.words = self._layout.unpack(machine.view(addr, self._layout.size))
        self._member = {arch.ftrace_regs_aliases.get(m, m): m for m in self.saved}

    def _get(self, reg: str) -> int:
        """The saved value of a pt_regs-named register (x29 is ftrace_regs' fp on arm64)."""
        return self.words[self._layout.offsets[self._member[reg]] // 8]

    def _set(self, reg: str, value: int) -> None:
        offset = self._layout.offsets[self._member[reg]]
        self._m.write(self.addr + offset, U64.pack(value & (1 << 64) - 1))
        words = list(self.words)
        words[offset // 8] = value & (1 << 64) - 1
        self.words = tuple(words)

    # The kernel's ftrace_regs accessors (include/linux/ftrace.h), same names without the prefix.
    def get_argument(self, n: int) -> int:
        regs = self._arch.arg_regs
        if n < len(regs):
            return self._get(regs[n])
        if self._arch.ftrace_regs_stack_args:
            return self._m.u64(self.get_stack_pointer() + 8 * (n - len(regs) + 1))
        return 0

    def get_return_value(self) -> int:
        return self._get(self._arch.ret_regs[0])

    def set_return_value(self, value: int) -> None:
        self._set(self._arch.ret_regs[0], value)

    def get_instruction_pointer(self) -> int:
        return self._get(self._arch.pc)

    def set_instruction_pointer(self, value: int) -> None:
        self._set(self._arch.pc, value)

    def get_stack_pointer(self) -> int:
        return self._get(self._arch.sp)

    def get_frame_pointer(self) -> int:
        return self._get(self._arch.fp)

    def get_return_address(self) -> int:
        arch = self._arch
        return self._get(arch.lr) if arch.lr else self._m.u64(self.get_stack_pointer())

    def set_return_address(self, value: int) -> None:
        """Where fgraph and rethook hook a return: lr in fregs on arm64, the stack slot on x86."""
        arch = self._arch
        if arch.lr:
            self._set(arch.lr, value)
        else:
            self._m.write(self.get_stack_pointer(), U64.pack(value))

    # What the mechanism captured, by the struct's member names.
    @property
    def fields(self) -> dict[str, int]:
        layout = self._layout
        return {m: self.words[layout.offsets[m] // 8] for m in self.saved}

    @property
    def missing(self) -> list[str]:
        return [r for r in self._arch.pt_regs.offsets if r not in self._member]

    def verify(self) -> Verification | None:
        if self.truth is None:
            return None
        aliases = self._arch.ftrace_regs_aliases
        return Verification(tuple(
            Check(f, v, self.meaning[f], True) if f in self.meaning else Check(f, v, self.truth[aliases.get(f, f)])
            for f, v in self.fields.items()))


@dataclass(frozen=True)
class Check:
    field: str
    captured: int
    truth: int
    by_meaning: bool = False      # the truth is the kernel's definition of the field, not a register

    @property
    def equal(self) -> bool:
        return self.captured == self.truth


@dataclass(frozen=True)
class Verification:
    checks: tuple[Check, ...]

    @property
    def mismatch(self) -> list[str]:
        return [c.field for c in self.checks if not c.equal]
