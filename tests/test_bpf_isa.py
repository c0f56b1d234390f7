"""The BPF instruction encoding against capstone's decoding of the same bytes, the disassembly, the
kernel's one-instruction refusals, and the helper table against the system's uapi header."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import capstone
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracers.bpf import isa
from tracers.bpf.isa import BpfError, Insn

CS = capstone.Cs(capstone.CS_ARCH_BPF, capstone.CS_MODE_BPF_EXTENDED)
CS.detail = True


def raw(code, dst=0, src=0, off=0, imm=0) -> bytes:
    """The test's own encoder: struct bpf_insn as include/uapi/linux/bpf.h lays it out."""
    return struct.pack("<BBhi", code, src << 4 | dst, off, imm)


# opcodes capstone 5 decodes as what they are (cpu v1/v2): register, immediate and offset fields
CLASSIC_REG_IMM = [0x07, 0x17, 0x27, 0x47, 0x57, 0x67, 0x77, 0xA7, 0xB7, 0xC7, 0x04, 0x14, 0xB4, 0xA4]
CLASSIC_REG_REG = [0x0F, 0x1F, 0x2F, 0x4F, 0x5F, 0x6F, 0x7F, 0xAF, 0xBF, 0xCF, 0x0C, 0x1C, 0xBC, 0xAC]
CLASSIC_JMP_IMM = [0x15, 0x25, 0x35, 0x45, 0x55, 0x65, 0x75, 0xA5, 0xB5, 0xC5, 0xD5]
CLASSIC_JMP_REG = [0x1D, 0x2D, 0x3D, 0x4D, 0x5D, 0x6D, 0x7D, 0xAD, 0xBD, 0xCD, 0xDD]
CLASSIC_LDX = [0x61, 0x69, 0x71, 0x79]
CLASSIC_STX = [0x63, 0x6B, 0x73, 0x7B]
CLASSIC_ST = [0x62, 0x6A, 0x72, 0x7A]

regs = st.integers(0, 10)
written = st.integers(0, 9)  # capstone decodes no write to r10
offs = st.integers(-(1 << 15), (1 << 15) - 1)
imms = st.integers(-(1 << 31), (1 << 31) - 1)


def signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def cs_fields(data: bytes) -> list:
    """capstone's operands: register numbers, immediates and offsets as the ISA's signed fields."""
    (insn,) = CS.disasm(data, 0)
    out = []
    for op in insn.operands:
        if op.type == capstone.bpf.BPF_OP_REG:
            out.append(("reg", int(CS.reg_name(op.value.reg)[1:])))
        elif op.type == capstone.bpf.BPF_OP_IMM:
            out.append(("imm", op.value.imm))
        elif op.type == capstone.bpf.BPF_OP_OFF:
            out.append(("off", signed(op.value.off, 16)))
        else:
            out.append(("mem", int(CS.reg_name(op.value.mem.base)[1:]), signed(op.value.mem.disp, 16)))
    return out


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.data(), written, regs, offs, imms)
def test_decode_agrees_with_capstone(data, dst, src, off, imm):
    code = data.draw(st.sampled_from(CLASSIC_REG_IMM + CLASSIC_REG_REG + CLASSIC_JMP_IMM + CLASSIC_JMP_REG))
    kind = "jmp" if code & 7 == isa.JMP else "alu"
    if code & 0x08:
        encoded = raw(code, dst, src, off if kind == "jmp" else 0, 0)
    else:
        encoded = raw(code, dst, 0, off if kind == "jmp" else 0, imm)
    (insn,) = isa.decode(encoded)
    fields = cs_fields(encoded)
    expected = [("reg", insn.dst), ("reg", insn.src) if code & 0x08 else ("imm", insn.imm & isa.M32)]
    if kind == "jmp":
        expected.append(("off", insn.off))
    assert fields == expected
    assert isa.encode([insn]) == encoded


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.data(), written, regs, offs, imms)
def test_memory_fields_agree_with_capstone(data, dst, src, off, imm):
    code = data.draw(st.sampled_from(CLASSIC_LDX + CLASSIC_STX + CLASSIC_ST))
    encoded = raw(code, dst, 0 if code in CLASSIC_ST else src, off, imm if code in CLASSIC_ST else 0)
    (insn,) = isa.decode(encoded)
    fields = cs_fields(encoded)
    if code in CLASSIC_LDX:
        assert fields == [("reg", insn.dst), ("mem", insn.src, insn.off)]
    elif code in CLASSIC_STX:
        assert fields == [("mem", insn.dst, insn.off), ("reg", insn.src)]
    else:
        assert fields == [("mem", insn.dst, insn.off), ("imm", insn.imm & isa.M32)]
    assert isa.encode([insn]) == encoded


