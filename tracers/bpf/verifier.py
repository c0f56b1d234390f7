"""What the kernel's verifier (kernel/bpf/verifier.c, 7.0) refuses that the lab can decide without
tracking values: malformed instructions, jumps out of range or into an lddw, a subprogram that
falls off its end, helpers the program type may not call, writes to r10, accesses through r10
outside its 512-byte frame, and ctx accesses out of bounds or writing a read-only ctx. Registers
are known to hold ctx only as far as one forward pass copying r1 can tell; the kernel tracks every
value on every path, so it refuses more (the lab stops a loop it cannot bound at its budget
instead, see interpreter.py). Check a program as loaded, before fixups.inline_tracing_helpers()
rewrites it."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from . import isa
from .isa import (
    ALU,
    ALU64,
    ATOMIC,
    CALL,
    CMPXCHG,
    EXIT,
    FETCH,
    HELPER_CALL,
    JA,
    JMP,
    JMP32,
    KFUNC_CALL,
    LD,
    LDX,
    MOV,
    PSEUDO_CALL,
    SIZE_BYTES,
    ST,
    STX,
    Insn,
    X,
)

FP = 10


@dataclass(frozen=True)
class CtxRules:
    """What a program may do with its ctx (the prog type's is_valid_access): `size` bytes readable
    from the start, written only if `writable`; offsets multiples of `align`, or of the access size
    when 0 (kprobe_prog_is_valid_access() for pt_regs; btf_ctx_access() wants multiples of 8 for
    the trampoline's u64 array)."""

    size: int
    writable: bool
    align: int = 0


def check(
    insns: Sequence[Insn], *, name: str, helpers: Collection[int], kfuncs: Collection[int], ctx: CtxRules
) -> None:
    """Raise BpfError with the verifier's message for the first thing it would refuse."""
    _Check(insns, name).run(helpers, kfuncs, ctx)


class _Check:
    def __init__(self, insns: Sequence[Insn], name: str) -> None:
        self.insns, self.name = insns, name
        self.starts = isa.slot_starts(insns)
        self.index_of = {slot: i for i, slot in enumerate(self.starts)}
        self.nslots = self.starts[-1] + insns[-1].slots if insns else 0

    def fail(self, index: int, message: str) -> isa.BpfError:
        return isa.insn_error(self.name, self.insns, index, message)

    def run(self, helpers: Collection[int], kfuncs: Collection[int], ctx: CtxRules) -> None:
        if not self.insns:
            raise isa.BpfError(f"{self.name}: the program has no instructions")
        for i, insn in enumerate(self.insns):
            problem = isa.invalid(insn)
            if problem:
                raise self.fail(i, problem)
        subprogs = self._subprogs()
        self._jumps(subprogs)
        for i, insn in enumerate(self.insns):
            self._call(i, insn, helpers, kfuncs)
            if _writes(insn, FP):
                raise self.fail(i, "frame pointer is read only")
            self._stack_access(i, insn)
        self._ctx_accesses(set(subprogs), ctx)

    def target(self, i: int, insn: Insn) -> int:
        """The slot a jump or a bpf-to-bpf call goes to."""
        delta = insn.imm if insn.code in (JMP32 | JA, JMP | CALL) else insn.off
        return self.starts[i] + 1 + delta

    def _subprogs(self) -> list[int]:
        """The first instruction (index) of each subprogram: 0 and every bpf-to-bpf call's target
        (add_subprog_and_kfunc())."""
        starts = {0}
        for i, insn in enumerate(self.insns):
            if insn.code == JMP | CALL and insn.src == PSEUDO_CALL:
                slot = self.target(i, insn)
                if not 0 <= slot < self.nslots:
                    raise self.fail(i, "call to invalid destination")
                starts.add(self._landing(i, slot))
        return sorted(starts)

    def _landing(self, i: int, slot: int) -> int:
        """The instruction starting at slot; check_cfg()'s refusal of the middle of an lddw."""
        if slot not in self.index_of:
            raise self.fail(i, f"jump into the middle of ldimm64 insn {slot - 1}")
        return self.index_of[slot]

    def _jumps(self, subprogs: list[int]) -> None:
        """check_subprogs(): every jump stays in its subprogram, whose last instruction is an exit
        or a jump; check_cfg(): no jump lands in an lddw."""
        bounds = list(zip(subprogs, [*subprogs[1:], len(self.insns)], strict=True))
        for first, end in bounds:
            lo, hi = self.starts[first], self.starts[end - 1] + self.insns[end - 1].slots
            for i in range(first, end):
                insn = self.insns[i]
                if insn.cls in (JMP, JMP32) and insn.code & 0xF0 not in (CALL, EXIT):
                    slot = self.target(i, insn)
                    if not lo <= slot < hi:
                        raise self.fail(i, f"jump out of range from insn {self.starts[i]} to {slot}")
                    self._landing(i, slot)
            last = self.insns[end - 1]
            if last.code not in (JMP | EXIT, JMP | JA, JMP32 | JA):
                raise self.fail(end - 1, "last insn is not an exit or jmp")

    def _call(self, i: int, insn: Insn, helpers: Collection[int], kfuncs: Collection[int]) -> None:
        """check_helper_call() and check_kfunc_call(): what this program type may call."""
        if insn.code != JMP | CALL:
            return
        if insn.src == HELPER_CALL and insn.imm not in helpers:
            if insn.imm not in isa.HELPER_NAMES:
                raise self.fail(i, f"invalid func {isa.helper_name(insn.imm)}#{insn.imm}")
            raise self.fail(i, f"program of this type cannot use helper {isa.helper_name(insn.imm)}#{insn.imm}")
        if insn.src == KFUNC_CALL and insn.imm not in kfuncs:
            raise self.fail(i, f"calling kernel function #{insn.imm} is not allowed")

    def _stack_access(self, i: int, insn: Insn) -> None:
        """check_stack_access_within_bounds() for accesses through r10 itself: [r10 - 512, r10)."""
        if insn.cls == LDX and insn.src == FP:
            what = "read from"
        elif insn.cls in (ST, STX) and insn.dst == FP:
            what = "write to"
        else:
            return
        size = SIZE_BYTES[insn.code & 0x18]
        if insn.off < -isa.STACK_SIZE or insn.off + size > 0:
            raise self.fail(i, f"invalid {what} stack R{FP} off={insn.off} size={size}")

    def _ctx_accesses(self, subprog_starts: set[int], ctx: CtxRules) -> None:
        """One forward pass knowing which registers hold the unmodified ctx pointer: r1 at entry,
        and what is copied from it. At a jump target only what every jump there agrees on (and
        nothing where a later jump comes back); after a call r1-r5 are gone."""
        arriving: dict[int, set[int]] = {}  # index -> ctx registers of the jumps seen so far
        loop_heads = {
            self.index_of[self.target(i, insn)]
            for i, insn in enumerate(self.insns)
            if _is_jump(insn) and self.target(i, insn) <= self.starts[i]
        }
        known: set[int] | None = {1}  # None: no fall-through into the next instruction
        for i, insn in enumerate(self.insns):
            if i in subprog_starts and i:
                known = set()  # a subprogram's r1 is whatever its caller passed
            sources = ([known] if known is not None else []) + ([arriving[i]] if i in arriving else [])
            regs = set.intersection(*sources) if sources and i not in loop_heads else set()
            self._ctx_access(i, insn, regs, ctx)
            if _is_jump(insn):
                target = self.index_of[self.target(i, insn)]
                arriving[target] = arriving[target] & regs if target in arriving else set(regs)
            known = _after(insn, regs)

    def _ctx_access(self, i: int, insn: Insn, regs: set[int], ctx: CtxRules) -> None:
        if insn.cls == LDX and insn.src in regs:
            self._bounds(i, insn, ctx)
        elif insn.cls in (ST, STX) and insn.dst in regs:
            if insn.cls == ST:
                raise self.fail(i, f"BPF_ST stores into R{insn.dst} ctx is not allowed")
            if insn.code & 0xE0 == ATOMIC:
                raise self.fail(i, f"BPF_ATOMIC stores into R{insn.dst} ctx is not allowed")
            if not ctx.writable:
                raise self.fail(i, _ctx_message(insn))
            self._bounds(i, insn, ctx)

    def _bounds(self, i: int, insn: Insn, ctx: CtxRules) -> None:
        """check_ctx_access(): the prog type's is_valid_access() refused it."""
        size = SIZE_BYTES[insn.code & 0x18]
        if insn.off < 0 or insn.off + size > ctx.size or insn.off % (ctx.align or size):
            raise self.fail(i, _ctx_message(insn))


def _ctx_message(insn: Insn) -> str:
    return f"invalid bpf_context access off={insn.off} size={SIZE_BYTES[insn.code & 0x18]}"


def _is_jump(insn: Insn) -> bool:
    return insn.cls in (JMP, JMP32) and insn.code & 0xF0 not in (CALL, EXIT)


def _after(insn: Insn, regs: set[int]) -> set[int] | None:
    """The ctx registers after insn falls through to the next one (None if it never does)."""
    if insn.code in (JMP | EXIT, JMP | JA, JMP32 | JA):
        return None
    if insn.code == JMP | CALL:
        return regs - {0, 1, 2, 3, 4, 5}
    out = {r for r in regs if not _writes(insn, r)}
    if insn.code == ALU64 | MOV | X and insn.off == 0 and insn.src in regs:
        out.add(insn.dst)
    return out


def _writes(insn: Insn, reg: int) -> bool:
    """Whether insn writes register reg (calls aside)."""
    if insn.cls in (ALU, ALU64, LDX, LD):
        return insn.dst == reg
    if insn.cls == STX and insn.code & 0xE0 == ATOMIC:
        fetches = insn.imm & FETCH != 0 and insn.imm != CMPXCHG
        return (insn.imm == CMPXCHG and reg == 0) or (fetches and insn.src == reg)
    return False
