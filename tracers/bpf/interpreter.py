"""The BPF interpreter: RFC 9669 semantics over guest memory.

Each program is translated once (per sequence object) into one Python closure per instruction,
which updates the registers and returns the index of the next instruction; `run` only loops over
them. The registers are a list of eleven unsigned 64-bit ints. Loads and stores go to guest memory
through `memory.read`/`memory.write` (little-endian), and so does the stack: frame k's r10 is
`stack_top - k * 512`, so a helper given a stack pointer reads the guest memory the program wrote.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from emulator import FtlabError

from . import isa
from .isa import (
    ADD,
    ALU,
    ALU64,
    AND,
    ARSH,
    ATOMIC,
    CALL,
    CMPXCHG,
    DIV,
    END,
    EXIT,
    FETCH,
    HELPER_CALL,
    JA,
    JEQ,
    JGE,
    JGT,
    JLE,
    JLT,
    JMP,
    JMP32,
    JNE,
    JSET,
    JSGE,
    JSGT,
    JSLE,
    JSLT,
    KFUNC_CALL,
    LDX,
    LSH,
    M32,
    M64,
    MAX_CALL_FRAMES,
    MEMSX,
    MOD,
    MOV,
    MUL,
    NEG,
    OR,
    PSEUDO_CALL,
    RSH,
    SIZE_BYTES,
    ST,
    STACK_SIZE,
    STX,
    SUB,
    TO_BE,
    XCHG,
    XOR,
    BpfError,
    Insn,
    X,
)

# A helper or kfunc: (env, r1, r2, r3, r4, r5) -> r0. A helper raises FtlabError to stop the run;
# the interpreter adds the program and the instruction to its message.
Helper = Callable[[object, int, int, int, int, int], int]
# One translated instruction: the registers in, the index of the next instruction out (-1: done).
Op = Callable[[list[int]], int]


class Memory(Protocol):
    def read(self, addr: int, size: int) -> bytes: ...
    def write(self, addr: int, data: bytes) -> None: ...


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value >> (bits - 1) & 1 else value


def _trunc_div(a: int, b: int) -> int:
    """C's division: the quotient rounded toward zero."""
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def _alu_functions(bits: int) -> dict[tuple[int, int], Callable[[int, int], int]]:
    """(operation, off) -> f(dst, src) on unsigned `bits`-wide operands, before the result is
    truncated to `bits`. Division by zero gives 0 and modulo by zero leaves dst (RFC 9669 4.1);
    shift counts are masked to the width; off 1 selects the signed sdiv/smod."""
    mask = bits - 1

    def sdiv(a: int, b: int) -> int:
        return _trunc_div(_signed(a, bits), _signed(b, bits)) if b else 0

    def smod(a: int, b: int) -> int:
        if not b:
            return a
        sa, sb = _signed(a, bits), _signed(b, bits)
        return sa - sb * _trunc_div(sa, sb)

    return {
        (ADD, 0): operator.add,
        (SUB, 0): operator.sub,
        (MUL, 0): operator.mul,
        (DIV, 0): lambda a, b: a // b if b else 0,
        (DIV, 1): sdiv,
        (OR, 0): operator.or_,
        (AND, 0): operator.and_,
        (LSH, 0): lambda a, b: a << (b & mask),
        (RSH, 0): lambda a, b: a >> (b & mask),
        (MOD, 0): lambda a, b: a % b if b else a,
        (MOD, 1): smod,
        (XOR, 0): operator.xor,
        (MOV, 0): lambda a, b: b,
        (MOV, 8): lambda a, b: _signed(b & 0xFF, 8),
        (MOV, 16): lambda a, b: _signed(b & 0xFFFF, 16),
        (MOV, 32): lambda a, b: _signed(b & M32, 32),
        (ARSH, 0): lambda a, b: _signed(a, bits) >> (b & mask),
    }


_ALU = {ALU64: _alu_functions(64), ALU: _alu_functions(32)}