@settings(max_examples=200, deadline=None, derandomize=True)
@given(written, st.integers(0, (1 << 64) - 1))
def test_lddw_is_one_insn_of_two_slots(dst, value):
    encoded = raw(0x18, dst, 0, 0, signed(value, 32)) + raw(0, 0, 0, 0, signed(value >> 32, 32))
    insns = isa.decode(encoded + raw(0x95))
    assert [i.slots for i in insns] == [2, 1]
    assert insns[0].imm == value and insns[0].dst == dst
    assert cs_fields(encoded) == [("reg", dst), ("imm", value)]
    assert isa.encode(insns) == encoded + raw(0x95)
    assert isa.slot_starts(insns) == [0, 2]


def test_decode_refuses_what_is_not_a_program():
    with pytest.raises(BpfError, match=r"^prog\.o: fentry/f: 12 bytes is not a whole number of 8-byte instructions$"):
        isa.decode(bytes(12), name="prog.o: fentry/f")
    with pytest.raises(BpfError, match=r"^p: insn 1 \(lddw\): invalid bpf_ld_imm64 insn$"):
        isa.decode(raw(0x95) + raw(0x18, 1, 0, 0, 5), name="p")  # no second slot
    with pytest.raises(BpfError, match=r"^p: insn 0 \(lddw\): invalid bpf_ld_imm64 insn$"):
        isa.decode(raw(0x18, 1, 0, 0, 5) + raw(0, 2, 0, 0, 0), name="p")  # second slot names a register


@pytest.mark.parametrize(
    "insn,text",
    [
        (Insn(0x79, 0, 1, 0x40), "ldxdw r0, [r1+0x40]"),
        (Insn(0x7B, 10, 1, -8), "stxdw [r10-0x8], r1"),
        (Insn(0x55, 1, 0, -2, -5), "jne r1, -0x5, -0x2"),
        (Insn(0xB7, 1, 0, 0, -1), "mov64 r1, -0x1"),
        (Insn(0x18, 1, 0, 0, 0x9ABCDEF012345678), "lddw r1, 0x9abcdef012345678"),
        (Insn(0x85, 0, 0, 0, 1), "call 0x1"),
        (Insn(0x85, 0, 1, 0, -3), "call pc-0x3"),
        (Insn(0x85, 0, 2, 0, 7), "call kfunc 0x7"),
        (Insn(0x95), "exit"),
        (Insn(0xDB, 1, 2, 8, 0), "xadddw [r1+0x8], r2"),
        # cpu v3/v4, which capstone 5 does not know
        (Insn(0x3F, 1, 2, 1), "sdiv64 r1, r2"),
        (Insn(0x94, 1, 0, 1, -3), "smod r1, -0x3"),
        (Insn(0xBF, 1, 2, 16), "movsx64 r1, r2, 16"),
        (Insn(0xD7, 3, 0, 0, 32), "bswap32 r3"),
        (Insn(0x06, 0, 0, 0, -9), "gotol -0x9"),
        (Insn(0x1E, 2, 3, 4), "jeq32 r2, r3, +0x4"),
        (Insn(0x91, 1, 2, -4), "ldxsb r1, [r2-0x4]"),
        (Insn(0xDB, 1, 2, 8, 0x41), "fetch_ordw [r1+0x8], r2"),
        (Insn(0xC3, 1, 2, 8, 0xA0), "atomic_xorw [r1+0x8], r2"),
        (Insn(0xDB, 1, 2, 0, 0xF1), "cmpxchgdw [r1+0x0], r2"),
        (Insn(0xFF, 1, 2), "opcode 0xff"),
        (Insn(0xB7, 10, 0, 0, 1), "mov64 r10, 0x1"),  # capstone refuses writes to r10 itself
        (Insn(0x79, 10, 1, 8), "ldxdw r10, [r1+0x8]"),
    ],
)
def test_disasm(insn, text):
    assert isa.disasm([insn], 0) == text


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.sampled_from(CLASSIC_REG_IMM + CLASSIC_REG_REG + CLASSIC_JMP_IMM + CLASSIC_LDX + CLASSIC_STX), written, regs)
def test_disasm_mnemonic_is_capstones(code, dst, src):
    (cs,) = CS.disasm(raw(code, dst, src if code & 0x08 or code & 7 in (1, 3) else 0), 0)
    insn = isa.decode(raw(code, dst, src if code & 0x08 or code & 7 in (1, 3) else 0))
    assert isa.disasm(insn, 0).split()[0] == cs.mnemonic


