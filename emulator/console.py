"""The runtime's functions that are the lab's Python, not guest code: _printk and __warn_printk
(their messages kept as the machine's console lines) and __stack_chk_fail (a one-line fault).

Each is a lab-text label whose code is only a return; a hook on its entry does the work before
the return runs, reading the arguments from the registers and the stack as the calling convention
places them (variadic integers as fixed ones, on both arches: the SysV and AAPCS64 rules).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import FtlabError, GuestFault
from .printk import DEFAULT_LEVEL, MAX_STRING, format_printk, level_of

# kernel/panic.c __warn_printk(): pr_warn(CUT_HERE) before the message (include/asm-generic/bug.h)
CUT_HERE = "------------[ cut here ]------------"


@dataclass
class ConsoleLine:
    level: int  # 0 (KERN_EMERG) to 7 (KERN_DEBUG)
    text: str

    def __str__(self) -> str:
        """As `dmesg -r` prints a record (without the timestamp): `<4>text`."""
        return f"<{self.level}>{self.text}"


class Console:
    """What the guest printed, line by line."""

    def __init__(self, machine, labels: dict[str, int]):
        self.m = machine
        self.lines: list[ConsoleLine] = []
        machine.hook_call(lambda _: self._printk(), labels["_printk"])
        machine.hook_call(lambda _: self._warn_printk(), labels["__warn_printk"])
        machine.hook_call(lambda _: self._stack_chk_fail(), labels["__stack_chk_fail"])

    def _arg(self, n: int) -> int:
        """The n-th integer argument (0-based) of the call being entered."""
        arch, m = self.m.arch, self.m
        if n < len(arch.arg_regs):
            return m.reg(arch.arg_regs[n])
        return m.u64(m.reg(arch.sp) + arch.stack_args_offset + 8 * (n - len(arch.arg_regs)))

    def _string(self, addr: int) -> str:
        region = self.m.region(addr)
        if region is None:
            raise FtlabError(f"printk: string at {addr:#x} is not in guest memory (called from {self._caller()})")
        data = self.m.read(addr, min(MAX_STRING, region.end - addr))
        return data.split(b"\0", 1)[0].decode("utf-8", "replace")

    def _caller(self) -> str:
        """The caller, as %pB names a return address: looked up one byte before it (a call that
        never returns may be a function's last instruction), the offset shown as is."""
        arch, m = self.m.arch, self.m
        ret = m.u64(m.reg(arch.sp)) if arch.lr is None else m.reg(arch.lr)
        hit = m.symbols.lookup(ret - 1)
        return f"{hit[0].name}+{hit[1] + 1:#x}" if hit else f"{ret:#x}"

    def _printk(self) -> None:
        """printk(fmt, ...), the format its first argument. It returns the length of the text stored,
        without the level prefix and the trailing newline (printk_sprint() in kernel/printk/printk.c)."""
        args = iter(range(1, 1 << 16))
        level, fmt = level_of(self._string(self._arg(0)))
        text = format_printk(fmt, lambda: self._arg(next(args)), self._string, self.m.symbols.name)
        self.print(level, text)
        self.m.set_reg(self.m.arch.ret_regs[0], len(text.removesuffix("\n")))

    def _warn_printk(self) -> None:
        self.print("4", CUT_HERE)
        self._printk()

    def print(self, level: str, text: str) -> None:
        """One message: KERN_CONT ('c') continues the last line; a trailing newline ends it."""
        lines = text.removesuffix("\n").split("\n")
        if level == "c" and self.lines:
            self.lines[-1].text += lines.pop(0)
        number = DEFAULT_LEVEL if level in "cd" else int(level)
        self.lines += [ConsoleLine(number, line) for line in lines]

    def _stack_chk_fail(self) -> None:
        """kernel/panic.c __stack_chk_fail(): panic("stack-protector: Kernel stack is corrupted in:
        %pB"), the function named by the return address of its call."""
        raise GuestFault(f"stack-protector: Kernel stack is corrupted in: {self._caller()} (__stack_chk_fail)")
