"""The BPF interpreter against Python computing RFC 9669's definitions (C arithmetic through ctypes
and fractions), on a bytearray memory and on each arch's guest memory."""

from __future__ import annotations

import ctypes
import struct
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator import FtlabError, Machine
from emulator import arch as arches
from tracers.bpf.interpreter import Interpreter
from tracers.bpf.isa import BpfError, Insn

M64 = (1 << 64) - 1
STACK_TOP = 0x9000
CTX = 0x2000


class Memory:
    """Guest memory standing in for the Machine: [base, base + size); anything else faults."""

    def __init__(self, base: int = 0x1000, size: int = 0x8000) -> None:
        self.base, self.buf = base, bytearray(size)

    def _offset(self, addr: int, n: int) -> int:
        off = addr - self.base
        if off < 0 or off + n > len(self.buf):
            raise FtlabError(f"guest address {addr:#x}+{n} is not mapped")
        return off

    def read(self, addr: int, n: int) -> bytes:
        off = self._offset(addr, n)
        return bytes(self.buf[off : off + n])

    def write(self, addr: int, data: bytes) -> None:
        off = self._offset(addr, len(data))
        self.buf[off : off + len(data)] = data

    def u64(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 8), "little")


# the test's own names for the opcodes (include/uapi/linux/bpf.h)
ALU64, ALU32, JMP64, JMP32 = 0x07, 0x04, 0x05, 0x06
OPS = {"add": 0x00, "sub": 0x10, "mul": 0x20, "div": 0x30, "or": 0x40, "and": 0x50, "lsh": 0x60}
OPS |= {"rsh": 0x70, "neg": 0x80, "mod": 0x90, "xor": 0xA0, "mov": 0xB0, "arsh": 0xC0}
CONDS = {"jeq": 0x10, "jgt": 0x20, "jge": 0x30, "jset": 0x40, "jne": 0x50, "jsgt": 0x60, "jsge": 0x70}
CONDS |= {"jlt": 0xA0, "jle": 0xB0, "jslt": 0xC0, "jsle": 0xD0}
EXIT = Insn(0x95)


def lddw(reg: int, value: int) -> Insn:
    return Insn(0x18, reg, 0, 0, value & M64)


def mov64(reg: int, imm: int) -> Insn:
    return Insn(0xB7, reg, 0, 0, imm)


def run(prog, ctx=CTX, memory=None, helpers=None, kfuncs=None, env=None, budget=1_000_000):
    interp = Interpreter(memory or Memory(), STACK_TOP, helpers or {}, kfuncs or {}, budget)
    return interp.run(prog, ctx, env, name="t.bpf.o: fentry/f"), interp


# -- the reference: C's arithmetic on the RFC's operand widths -----------------------------------

UNSIGNED = {64: ctypes.c_uint64, 32: ctypes.c_uint32}
SIGNED = {64: ctypes.c_int64, 32: ctypes.c_int32, 16: ctypes.c_int16, 8: ctypes.c_int8}


def c_div(a: int, b: int) -> int:
    """C99's truncating division."""
    return int(Fraction(a, b))


def reference_alu(name: str, bits: int, a: int, b: int) -> int:
    """RFC 9669 4.1, for dst a and src b (both 64-bit registers): the 64-bit register after."""
    u, s = UNSIGNED[bits], SIGNED[bits]
    ua, ub, sa, sb = u(a).value, u(b).value, s(a).value, s(b).value
    result = {
        "add": lambda: ua + ub,
        "sub": lambda: ua - ub,
        "mul": lambda: ua * ub,
        "div": lambda: ua // ub if ub else 0,
        "sdiv": lambda: c_div(sa, sb) if sb else 0,
        "mod": lambda: ua % ub if ub else ua,
        "smod": lambda: sa - sb * c_div(sa, sb) if sb else ua,
        "or": lambda: ua | ub,
        "and": lambda: ua & ub,
        "xor": lambda: ua ^ ub,
        "lsh": lambda: ua << (ub % bits),
        "rsh": lambda: ua >> (ub % bits),
        "arsh": lambda: sa >> (ub % bits),
        "neg": lambda: -ua,
        "mov": lambda: ub,
        "movsx8": lambda: SIGNED[8](b).value,
        "movsx16": lambda: SIGNED[16](b).value,
        "movsx32": lambda: SIGNED[32](b).value,
    }[name]()
    return u(result).value  # truncated to the width; a 32-bit result zero-extends


