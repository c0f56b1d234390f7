"""Register snapshots as the guest saved them, and their comparison with the true registers.

A snapshot's fields are decoded from the bytes a trampoline stored in guest memory (one bulk
read over the arch's offset table). The truth is read from the emulator at the instant the
snapshot stands for, separately, and only used to check: never to fill a snapshot field.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..kernel_version import MODELLED, KernelVersion

U64 = struct.Struct("<Q")
MASK64 = (1 << 64) - 1


_SLOTS: dict[tuple, dict[str, int]] = {}


def _slots(layout, saved: tuple[str, ...], aliases: dict[str, str]) -> dict[str, int]:
    """pt_regs name -> the word index of the struct member holding it, for one mechanism's saved
    members; worked out once per mechanism (a layout's aliases are its arch's), not per snapshot."""
    key = (layout, saved)
    slots = _SLOTS.get(key)
    if slots is None:
        slots = _SLOTS[key] = {aliases.get(m, m): layout.offsets[m] // 8 for m in saved}
    return slots


class Snapshot:
    """A struct of u64 slots in guest memory that some trampoline filled.

    `saved` names the members it stored. With verify mode on, `truth` holds the true registers at
    the instant the snapshot stands for, and `meaning` the true value of members the kernel defines
    by meaning rather than by a register (a saved ip that is the address after a patch site)."""

    kind = "snapshot"
    # one is made per event on the Python paths: slots keep making it cheap
    __slots__ = (
        "_m",
        "_k",
        "_arch",
        "_layout",
        "addr",
        "saved",
        "truth",
        "meaning",
        "_aliases",
        "_view",
        "_offset",
        "words",
        "_slot",
    )

    def __init__(self, karch, machine, layout, addr: int, saved, aliases=None, truth=None, meaning=None):
        self._m, self._k, self._arch, self._layout = machine, karch, karch.cpu, layout
        self.addr, self.saved, self.truth, self.meaning = addr, tuple(saved), truth, meaning or {}
        self._aliases = aliases or {}
        self._view, self._offset = view, offset = machine.locate(addr, layout.size)
        self.words = list(layout.codec.unpack_from(view, offset))
        self._slot = _slots(layout, self.saved, self._aliases)

    def member(self, name: str) -> int:
        """The struct member's word as guest memory holds it, captured or not: what kernel code
        reading it gets (arm64's partial pt_regs before 6.18 holds a pstate of 0 nothing wrote)."""
        return self.words[self._layout.offsets[name] // 8]

    def reg(self, reg: str) -> int:
        """The saved value of a pt_regs-named register."""
        return self.words[self._slot[reg]]

    def set_reg(self, reg: str, value: int) -> None:
        """Write a member in guest memory (software fix-ups may write members nothing captured)."""
        slot = self._slot.get(reg)
        if slot is None:
            slot = self._layout.offsets[reg] // 8
        U64.pack_into(self._view, self._offset + 8 * slot, value & MASK64)
        self.words[slot] = value & MASK64

    def _argument(self, n: int) -> int:
        """Argument n (0-based): a register, then (x86) the stack above the return address, or
        (arm64) 0 past x7, as regs_get_kernel_argument and ftrace_regs_get_argument do."""
        regs = self._arch.arg_regs
        if n < len(regs):
            # a register the trampoline stored but does not capture as what it means (arm64's x0 at
            # a -pg site, gcc's copy of lr) reads as the kernel's accessor reads it: the member
            slot = self._slot.get(regs[n])
            return self.words[self._layout.offsets[regs[n]] // 8 if slot is None else slot]
        if self._k.ftrace_regs_stack_args:
            return self._m.u64(self.reg(self._arch.sp) + 8 * (n - len(regs) + 1))
        return 0

    def get_stack_pointer(self) -> int:
        return self.reg(self._arch.sp)

    def get_frame_pointer(self) -> int:
        return self.reg(self._arch.fp)

    def get_return_address(self) -> int:
        """At a function's entry: lr on arm64, the word at sp on x86."""
        arch = self._arch
        return self.reg(arch.lr) if arch.lr else self._m.u64(self.get_stack_pointer())

    def set_return_address(self, value: int) -> None:
        """Where fgraph and rethook hook a return: lr on arm64, the stack slot on x86. A hooked lr
        is what the ops called after this one see (arm64's ftrace_graph_func writes fregs->lr,
        arch/arm64/kernel/ftrace.c), so verify mode compares it with the hook from then on."""
        if self._arch.lr:
            self.set_reg(self._arch.lr, value)
            if self.truth is not None:
                lr = self._arch.lr
                self.meaning[next((m for m, r in self._aliases.items() if r == lr), lr)] = value
        else:
            self._m.pack(U64, self.get_stack_pointer(), value)

    @property
    def fields(self) -> dict[str, int]:
        """What the mechanism captured, by the struct's member names."""
        return {m: self.words[self._layout.offsets[m] // 8] for m in self.saved}

    @property
    def missing(self) -> list[str]:
        """The pt_regs registers this mechanism does not capture."""
        return missing_registers(self._k, self.saved, self._aliases)

    def verify(self) -> Verification | None:
        if self.truth is None:
            return None
        checks = []
        for f, v in self.fields.items():
            if f in self.meaning:
                checks.append(Check(f, v, self.meaning[f], True))
            else:
                reg = self._aliases.get(f, f)
                checks.append(Check(f, v, self.truth[reg], flags=reg == self._arch.flags_reg))
        return Verification(tuple(checks), self._arch)


def missing_registers(karch, saved, aliases=None) -> list[str]:
    """The pt_regs members a snapshot of these saved members does not capture."""
    have = {(aliases or {}).get(m, m) for m in saved}
    return [r for r in karch.pt_regs.offsets if r not in have]


class FtraceRegs(Snapshot):
    """struct ftrace_regs, with the kernel's ftrace_regs_* accessors (without the prefix)."""

    kind = "ftrace_regs"
    __slots__ = ()

    def __init__(self, karch, machine, addr: int, truth=None, meaning=None, saved=None):
        super().__init__(
            karch,
            machine,
            karch.ftrace_regs,
            addr,
            saved or karch.ftrace_regs_saved,
            karch.ftrace_regs_aliases,
            truth,
            meaning,
        )

    def get_argument(self, n: int) -> int:
        return self._argument(n)

    def ftrace_get_regs(self) -> PtRegs | None:
        """The full pt_regs when ftrace_regs_caller built this (x86: cs != 0), else None."""
        caller = self._k.regs_caller
        if caller is None or self.words[self._layout.offsets[caller.full_marker] // 8] == 0:
            return None
        return PtRegs(self._k, self._m, self.addr, self.saved, self.truth, self.meaning)

    def get_return_value(self) -> int:
        return self.reg(self._arch.ret_regs[0])

    def set_return_value(self, value: int) -> None:
        self.set_reg(self._arch.ret_regs[0], value)

    def get_instruction_pointer(self) -> int:
        return self.reg(self._arch.pc)

    def set_instruction_pointer(self, value: int) -> None:
        self.set_reg(self._arch.pc, value)


class PtRegs(Snapshot):
    """struct pt_regs, with the kernel's regs_* helpers."""

    kind = "pt_regs"
    __slots__ = ()

    def __init__(self, karch, machine, addr: int, saved, truth=None, meaning=None):
        super().__init__(karch, machine, karch.pt_regs, addr, saved, None, truth, meaning)

    def regs_return_value(self) -> int:
        return self.reg(self._arch.ret_regs[0])

    def instruction_pointer(self) -> int:
        return self.reg(self._arch.pc)

    def instruction_pointer_set(self, value: int) -> None:
        self.set_reg(self._arch.pc, value)

    def kernel_stack_pointer(self) -> int:
        return self.reg(self._arch.sp)

    def frame_pointer(self) -> int:
        return self.reg(self._arch.fp)

    def get_instruction_pointer(self) -> int:
        return self.instruction_pointer()

    def override_function_with_return(self) -> None:
        """Return to the caller at once (error injection), only meaningful at a function's entry:
        arm64 pc = lr (arch/arm64/lib/error-inject.c); x86 ip = just_return_func, a lone `ret`
        that pops the return address (arch/x86/lib/error-inject.c). Only the ip changes, so the
        trampolines that restore the ip but not the sp (ftrace_caller) return correctly too."""
        if self._arch.lr:
            self.instruction_pointer_set(self.reg(self._arch.lr))
        else:
            self.instruction_pointer_set(self._m.symbols.get("just_return_func").addr)

    def regs_get_kernel_argument(self, n: int) -> int:
        return self._argument(n)


def ftrace_partial_regs(fregs: FtraceRegs, scratch: int, kernel: KernelVersion = MODELLED) -> PtRegs:
    """The pt_regs BPF and perf get from ftrace_regs, as the kernel release builds it: on x86 the
    same memory (only the captured fields are meaningful); on arm64 the captured members copied
    into a pt_regs at scratch (fp -> x29, lr -> x30). Then the release's arch fix-ups
    (KernelArch.partial_regs: arm64 pstate = PSR_MODE_EL1h since 6.18, torvalds/linux
    fd2f74f8f3d3; x86 arch_ftrace_partial_regs() since 6.18, 20a0bc10272f, and aea251799998 in
    7.0), written in guest memory as the kernel writes them; a member they write is shown, and
    checked against the true register, like a captured one. Other missing fields are listed,
    never invented."""
    karch, m = fregs._k, fregs._m
    aliases = karch.ftrace_regs_aliases
    saved = tuple(aliases.get(f, f) for f in fregs.saved)
    meaning = {aliases.get(f, f): v for f, v in fregs.meaning.items()}
    fixups = karch.partial_regs_of(kernel).fixups
    saved += tuple(f.member for f in fixups if f.member not in saved)
    if karch.ftrace_regs_is_pt_regs:
        regs = PtRegs(karch, m, fregs.addr, saved, fregs.truth, meaning)
    else:
        m.write(scratch, bytes(karch.pt_regs.size))
        for member, value in fregs.fields.items():
            m.write(scratch + karch.pt_regs.offsets[aliases.get(member, member)], U64.pack(value))
        regs = PtRegs(karch, m, scratch, saved, fregs.truth, meaning)
    for f in fixups:
        regs.set_reg(f.member, regs.reg(f.member) & f.keep | f.set)
    return regs


@dataclass(frozen=True)
class Check:
    field: str
    captured: int
    truth: int
    by_meaning: bool = False  # the truth is the kernel's definition of the field, not a register
    flags: bool = False  # RFLAGS / PSTATE: differences are named bit by bit

    @property
    def equal(self) -> bool:
        return self.captured == self.truth


@dataclass(frozen=True)
class Verification:
    checks: tuple[Check, ...]
    arch: object = None

    @property
    def mismatch(self) -> list[str]:
        return [c.field for c in self.checks if not c.equal]

    def lost_bits(self, check: Check) -> list[str]:
        """For a flags register: the named bits whose saved value differs from the true one."""
        return decode_flags(self.arch, check.captured ^ check.truth)


def decode_flags(arch, value: int) -> list[str]:
    """The RFLAGS/PSTATE fields that are non-zero in value: a bit by its name ('Z', 'PAN'), a wider
    field with its value ('EL=1', 'IOPL=3')."""
    out = []
    for name, (shift, width) in arch.flag_bits.items():
        field = value >> shift & ((1 << width) - 1)
        if field:
            out.append(name if width == 1 else f"{name}={field}")
    return out
