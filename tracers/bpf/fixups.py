"""The verifier's inlining of the trampoline helpers: in a tracing program (fentry, fexit, fmod_ret:
BPF_PROG_TYPE_TRACING) do_misc_fixups() replaces each call to bpf_get_func_arg,
bpf_get_func_ret, bpf_get_func_arg_cnt and bpf_get_func_ip with loads from the trampoline's ctx:
ctx[-1] holds nr_args (its low 8 bits since 7.0, the rest being fsession's flags), ctx[-2] the
traced function's address, ctx[nr_args] the return value. The sequences below are the kernel's
instruction for instruction (kernel/bpf/verifier.c, do_misc_fixups(), kernel-patches/bpf
000eb74a2ed5, 7.0; the `& 0xFF` came with "bpf: use last 8-bits for the nr_args in trampoline",
for fsession in 7.0). Branches across a patch are adjusted as bpf_patch_insn_data() ->
bpf_adj_branches() does (kernel/bpf/core.c). Kprobe programs keep their calls: bpf_get_func_ip
is a real helper there."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from . import isa
from .isa import (
    ADD,
    ALU64,
    AND,
    CALL,
    DW,
    EXIT,
    HELPER_CALL,
    JA,
    JGE,
    JMP,
    JMP32,
    LDX,
    LSH,
    MEM,
    MOV,
    PSEUDO_CALL,
    STX,
    BpfError,
    Insn,
    K,
    X,
)

TRACING_KINDS = ("fentry", "fexit", "fmod_ret")
# eatype == BPF_TRACE_FEXIT || BPF_TRACE_FSESSION || BPF_MODIFY_RETURN: there is a return value
_HAS_RETVAL = ("fexit", "fmod_ret")
BPF_FUNC_get_func_ip, BPF_FUNC_get_func_arg, BPF_FUNC_get_func_ret, BPF_FUNC_get_func_arg_cnt = 173, 183, 184, 185
# what tracing programs may call and never do: the verifier turns each into ctx loads
INLINED = (BPF_FUNC_get_func_ip, BPF_FUNC_get_func_arg, BPF_FUNC_get_func_ret, BPF_FUNC_get_func_arg_cnt)
EINVAL, EOPNOTSUPP = 22, 95
R0, R1, R2, R3 = 0, 1, 2, 3


def inline_tracing_helpers(
    insns: Sequence[Insn], prog_kind: str, *, mask_nr_args: bool = True, name: str = "bpf"
) -> list[Insn]:
    """The program as do_misc_fixups() leaves it for `prog_kind` (a section kind as libbpf names
    it). `mask_nr_args`: the 7.0 `& 0xFF` on ctx[-1] (False: 5.17 to 6.19)."""
    prog = list(insns)
    if prog_kind not in TRACING_KINDS:
        return prog
    i = 0
    while i < len(prog):
        insn = prog[i]
        patch = None
        if insn.code == JMP | CALL and insn.src == HELPER_CALL:
            patch = _inlined(insn.imm, prog_kind, mask_nr_args)
        if patch is None:
            i += 1
            continue
        prog = _patch(prog, i, patch, name)
        i += len(patch)
    return prog


def _ldx(dst: int, src: int, off: int) -> Insn:
    return Insn(LDX | MEM | DW, dst, src, off)


def _alu64_imm(op: int, dst: int, imm: int) -> Insn:
    return Insn(ALU64 | op | K, dst, 0, 0, imm)


def _nr_args(mask: bool) -> list[Insn]:
    """r0 = ctx[-1] (& 0xFF): /* Load nr_args from ctx - 8 */"""
    return [_ldx(R0, R1, -8)] + ([_alu64_imm(AND, R0, 0xFF)] if mask else [])


def _inlined(func_id: int, prog_kind: str, mask: bool) -> list[Insn] | None:
    if func_id == BPF_FUNC_get_func_arg:
        return [
            *_nr_args(mask),
            Insn(JMP32 | JGE | X, R2, R0, 6),
            _alu64_imm(LSH, R2, 3),
            Insn(ALU64 | ADD | X, R2, R1),
            _ldx(R0, R2, 0),
            Insn(STX | MEM | DW, R3, R0, 0),
            _alu64_imm(MOV, R0, 0),
            Insn(JMP | JA, 0, 0, 1),
            _alu64_imm(MOV, R0, -EINVAL),
        ]
    if func_id == BPF_FUNC_get_func_ret:
        if prog_kind not in _HAS_RETVAL:
            return [_alu64_imm(MOV, R0, -EOPNOTSUPP)]
        return [
            *_nr_args(mask),
            _alu64_imm(LSH, R0, 3),
            Insn(ALU64 | ADD | X, R0, R1),
            _ldx(R3, R0, 0),
            Insn(STX | MEM | DW, R2, R3, 0),
            _alu64_imm(MOV, R0, 0),
        ]
    if func_id == BPF_FUNC_get_func_arg_cnt:
        return _nr_args(mask)
    if func_id == BPF_FUNC_get_func_ip:
        return [_ldx(R0, R1, -16)]  # /* Load IP address from ctx - 16 */
    return None


def _patch(prog: list[Insn], index: int, patch: list[Insn], name: str) -> list[Insn]:
    """bpf_patch_insn_single(): prog[index] replaced by patch (single-slot instructions), the
    jumps and bpf-to-bpf calls that cross it moved by the growth (bpf_adj_delta_to_off/_imm)."""
    pos = isa.slot_starts(prog)[index]
    end_old, end_new = pos + 1, pos + len(patch)
    delta = end_new - end_old
    out = prog[:index] + patch + prog[index + 1 :]
    for j, curr in enumerate(isa.slot_starts(out)):
        insn = out[j]
        if insn.cls not in (JMP, JMP32) or insn.code & 0xF0 == EXIT:
            continue
        if insn.code & 0xF0 == CALL and insn.src != PSEUDO_CALL:
            continue
        in_imm = insn.code in (JMP | CALL, JMP32 | JA)
        off = insn.imm if in_imm else insn.off
        if curr < pos and curr + off + 1 >= end_old:
            off += delta
        elif curr >= end_new and curr + off + 1 < end_new:
            off -= delta
        else:
            continue
        if not in_imm and not -(1 << 15) <= off < 1 << 15:
            raise BpfError(f"{name}: insn {pos} cannot be patched due to 16-bit range")
        out[j] = replace(insn, imm=off) if in_imm else replace(insn, off=off)
    return out