def _jmp_functions(bits: int) -> dict[int, Callable[[int, int], bool]]:
    """operation -> cond(dst, src) on unsigned `bits`-wide operands."""

    def signed(cmp: Callable[[int, int], bool]) -> Callable[[int, int], bool]:
        return lambda a, b: cmp(_signed(a, bits), _signed(b, bits))

    return {
        JEQ: operator.eq,
        JNE: operator.ne,
        JGT: operator.gt,
        JGE: operator.ge,
        JLT: operator.lt,
        JLE: operator.le,
        JSET: lambda a, b: a & b != 0,
        JSGT: signed(operator.gt),
        JSGE: signed(operator.ge),
        JSLT: signed(operator.lt),
        JSLE: signed(operator.le),
    }


_JMP = {JMP: _jmp_functions(64), JMP32: _jmp_functions(32)}


def _swap(value: int, bits: int) -> int:
    return int.from_bytes((value & ((1 << bits) - 1)).to_bytes(bits // 8, "little"), "big")


class Interpreter:
    """Runs programs; `executed` is the number of BPF instructions the last run executed."""

    def __init__(
        self,
        memory: Memory,
        stack_top: int,
        helpers: Mapping[int, Helper],
        kfuncs: Mapping[int, Helper],
        budget: int = 1_000_000,
    ) -> None:
        self.memory = memory
        self.stack_top = stack_top
        self.helpers = helpers
        self.kfuncs = kfuncs
        self.budget = budget
        self.executed = 0
        self._translated: dict[int, tuple[Sequence[Insn], list[Op]]] = {}
        # the run in progress: its env, and the caller frames of bpf-to-bpf calls
        self._env: object = None
        self._frames: list[tuple[int, int, int, int, int, int]] = []

    def run(self, prog_insns: Sequence[Insn], ctx: int, env: object, *, name: str = "bpf program") -> int:
        """Run a program with r1 = ctx; its r0. `env` goes to every helper. The lab stops a program
        after `budget` instructions where the kernel's verifier would have refused a loop it could
        not bound."""
        ops = self._ops(prog_insns, name)
        regs = [0] * 11
        regs[1], regs[10] = ctx, self.stack_top
        saved = self._env, self._frames
        self._env, self._frames = env, []
        budget, pc, n = self.budget, 0, 0
        try:
            while pc >= 0:
                n += 1
                if n > budget:
                    raise isa.insn_error(
                        name,
                        prog_insns,
                        pc,
                        f"still running after {budget} instructions (the lab's budget; the kernel's "
                        "verifier refuses a loop it cannot bound)",
                    )
                pc = ops[pc](regs)
        except BpfError:
            raise
        except FtlabError as err:  # guest memory, or a helper
            raise isa.insn_error(name, prog_insns, pc, self._fault(prog_insns[pc], regs, err)) from None
        finally:
            self.executed = n
            self._env, self._frames = saved
        return regs[0]

    @staticmethod
    def _fault(insn: Insn, regs: list[int], err: FtlabError) -> str:
        if insn.code == JMP | CALL:
            return f"{_callee(insn)}: {err}"
        base = insn.src if insn.cls == LDX else insn.dst
        addr = (regs[base] + insn.off) & M64
        size = SIZE_BYTES[insn.code & 0x18]
        return f"{'load' if insn.cls == LDX else 'store'} of {size} bytes at {addr:#x} faults ({err})"

    def _ops(self, insns: Sequence[Insn], name: str) -> list[Op]:
        """The program translated; once per sequence object (which must not change afterwards)."""
        entry = self._translated.get(id(insns))
        if entry is None or entry[0] is not insns:
            entry = self._translated[id(insns)] = (insns, _Translation(self, insns, name).ops)
        return entry[1]


class _Translation:
    """One program's closures. Jump targets are turned from slots into list indices here; the
    index one past the end is a closure reporting that the program fell off its end."""

    def __init__(self, interp: Interpreter, insns: Sequence[Insn], name: str) -> None:
        self.interp, self.insns, self.name = interp, insns, name
        starts = isa.slot_starts(insns)
        self.index_of = {slot: i for i, slot in enumerate(starts)}
        self.slot_of = starts
        self.ops = [self._op(i, insn) for i, insn in enumerate(insns)] + [self._fell_off()]

    def error(self, index: int, message: str) -> BpfError:
        return isa.insn_error(self.name, self.insns, index, message)

    def _target(self, index: int, delta: int) -> int:
        slot = self.slot_of[index] + 1 + delta
        if slot not in self.index_of:
            raise self.error(index, f"jump to slot {slot}, which does not start an instruction")
        return self.index_of[slot]

    def _fell_off(self) -> Op:
        last = len(self.insns) - 1

        def op(r: list[int]) -> int:
            raise self.error(last, "fell off the end of the program (its last instruction is not exit or a jump)")

        return op

    def _op(self, i: int, insn: Insn) -> Op:
        problem = isa.invalid(insn)
        if problem is not None:
            raise self.error(i, problem)
        cls = insn.cls
        if cls in (ALU, ALU64):
            return self._alu(i, insn)
        if cls in (JMP, JMP32):
            return self._jmp(i, insn)
        if cls == LDX:
            return _load(self.interp.memory, insn, i + 1)
        if cls in (ST, STX):
            return self._store(i, insn)
        return _constant(insn.dst, insn.imm & M64, i + 1)  # lddw, the only LD left

    def _alu(self, i: int, insn: Insn) -> Op:
        d, s, nxt = insn.dst, insn.src, i + 1
        op, bits = insn.code & 0xF0, 64 if insn.cls == ALU64 else 32
        mask = (1 << bits) - 1
        if op == END:
            swap = insn.cls == ALU64 or insn.code & X == TO_BE  # bswap, or to big-endian
            width, wmask = insn.imm, (1 << insn.imm) - 1

            def end(r: list[int]) -> int:
                r[d] = _swap(r[d], width) if swap else r[d] & wmask
                return nxt

            return end
        if op == NEG:

            def neg(r: list[int]) -> int:
                r[d] = -r[d] & mask
                return nxt

            return neg
        if not insn.code & X:
            value = insn.imm & mask  # the immediate: sign-extended to 64 bits, or taken as 32
            if op == MOV:
                return _constant(d, value, nxt)
            if op == ADD and bits == 64:

                def add_imm(r: list[int]) -> int:
                    r[d] = (r[d] + value) & M64
                    return nxt

                return add_imm
            f = _ALU[insn.cls][op, insn.off]

            def alu_imm(r: list[int]) -> int:
                r[d] = f(r[d] & mask, value) & mask
                return nxt

            return alu_imm
        if op == MOV and not insn.off and bits == 64:

            def mov(r: list[int]) -> int:
                r[d] = r[s]
                return nxt

            return mov
        f = _ALU[insn.cls][op, insn.off]

        def alu_reg(r: list[int]) -> int:
            r[d] = f(r[d] & mask, r[s] & mask) & mask
            return nxt

        return alu_reg

    def _jmp(self, i: int, insn: Insn) -> Op:
        op, nxt = insn.code & 0xF0, i + 1
        if op == JA:
            target = self._target(i, insn.imm if insn.cls == JMP32 else insn.off)  # gotol: imm
            return lambda r: target
        if op == EXIT:
            return self._exit()
        if op == CALL:
            return self._call(i, insn)
        d, s, target = insn.dst, insn.src, self._target(i, insn.off)
        cond = _JMP[insn.cls][op]
        mask = M64 if insn.cls == JMP else M32
        if insn.code & X:
            return lambda r: target if cond(r[d] & mask, r[s] & mask) else nxt
        value = insn.imm & mask
        return lambda r: target if cond(r[d] & mask, value) else nxt

    def _exit(self) -> Op:
        interp = self.interp

        def exit_(r: list[int]) -> int:
            frames = interp._frames
            if not frames:
                return -1
            nxt, r[6], r[7], r[8], r[9], r[10] = frames.pop()  # the caller's r6-r9 and frame
            return nxt

        return exit_

    def _call(self, i: int, insn: Insn) -> Op:
        interp, nxt = self.interp, i + 1
        if insn.src == PSEUDO_CALL:
            target = self._target(i, insn.imm)

            def bpf_call(r: list[int]) -> int:
                frames = interp._frames
                if len(frames) + 1 == MAX_CALL_FRAMES:
                    raise self.error(i, f"the call stack of {MAX_CALL_FRAMES + 1} frames is too deep")
                frames.append((nxt, r[6], r[7], r[8], r[9], r[10]))
                r[10] -= STACK_SIZE
                return target

            return bpf_call
        table = interp.kfuncs if insn.src == KFUNC_CALL else interp.helpers
        fn = table.get(insn.imm)
        if fn is None:
            message = f"{_callee(insn)} is not available to this program"
            return lambda r: _raise(self.error(i, message))
        helper = fn

        def call(r: list[int]) -> int:
            r[0] = helper(interp._env, r[1], r[2], r[3], r[4], r[5]) & M64
            return nxt

        return call

    def _store(self, i: int, insn: Insn) -> Op:
        memory, nxt = self.interp.memory, i + 1
        d, s, off = insn.dst, insn.src, insn.off
        size = SIZE_BYTES[insn.code & 0x18]
        if insn.cls == ST:
            data = (insn.imm & ((1 << 8 * size) - 1)).to_bytes(size, "little")

            def store_imm(r: list[int]) -> int:
                memory.write((r[d] + off) & M64, data)
                return nxt

            return store_imm
        if insn.code & 0xE0 == ATOMIC:
            return _atomic(memory, insn, nxt)
        mask = (1 << 8 * size) - 1

        def store(r: list[int]) -> int:
            memory.write((r[d] + off) & M64, (r[s] & mask).to_bytes(size, "little"))
            return nxt

        return store


def _callee(call: Insn) -> str:
    if call.src == HELPER_CALL:
        return f"helper {isa.helper_name(call.imm)}#{call.imm}"
    return f"kfunc #{call.imm}"


def _raise(error: BpfError) -> int:
    raise error


def _constant(d: int, value: int, nxt: int) -> Op:
    def op(r: list[int]) -> int:
        r[d] = value
        return nxt

    return op


def _load(memory: Memory, insn: Insn, nxt: int) -> Op:
    d, s, off = insn.dst, insn.src, insn.off
    size, read = SIZE_BYTES[insn.code & 0x18], memory.read
    if insn.code & 0xE0 == MEMSX:

        def load_signed(r: list[int]) -> int:
            r[d] = int.from_bytes(read((r[s] + off) & M64, size), "little", signed=True) & M64
            return nxt

        return load_signed

    def load(r: list[int]) -> int:
        r[d] = int.from_bytes(read((r[s] + off) & M64, size), "little")
        return nxt

    return load


def _atomic(memory: Memory, insn: Insn, nxt: int) -> Op:
    """BPF_ATOMIC (RFC 9669 5.3): the fetching forms load the old value, zero-extended, into src
    (r0 for cmpxchg, which stores src only where r0 equals the old value)."""
    d, s, off, kind = insn.dst, insn.src, insn.off, insn.imm
    size = SIZE_BYTES[insn.code & 0x18]
    mask = (1 << 8 * size) - 1
    f = None if kind in (XCHG, CMPXCHG) else _ALU[ALU64][kind & ~FETCH, 0]

    def atomic(r: list[int]) -> int:
        addr = (r[d] + off) & M64
        old = int.from_bytes(memory.read(addr, size), "little")
        if kind == CMPXCHG:
            if old == r[0] & mask:
                memory.write(addr, (r[s] & mask).to_bytes(size, "little"))
            r[0] = old
            return nxt
        new = r[s] if f is None else f(old, r[s])
        memory.write(addr, (new & mask).to_bytes(size, "little"))
        if kind & FETCH:
            r[s] = old
        return nxt

    return atomic