def alu_insn(name: str, cls: int, src_reg: bool, imm: int = 0) -> Insn:
    """name applied to r1 with r2 (src_reg) or imm."""
    base, off = name, 0
    if name in ("sdiv", "smod"):
        base, off = name[1:], 1
    elif name.startswith("movsx"):
        base, off = "mov", int(name[5:])
    code = cls | OPS[base] | (0x08 if src_reg else 0)
    if name == "neg":
        return Insn(cls | OPS["neg"], 1)
    return Insn(code, 1, 2, off, 0) if src_reg else Insn(code, 1, 0, off, imm)


values = st.one_of(
    st.sampled_from([0, 1, 2, M64, M64 - 1, 1 << 63, (1 << 63) - 1, 1 << 31, (1 << 31) - 1, 0xFFFFFFFF, 0x80]),
    st.integers(0, M64),
)
ALU_NAMES = ["add", "sub", "mul", "div", "sdiv", "mod", "smod", "or", "and", "xor", "lsh", "rsh", "arsh", "neg", "mov"]


@settings(max_examples=600, deadline=None, derandomize=True)
@given(st.sampled_from(ALU_NAMES + ["movsx8", "movsx16", "movsx32"]), st.sampled_from([64, 32]), values, values)
def test_alu_register_source(name, bits, a, b):
    if bits == 32 and name == "movsx32":
        return  # not an instruction: 32-bit movsx takes 8 or 16 bits
    cls = ALU64 if bits == 64 else ALU32
    prog = [lddw(1, a), lddw(2, b), alu_insn(name, cls, src_reg=name != "neg"), Insn(0xBF, 0, 1), EXIT]
    assert run(prog)[0] == reference_alu(name, bits, a, b)


@settings(max_examples=600, deadline=None, derandomize=True)
@given(st.sampled_from(ALU_NAMES), st.sampled_from([64, 32]), values, st.integers(-(1 << 31), (1 << 31) - 1))
def test_alu_immediate_source(name, bits, a, imm):
    if name in ("div", "sdiv", "mod", "smod") and imm == 0:
        imm = 7  # the verifier refuses a constant divisor of 0 ("div by zero"), tested below
    if name in ("lsh", "rsh", "arsh"):
        imm %= bits  # and a constant shift of the width or more ("invalid shift")
    if name == "neg":
        imm = 0
    cls = ALU64 if bits == 64 else ALU32
    prog = [lddw(1, a), alu_insn(name, cls, src_reg=False, imm=imm), Insn(0xBF, 0, 1), EXIT]
    # the immediate is sign-extended to 64 bits for ALU64, taken as its 32 bits for ALU
    assert run(prog)[0] == reference_alu(name, bits, a, imm & M64)


def test_division_by_a_zero_register_and_overflow():
    """RFC 9669: x / 0 = 0, x % 0 = x (ALU: zero-extended); INT_MIN sdiv -1 stays INT_MIN."""
    a = 0xDEADBEEF_12345678
    for name, bits, b, expected in [
        ("div", 64, 0, 0),
        ("mod", 64, 0, a),
        ("mod", 32, 0, 0x12345678),
        ("smod", 32, 0, 0x12345678),
        ("sdiv", 64, M64, (-a) & M64),
    ]:
        prog = [lddw(1, a), lddw(2, b), alu_insn(name, ALU64 if bits == 64 else ALU32, True), Insn(0xBF, 0, 1), EXIT]
        assert run(prog)[0] == expected, name
    int_min = [lddw(1, 1 << 63), lddw(2, M64), alu_insn("sdiv", ALU64, True), Insn(0xBF, 0, 1), EXIT]
    assert run(int_min)[0] == 1 << 63


@pytest.mark.parametrize("width", [16, 32, 64])
@pytest.mark.parametrize("kind", ["le", "be", "bswap"])
def test_byte_swaps(kind, width):
    value = 0x0102030405060708
    code = {"le": 0xD4, "be": 0xDC, "bswap": 0xD7}[kind]
    prog = [lddw(1, value), Insn(code, 1, 0, 0, width), Insn(0xBF, 0, 1), EXIT]
    low = value & ((1 << width) - 1)
    fmt = {16: "H", 32: "I", 64: "Q"}[width]
    swapped = struct.unpack(">" + fmt, struct.pack("<" + fmt, low))[0]
    assert run(prog)[0] == (low if kind == "le" else swapped)  # the lab's hosts are little-endian