@pytest.mark.parametrize(
    "insn,message",
    [
        # kernel/bpf/verifier.c's wording
        (Insn(0xFF), "unknown opcode ff"),
        (Insn(0x8C, 1, 2), "unknown opcode 8c"),  # neg has no register form
        (Insn(0xDF, 1, 0, 0, 16), "unknown opcode df"),  # bswap has no to-big-endian form
        (Insn(0x0F, 1, 2, 0, 5), "BPF_ALU uses reserved fields"),
        (Insn(0x07, 1, 2, 0, 5), "BPF_ALU uses reserved fields"),
        (Insn(0x0F, 1, 2, 1), "BPF_ALU uses reserved fields"),  # off 1 only for sdiv/smod
        (Insn(0x37, 1, 0, 0, 0), "div by zero"),
        (Insn(0x97, 1, 0, 1, 0), "div by zero"),
        (Insn(0x67, 1, 0, 0, 64), "invalid shift 64"),
        (Insn(0x64, 1, 0, 0, 32), "invalid shift 32"),
        (Insn(0xBC, 1, 2, 32), "BPF_MOV uses reserved fields"),  # 32-bit movsx from 32 bits
        (Insn(0xB7, 1, 2, 0, 3), "BPF_MOV uses reserved fields"),
        (Insn(0x87, 1, 0, 0, 1), "BPF_NEG uses reserved fields"),
        (Insn(0xD4, 1, 0, 0, 8), "BPF_END uses reserved fields"),
        (Insn(0x05, 0, 0, 1, 1), "BPF_JA uses reserved fields"),
        (Insn(0x06, 0, 0, 1, 1), "BPF_JA uses reserved fields"),
        (Insn(0x85, 0, 3, 0, 1), "BPF_CALL uses reserved fields"),
        (Insn(0x95, 0, 0, 0, 1), "BPF_EXIT uses reserved fields"),
        (Insn(0x1D, 1, 2, 0, 1), "BPF_JMP/JMP32 uses reserved fields"),
        (Insn(0x79, 1, 2, 0, 1), "BPF_LDX uses reserved fields"),
        (Insn(0x7A, 1, 2, 0, 1), "BPF_ST uses reserved fields"),
        (Insn(0x7B, 1, 2, 0, 1), "BPF_STX uses reserved fields"),
        (Insn(0xDB, 1, 2, 0, 0x20), "BPF_ATOMIC uses invalid atomic opcode 20"),
        (Insn(0x20, 0, 0, 0, 0), "BPF_LD_[ABS|IND] instructions not allowed for this program type"),
        (Insn(0x18, 1, 9, 0, 0), "unrecognized bpf_ld_imm64 insn"),
        (Insn(0x18, 1, 1, 0, 3), "lddw of BPF_PSEUDO_MAP_FD not resolved by the loader"),
        (Insn(0x07, 11, 0, 0, 1), "R11 is invalid"),
        (Insn(0x7B, 1, 12, 0, 0), "R12 is invalid"),
        (Insn(0xE5), "may_goto (BPF_JCOND) is not supported by the lab"),
    ],
)
def test_invalid_instructions(insn, message):
    assert isa.invalid(insn) == message


def test_insn_error_names_the_slot():
    insns = [Insn(0x18, 1, 0, 0, 5), Insn(0x79, 0, 1, 0x40)]
    err = isa.insn_error("prog.bpf.o: fentry/fib", insns, 1, "invalid bpf_context access off=64 size=8")
    assert str(err) == "prog.bpf.o: fentry/fib: insn 2 (ldxdw r0, [r1+0x40]): invalid bpf_context access off=64 size=8"


UAPI = Path("/usr/include/linux/bpf.h")


@pytest.mark.skipif(not UAPI.exists(), reason="no linux-libc-dev header on this machine")
def test_helper_names_follow_the_uapi_header():
    """The system's include/uapi/linux/bpf.h (whatever release) lists helpers in id order."""
    text = UAPI.read_text()
    mapper = text[text.index("define __BPF_FUNC_MAPPER") : text.index("/* */", text.index("define __BPF_FUNC_MAPPER"))]
    names = re.findall(r"FN\((\w+)", mapper)
    assert len(names) > 200
    assert {i: f"bpf_{n}" for i, n in enumerate(names)} == {i: isa.HELPER_NAMES[i] for i in range(len(names))}


def test_helper_ids_the_lab_uses():
    assert isa.helper_name(6) == "bpf_trace_printk"
    assert isa.helper_name(58) == "bpf_override_return"
    assert isa.helper_name(183) == "bpf_get_func_arg"
    assert isa.helper_name(211) == "bpf_cgrp_storage_delete"
    assert isa.helper_name(212) == "unknown"
