"""What every CPU description provides: data and small functions, no control flow.

The machine and the loader only ever talk to an `Arch`; they never test the arch's name. What the
kernel's arch/ code knows (struct layouts, patch sites, trampolines) is in tracers/arch/.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Reloc:
    """One ELF relocation type: how to compute its value and how to store it at the place."""

    name: str
    size: int  # bytes at the place
    value: Callable[[int, int, int], int]  # (S, A, P) -> value
    store: Callable[[int, int], int] | None = None  # (old field, value) -> new field; None: plain little-endian
    bits: tuple[int, bool] | None = None  # (width, signed) range check of the value before storing

    @property
    def none(self) -> bool:
        """R_*_NONE: a relocation that changes nothing (size 0)."""
        return self.size == 0


@dataclass(frozen=True)
class Arch:
    name: str
    elf_machine: str  # e_machine as pyelftools names it
    uc: tuple[int, int]  # unicorn (arch, mode)
    cs: tuple[int, int]  # capstone (arch, mode)
    ks: tuple[int, int]  # keystone (arch, mode)
    insn_align: int  # instruction alignment (1 on x86, 4 on arm64)
    cpu_model: int | None  # unicorn CPU model to select before anything else, if not the default

    # Registers, named as the kernel's struct pt_regs members, with their unicorn ids.
    regs: dict[str, int]
    pc: str
    sp: str
    arg_regs: tuple[str, ...]  # calling convention: integer argument registers in order
    ret_regs: tuple[str, ...]  # return value registers (low, high)
    lr: str | None  # link register; None: the call pushes the return address
    fp: str  # frame pointer register
    flags_reg: str  # RFLAGS / PSTATE, as pt_regs names it
    flag_bits: dict[str, tuple[int, int]]  # its named fields: name -> (shift, width)
    irqs_off: tuple[str, int]  # (flag, value) when interrupts are masked: x86 IF 0, arm64 DAIF.I 1
    stack_args_offset: int  # where the first stack argument sits relative to SP at entry

    # Exceptions, as the hardware takes them (unicorn reports them but delivers nothing).
    install_trap_vector: Callable  # (uc, vector address, scratch page) -> None: VBAR_EL1 / IDT gate 3
    deliver_trap: Callable  # (uc, intno, read) -> str | None: None if taken, else why not

    relocs: dict[int, Reloc]
    setup_cpu: Callable  # (uc, per-cpu page address) -> None: kernel privilege, selectors ...
    runtime: Path  # runtime.S: what the lab's "kernel" supplies to objects
    # user_mode(regs) (asm/ptrace.h), given a reader of saved registers by name: whether a pt_regs
    # says the CPU was in user mode, which makes perf's unwinder skip the kernel stack
    user_mode: Callable[[Callable[[str], int]], bool]
    # relocation types the kernel's module loader refuses too, with the build flag that avoids
    # them: type -> hint, for the loader's one-line error
    reloc_hints: dict[int, str] = field(default_factory=dict)
    # the compiler flags a kernel build gives for dynamic ftrace's patch sites (CC_FLAGS_FTRACE)
    site_flags: str = ""
    # An instruction's bytes -> why the lab will not run it (the CPU model would run it wrongly), or
    # None to run it; None: nothing is refused. emulator/refuse.py stops the guest before one runs.
    refused: Callable[[bytes], str | None] | None = None
    # (address a fetch failed at, symbol namer) -> what the address itself says went wrong (arm64:
    # a pointer that failed authentication), or None; None: addresses say nothing.
    bad_pointer: Callable[[int, Callable[[int], str]], str | None] | None = None


def sign_check(value: int, bits: int, signed: bool) -> bool:
    if signed:
        return -(1 << (bits - 1)) <= value < (1 << (bits - 1))
    return 0 <= value < (1 << bits)