def reference_cond(name: str, bits: int, a: int, b: int) -> bool:
    u, s = UNSIGNED[bits], SIGNED[bits]
    ua, ub, sa, sb = u(a).value, u(b).value, s(a).value, s(b).value
    return {
        "jeq": ua == ub,
        "jne": ua != ub,
        "jgt": ua > ub,
        "jge": ua >= ub,
        "jlt": ua < ub,
        "jle": ua <= ub,
        "jset": ua & ub != 0,
        "jsgt": sa > sb,
        "jsge": sa >= sb,
        "jslt": sa < sb,
        "jsle": sa <= sb,
    }[name]


@settings(max_examples=600, deadline=None, derandomize=True)
@given(st.sampled_from(sorted(CONDS)), st.sampled_from([64, 32]), st.booleans(), values, values)
def test_conditional_jumps(name, bits, src_reg, a, b):
    cls = JMP64 if bits == 64 else JMP32
    if src_reg:
        jump, b_value = Insn(cls | CONDS[name] | 0x08, 1, 2, 2), b
    else:
        imm = ctypes.c_int32(b).value
        jump, b_value = Insn(cls | CONDS[name], 1, 0, 2, imm), imm & M64  # imm sign-extended
    # r0 = 1 where the jump is taken: it skips `r0 = 2; exit`
    prog = [lddw(1, a), lddw(2, b), mov64(0, 1), jump, mov64(0, 2), EXIT, EXIT]
    assert run(prog)[0] == (1 if reference_cond(name, bits, a, b_value) else 2)


def test_ja_gotol_and_a_backward_loop():
    # r0 = sum(1..10) by a backward jump; ja and gotol skip the poison
    prog = [
        mov64(0, 0),
        mov64(1, 10),
        Insn(0x0F, 0, 1),  # r0 += r1
        Insn(0x07, 1, 0, 0, -1),  # r1 -= 1
        Insn(0x55, 1, 0, -3, 0),  # if r1 != 0 goto -3
        Insn(0x05, 0, 0, 1),  # ja +1
        mov64(0, -1),
        Insn(0x06, 0, 0, 0, 1),  # gotol +1
        mov64(0, -2),
        EXIT,
    ]
    result, interp = run(prog)
    assert result == 55
    assert interp.executed == 2 + 10 * 3 + 3


def test_jumps_count_an_lddw_as_two_slots():
    prog = [Insn(0x05, 0, 0, 3), lddw(0, 5), EXIT, mov64(0, 9), EXIT]  # slots 0, 1-2, 3, 4
    assert run(prog)[0] == 9


SIZES = {1: (0x10, "B"), 2: (0x08, "H"), 4: (0x00, "I"), 8: (0x18, "Q")}


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.sampled_from([1, 2, 4, 8]), st.integers(0, M64), st.integers(-64, 56))
def test_loads_and_stores(size, value, off):
    mem = Memory()
    size_bits, fmt = SIZES[size]
    truncated = value & ((1 << 8 * size) - 1)
    mem.write(CTX + 64 + off, struct.pack("<" + fmt, truncated))
    # r0 = *(size *)(r1 + 64 + off); *(size *)(r10 - 16) = r0; r3 = *(s size *)(r1 + 64 + off)
    prog = [
        Insn(0x07, 1, 0, 0, 64),
        Insn(0x61 | size_bits, 0, 1, off),
        Insn(0x63 | size_bits, 10, 0, -16),
        EXIT,
    ]
    assert run(prog, memory=mem)[0] == truncated
    assert mem.read(STACK_TOP - 16, size) == struct.pack("<" + fmt, truncated)
    if size < 8:
        ldsx = [Insn(0x81 | size_bits, 0, 1, 64 + off), EXIT]
        assert run(ldsx, memory=mem)[0] == struct.unpack("<" + fmt.lower(), struct.pack("<" + fmt, truncated))[0] & M64
    store_imm = [Insn(0x62 | size_bits, 10, 0, -32, ctypes.c_int32(value).value), EXIT]
    run(store_imm, memory=mem)
    expected = (ctypes.c_int32(value).value & M64) & ((1 << 8 * size) - 1)  # imm sign-extended, truncated
    assert mem.read(STACK_TOP - 32, size) == struct.pack("<" + fmt, expected)


