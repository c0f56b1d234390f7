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
    """struct ftrace_regs as ftrace_caller left it, with the kernel's accessors."""

    kind = "ftrace_regs"

    def __init__(self, machine, addr: int, site: int, truth: dict[str, int] | None = None):
        arch = machine.arch
        self._m, self._arch, self._layout = machine, arch, arch.ftrace_regs
        self.addr, self.site, self.truth = addr, site, truth
        self.words = self._layout.unpack(machine.view(addr, self._layout.size))
        self._member = {arch.ftrace_regs_aliases.get(m, m): m for m in arch.ftrace_regs_saved}

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

    # What the mechanism captured, by the struct's member names.
    @property
    def fields(self) -> dict[str, int]:
        layout = self._layout
        return {m: self.words[layout.offsets[m] // 8] for m in self._arch.ftrace_regs_saved}

    @property
    def missing(self) -> list[str]:
        return [r for r in self._arch.pt_regs.offsets if r not in self._member]

    def verify(self) -> Verification | None:
        return None if self.truth is None else verify(self._arch, self.fields, self.truth, self.site)


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


def expected(arch, member: str, truth: dict[str, int], site: int) -> int:
    """The true value of a ftrace_regs member: the register at the site, or what the kernel defines
    the member to mean (the saved ip/pc is the address after the patch site)."""
    meaning = arch.ftrace_regs_meaning.get(member)
    return meaning(site) if meaning else truth[arch.ftrace_regs_aliases.get(member, member)]


def verify(arch, fields: dict[str, int], truth: dict[str, int], site: int) -> Verification:
    return Verification(tuple(Check(f, v, expected(arch, f, truth, site), f in arch.ftrace_regs_meaning)
                              for f, v in fields.items()))