ATOMIC_OPS = {"add": 0x00, "or": 0x40, "and": 0x50, "xor": 0xA0}


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.sampled_from([*ATOMIC_OPS, "xchg", "cmpxchg"]), st.booleans(), st.sampled_from([4, 8]), values, values)
def test_atomics(op, fetch, size, old, operand):
    mem = Memory()
    mask = (1 << 8 * size) - 1
    mem.write(CTX + 8, (old & mask).to_bytes(size, "little"))
    imm = {"xchg": 0xE1, "cmpxchg": 0xF1}.get(op, ATOMIC_OPS.get(op, 0) | (1 if fetch else 0))
    code = 0xDB if size == 8 else 0xC3
    r0 = old if op == "cmpxchg" and fetch else operand  # fetch picks whether cmpxchg's compare matches
    prog = [lddw(2, operand), lddw(0, r0), Insn(code, 1, 2, 8, imm), Insn(0x7B, 10, 2, -8), EXIT]
    result, _ = run(prog, memory=mem)
    new_src = mem.u64(STACK_TOP - 8)
    memory_after = int.from_bytes(mem.read(CTX + 8, size), "little")
    o, v = old & mask, operand & mask
    if op == "cmpxchg":
        assert memory_after == (v if o == (r0 & mask) else o)
        assert result == o and new_src == operand  # r0 gets the old value, zero-extended
    elif op == "xchg":
        assert memory_after == v and new_src == o and result == r0
    else:
        combined = {"add": o + v, "or": o | v, "and": o & v, "xor": o ^ v}[op] & mask
        assert memory_after == combined
        assert new_src == (o if imm & 1 else operand) and result == r0


def test_helpers_and_kfuncs_get_env_and_r1_to_r5():
    seen = []

    def helper(env, *args):
        seen.append((env, args))
        return -1  # r0 is the helper's value as a u64

    prog = [*(mov64(r, r * 11) for r in range(1, 6)), Insn(0x85, 0, 0, 0, 5), Insn(0xBF, 6, 0)]
    prog += [Insn(0x85, 0, 2, 0, 77), Insn(0x0F, 0, 6), EXIT]
    env = object()
    result, _ = run(prog, helpers={5: helper}, kfuncs={77: lambda e, *a: 3}, env=env)
    assert seen == [(env, (11, 22, 33, 44, 55))]
    assert result == (M64 + 3) & M64


def test_bpf_to_bpf_calls_keep_r6_to_r9_and_get_their_own_frame():
    mem = Memory()
    callee = [
        Insn(0x7A, 10, 0, -8, 99),  # its own frame's r10-8
        mov64(6, -1),
        mov64(9, -1),
        Insn(0xBF, 0, 10),  # returns its r10
        EXIT,
    ]
    caller = [
        mov64(6, 6),
        mov64(9, 9),
        Insn(0x7A, 10, 0, -8, 7),
        Insn(0x85, 0, 1, 0, 4),  # call the callee, after this and the 3 below: 1 + 4
        Insn(0x0F, 6, 9),  # r6 = 6 + 9
        Insn(0x1F, 0, 10),  # r0 = callee r10 - caller r10
        Insn(0x0F, 0, 6),
        EXIT,
    ]
    result, _ = run(caller + callee, memory=mem)
    assert result == (-512 + 15) & M64
    assert mem.u64(STACK_TOP - 8) == 7 and mem.u64(STACK_TOP - 512 - 8) == 99


def test_call_depth_is_limited_to_8_frames():
    recursive = [Insn(0x85, 0, 1, 0, -1), EXIT]  # calls itself
    message = r"^t\.bpf\.o: fentry/f: insn 0 \(call pc-0x1\): the call stack of 9 frames is too deep$"
    with pytest.raises(BpfError, match=message):
        run(recursive, memory=Memory(0x1000, 0x10000))


def test_budget():
    forever = [Insn(0x05, 0, 0, -1)]
    message = r"^t\.bpf\.o: fentry/f: insn 0 \(jmp -0x1\): still running after 1000 instructions "
    with pytest.raises(BpfError, match=message):
        run(forever, budget=1000)


def test_faults_name_the_instruction_and_address():
    prog = [mov64(2, 0), Insn(0x79, 0, 1, 0x40), EXIT]
    with pytest.raises(BpfError) as err:
        run(prog, ctx=0xDEAD0000)
    assert str(err.value) == (
        "t.bpf.o: fentry/f: insn 1 (ldxdw r0, [r1+0x40]): load of 8 bytes at 0xdead0040 faults "
        "(guest address 0xdead0040+8 is not mapped)"
    )
    with pytest.raises(BpfError, match=r"insn 0 \(stw \[r1-0x4\], 0x1\): store of 4 bytes at 0xdeacfffc faults"):
        run([Insn(0x62, 1, 0, -4, 1), EXIT], ctx=0xDEAD0000)


def test_helper_errors_name_the_helper_and_the_instruction():
    def broken(env, *args):
        raise FtlabError("map value out of range")

    message = r"^t\.bpf\.o: fentry/f: insn 0 \(call 0x1\): helper bpf_map_lookup_elem#1: map value out of range$"
    with pytest.raises(BpfError, match=message):
        run([Insn(0x85, 0, 0, 0, 1), EXIT], helpers={1: broken})
    message = r"insn 0 \(call 0x6\): helper bpf_trace_printk#6 is not available to this program$"
    with pytest.raises(BpfError, match=message):
        run([Insn(0x85, 0, 0, 0, 6), EXIT])
    with pytest.raises(BpfError, match=r"insn 0 \(call kfunc 0x2\): kfunc #2 is not available to this program$"):
        run([Insn(0x85, 0, 2, 0, 2), EXIT])


@pytest.mark.parametrize(
    "prog,message",
    [
        ([mov64(0, 1)], r"insn 0 \(mov64 r0, 0x1\): fell off the end of the program"),
        ([Insn(0xFF), EXIT], r"insn 0 \(opcode 0xff\): unknown opcode ff$"),
        ([Insn(0x37, 1, 0, 0, 0), EXIT], r"insn 0 \(div64 r1, 0x0\): div by zero$"),
        ([lddw(1, 0), Insn(0x05, 0, 0, -2), EXIT], r"insn 2 \(jmp -0x2\): jump to slot 1, which does not start"),
    ],
)
def test_programs_it_refuses_to_run(prog, message):
    with pytest.raises(BpfError, match=message):
        run(prog)


def test_translated_once_per_program():
    interp = Interpreter(Memory(), STACK_TOP, {}, {})
    prog = [mov64(0, 3), EXIT]
    assert interp.run(prog, CTX, None) == 3
    ops = interp._ops(prog, "p")
    assert interp.run(prog, CTX, None) == 3 and interp._ops(prog, "p") is ops


def test_on_guest_memory(arch):
    """A program reading a ctx array and a helper reading the program's stack, in the Machine."""
    machine = Machine(arches.get(arch))
    ctx = machine.alloc("heap", 32)
    machine.write(ctx, struct.pack("<4Q", 3, 4, 5, 0))
    stack = machine.alloc("lab data", 8 * 512, 16)

    def probe_read(env, dst, size, src, *rest):  # bpf_probe_read_kernel(dst, size, src)
        machine.write(dst, machine.read(src, size))
        return 0

    prog = [
        Insn(0x79, 2, 1, 0),
        Insn(0x79, 3, 1, 8),
        Insn(0x2F, 2, 3),  # r2 = ctx[0] * ctx[1]
        Insn(0x7B, 10, 2, -8),
        Insn(0xBF, 6, 1),
        Insn(0xBF, 1, 10),
        Insn(0x07, 1, 0, 0, -16),  # r1 = r10 - 16
        mov64(2, 8),
        Insn(0xBF, 3, 6),
        Insn(0x07, 3, 0, 0, 16),  # r3 = &ctx[2]
        Insn(0x85, 0, 0, 0, 113),
        Insn(0x79, 0, 10, -8),
        Insn(0x79, 1, 10, -16),
        Insn(0x0F, 0, 1),
        Insn(0x7B, 6, 0, 24),  # ctx[3] = 12 + 5
        EXIT,
    ]
    interp = Interpreter(machine, stack + 8 * 512, {113: probe_read}, {})
    assert interp.run(prog, ctx, None) == 17
    assert struct.unpack("<Q", machine.read(ctx + 24, 8))[0] == 17
    assert interp.executed == len(prog)
