"""The BPF instruction set (RFC 9669) as clang -target bpf emits it (cpu v1 to v4): the instruction,
its encoding, its disassembly (capstone), the checks the kernel makes on one instruction alone, and
the helper names of include/uapi/linux/bpf.h."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace

import capstone

from emulator import FtlabError

# -- encoding (RFC 9669 section 3; include/uapi/linux/bpf.h, bpf_common.h) --------------------------

# instruction classes: the low 3 bits of the opcode
LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64 = range(8)
# ALU and JMP: the operation (high 4 bits) and the source bit
K, X = 0x00, 0x08
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, NEG, MOD, XOR, MOV, ARSH, END = range(0x00, 0xE0, 0x10)
JA, JEQ, JGT, JGE, JSET, JNE, JSGT, JSGE, CALL, EXIT, JLT, JLE, JSLT, JSLE = range(0x00, 0xE0, 0x10)
TO_LE, TO_BE = K, X  # BPF_END's direction bit (ALU class; ALU64 | END is the unconditional bswap)
# loads and stores: the mode (high 3 bits) and the size (bits 3-4)
IMM, ABS, IND, MEM, MEMSX, ATOMIC = 0x00, 0x20, 0x40, 0x60, 0x80, 0xC0
W, H, B, DW = 0x00, 0x08, 0x10, 0x18
SIZE_BYTES = {W: 4, H: 2, B: 1, DW: 8}
# BPF_ATOMIC's imm: the operation, BPF_FETCH, and the two that always fetch
FETCH, XCHG, CMPXCHG = 0x01, 0xE0 | 0x01, 0xF0 | 0x01
ATOMIC_OPS = {ADD, OR, AND, XOR, ADD | FETCH, OR | FETCH, AND | FETCH, XOR | FETCH, XCHG, CMPXCHG}
LDDW = LD | IMM | DW  # the 16-byte load of a 64-bit immediate
# the call's src: a helper id, a bpf-to-bpf call (imm relative, in slots), a kfunc (BTF id)
HELPER_CALL, PSEUDO_CALL, KFUNC_CALL = 0, 1, 2
# an lddw's src names what its imm refers to until the loader resolves it (BPF_PSEUDO_MAP_FD ...)
PSEUDO_LDDW = {
    1: "BPF_PSEUDO_MAP_FD",
    2: "BPF_PSEUDO_MAP_VALUE",
    3: "BPF_PSEUDO_BTF_ID",
    4: "BPF_PSEUDO_FUNC",
    5: "BPF_PSEUDO_MAP_IDX",
    6: "BPF_PSEUDO_MAP_IDX_VALUE",
}
STACK_SIZE = 512  # MAX_BPF_STACK, per frame (include/linux/filter.h)
MAX_CALL_FRAMES = 8  # include/linux/bpf_verifier.h

M32, M64 = (1 << 32) - 1, (1 << 64) - 1
_SLOT = struct.Struct("<BBhi")


class BpfError(FtlabError):
    """A program or object the lab refuses or cannot run; one line naming the program (or section)
    and the instruction."""


@dataclass(frozen=True, slots=True)
class Insn:
    """One instruction with RFC 9669's fields: imm is signed 32-bit, except for an lddw, which is
    one Insn holding its 64-bit immediate (unsigned) and occupying two slots. Jump and call
    offsets count slots, as the ISA defines them."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    @property
    def cls(self) -> int:
        return self.code & 0x07

    @property
    def slots(self) -> int:
        return 2 if self.code == LDDW else 1


def slot_starts(insns: Sequence[Insn]) -> list[int]:
    """The slot each instruction starts at (the kernel's instruction index)."""
    starts, slot = [], 0
    for insn in insns:
        starts.append(slot)
        slot += insn.slots
    return starts


def decode(data: bytes, *, name: str = "bpf") -> list[Insn]:
    """The instructions of a program's bytes (a section, or part of one)."""
    if len(data) % _SLOT.size:
        raise BpfError(f"{name}: {len(data)} bytes is not a whole number of 8-byte instructions")
    raw = list(_SLOT.iter_unpack(data))
    insns: list[Insn] = []
    i = 0
    while i < len(raw):
        code, regs, off, imm = raw[i]
        if code == LDDW:
            # resolve_pseudo_ldimm64(): the second slot carries only the immediate's high half
            if i + 1 == len(raw) or raw[i + 1][:3] != (0, 0, 0):
                raise BpfError(f"{name}: insn {i} (lddw): invalid bpf_ld_imm64 insn")
            imm = (imm & M32) | (raw[i + 1][3] & M32) << 32
            i += 1
        insns.append(Insn(code, regs & 0x0F, regs >> 4, off, imm))
        i += 1
    return insns


def encode(insns: Sequence[Insn]) -> bytes:
    out = bytearray()
    for insn in insns:
        regs = insn.src << 4 | insn.dst
        if insn.code == LDDW:
            imm = insn.imm & M64
            out += _SLOT.pack(insn.code, regs, insn.off, _s32(imm & M32))
            out += _SLOT.pack(0, 0, 0, _s32(imm >> 32))
        else:
            out += _SLOT.pack(insn.code, regs, insn.off, _s32(insn.imm & M32))
    return bytes(out)


def _s32(value: int) -> int:
    return value - (1 << 32) if value >> 31 else value


# -- disassembly ----------------------------------------------------------------------------------

_CS = capstone.Cs(capstone.CS_ARCH_BPF, capstone.CS_MODE_BPF_EXTENDED)
_CS.detail = True
_OP_NAMES = {
    ADD: "add",
    SUB: "sub",
    MUL: "mul",
    DIV: "div",
    OR: "or",
    AND: "and",
    LSH: "lsh",
    RSH: "rsh",
    MOD: "mod",
    XOR: "xor",
    MOV: "mov",
    ARSH: "arsh",
}
_JMP_NAMES = {
    JEQ: "jeq",
    JGT: "jgt",
    JGE: "jge",
    JSET: "jset",
    JNE: "jne",
    JSGT: "jsgt",
    JSGE: "jsge",
    JLT: "jlt",
    JLE: "jle",
    JSLT: "jslt",
    JSLE: "jsle",
}
_SIZE_NAMES = {W: "w", H: "h", B: "b", DW: "dw"}


def disasm(insns: Sequence[Insn], index: int) -> str:
    """insns[index] as text: capstone's mnemonic and operands (immediates and offsets shown signed,
    as RFC 9669 defines them); capstone 5 predates cpu v3/v4 (JMP32, sdiv/smod, movsx, ldsx, bswap,
    gotol, the atomics beyond add) and decodes some of those as other instructions, so those are
    spelled here in its style."""
    insn = insns[index]
    if insn.code not in KNOWN_OPCODES:
        return f"opcode {insn.code:#04x}"
    if insn.code == JMP | CALL and insn.src != HELPER_CALL:
        return f"call pc{insn.imm:+#x}" if insn.src == PSEUDO_CALL else f"call kfunc {insn.imm:#x}"
    text = _lab_disasm(insn)
    if text is not None:
        return text
    decoded = list(_CS.disasm(encode([insn]), 0))
    writes_fp = not decoded and insn.dst == 10
    if writes_fp:  # capstone decodes no write to r10 (read-only): decode it as r0's, then rename
        decoded = list(_CS.disasm(encode([replace(insn, dst=0)]), 0))
    if not decoded:
        return f"opcode {insn.code:#04x}"
    (cs,) = decoded
    operands = [_cs_operand(insn, op) for op in cs.operands]
    if writes_fp:
        operands[0] = "r10"
    if None in operands:  # a cBPF-style operand (ld abs/ind): capstone's own text
        return f"{cs.mnemonic} {cs.op_str}".rstrip()
    return f"{cs.mnemonic} {', '.join(operands)}".rstrip()  # type: ignore[arg-type]


def _cs_operand(insn: Insn, op) -> str | None:
    """capstone's operand, its immediate or offset shown signed (capstone 5 shows them unsigned)."""
    if op.type == capstone.bpf.BPF_OP_REG:
        return _CS.reg_name(op.value.reg)
    if op.type == capstone.bpf.BPF_OP_IMM:
        return f"{op.value.imm:#x}" if insn.code == LDDW else f"{_s32(op.value.imm & M32):#x}"
    if op.type == capstone.bpf.BPF_OP_OFF:
        return f"{_s16(op.value.off):+#x}"
    if op.type == capstone.bpf.BPF_OP_MEM and op.value.mem.base:
        return f"[{_CS.reg_name(op.value.mem.base)}{_s16(op.value.mem.disp):+#x}]"
    return None


def _s16(value: int) -> int:
    value &= 0xFFFF
    return value - (1 << 16) if value >> 15 else value


def _lab_disasm(insn: Insn) -> str | None:
    """The instructions capstone 5 does not decode as what they are, or None."""
    cls, op = insn.cls, insn.code & 0xF0
    dst, src = f"r{insn.dst}", f"r{insn.src}"
    width = "64" if cls == ALU64 else ""
    if cls in (ALU, ALU64) and op in (DIV, MOD) and insn.off == 1:
        operand = src if insn.code & X else f"{insn.imm:#x}"
        return f"s{_OP_NAMES[op]}{width} {dst}, {operand}"
    if cls in (ALU, ALU64) and op == MOV and insn.off:
        return f"movsx{width} {dst}, {src}, {insn.off}"
    if insn.code == ALU64 | END:
        return f"bswap{insn.imm} {dst}"
    if cls == JMP32 and op == JA:
        return f"gotol {insn.imm:+#x}"
    if cls == JMP32:
        operand = src if insn.code & X else f"{insn.imm:#x}"
        return f"{_JMP_NAMES[op]}32 {dst}, {operand}, {insn.off:+#x}"
    if cls == LDX and insn.code & 0xE0 == MEMSX:
        return f"ldxs{_SIZE_NAMES[insn.code & 0x18]} {dst}, [{src}{insn.off:+#x}]"
    if cls == STX and insn.code & 0xE0 == ATOMIC and insn.imm != ADD:
        size = _SIZE_NAMES[insn.code & 0x18]
        if insn.imm in (XCHG, CMPXCHG):
            name = "xchg" if insn.imm == XCHG else "cmpxchg"
        elif insn.imm in ATOMIC_OPS:
            name = ("fetch_" if insn.imm & FETCH else "atomic_") + _OP_NAMES[insn.imm & 0xF0]
        else:
            name = f"atomic_{insn.imm & 0xFF:#04x}_"
        return f"{name}{size} [{dst}{insn.off:+#x}], {src}"
    return None


# -- what the kernel refuses in one instruction, whatever the program ------------------------------

_JMP_CONDS = set(_JMP_NAMES)
_ALU_OPS = (ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, MOD, XOR, MOV, ARSH)
# The opcodes the kernel knows (BPF_INSN_MAP in kernel/bpf/core.c and bpf_opcode_in_insntable()),
# less the ones listed below.
KNOWN_OPCODES = frozenset(
    [c | op | s for c in (ALU, ALU64) for op in _ALU_OPS for s in (K, X)]
    + [ALU | NEG, ALU64 | NEG, ALU | END | TO_LE, ALU | END | TO_BE, ALU64 | END | TO_LE]
    + [c | op | s for c in (JMP, JMP32) for op in _JMP_CONDS for s in (K, X)]
    + [JMP | JA, JMP32 | JA, JMP | CALL, JMP | EXIT, LDDW]
    + [cls | MEM | size for cls in (LDX, ST, STX) for size in (B, H, W, DW)]
    + [LDX | MEMSX | size for size in (B, H, W)]
    + [STX | ATOMIC | W, STX | ATOMIC | DW]
    + [LD | mode | size for mode in (ABS, IND) for size in (B, H, W)]
)
# Known to the 7.0 kernel, newer than what clang 14 emits, not run by the lab.
_UNSUPPORTED = {
    JMP | JA | X: "gotox (an indirect jump)",
    JMP | 0xE0: "may_goto (BPF_JCOND)",
    STX | ATOMIC | B: "an 8-bit load-acquire or store-release",
    STX | ATOMIC | H: "a 16-bit load-acquire or store-release",
}


def invalid(insn: Insn) -> str | None:
    """The kernel verifier's complaint about this instruction on its own (kernel/bpf/verifier.c:
    bpf_opcode_in_insntable() in resolve_pseudo_ldimm64(), do_check()'s reserved-field checks per
    class, check_reg_arg()), or a sentence naming what the lab does not run; None if well formed."""
    problem = _invalid_fields(insn)
    if problem is None and insn.dst > 10:
        return f"R{insn.dst} is invalid"
    if problem is None and insn.src > 10 and insn.code != JMP | CALL and insn.cls != LD:
        return f"R{insn.src} is invalid"  # src names a register except in a call or an lddw
    return problem


def _invalid_fields(insn: Insn) -> str | None:
    code, cls, mode = insn.code, insn.cls, insn.code & 0xE0
    if code in _UNSUPPORTED:
        return f"{_UNSUPPORTED[code]} is not supported by the lab"
    if code not in KNOWN_OPCODES:
        return f"unknown opcode {code:02x}"
    if cls in (ALU, ALU64):
        return _invalid_alu(insn)
    if cls in (JMP, JMP32):
        return _invalid_jmp(insn)
    if cls == LD:
        if mode != IMM:
            return "BPF_LD_[ABS|IND] instructions not allowed for this program type"
        if insn.src in PSEUDO_LDDW:
            return f"lddw of {PSEUDO_LDDW[insn.src]} not resolved by the loader"
        return "unrecognized bpf_ld_imm64 insn" if insn.src else None
    if cls == LDX:
        return "BPF_LDX uses reserved fields" if insn.imm else None
    if cls == ST:
        return "BPF_ST uses reserved fields" if insn.src else None
    if mode == ATOMIC:
        return None if insn.imm in ATOMIC_OPS else f"BPF_ATOMIC uses invalid atomic opcode {insn.imm & 0xFF:02x}"
    return "BPF_STX uses reserved fields" if insn.imm else None


def _invalid_alu(insn: Insn) -> str | None:
    code, op, alu64 = insn.code, insn.code & 0xF0, insn.cls == ALU64
    if op == END:
        if insn.src or insn.off or insn.imm not in (16, 32, 64):
            return "BPF_END uses reserved fields"
    elif op == NEG:
        if insn.src or insn.off or insn.imm:
            return "BPF_NEG uses reserved fields"
    elif op == MOV:
        if code & X:
            if insn.imm or insn.off not in ((0, 8, 16, 32) if alu64 else (0, 8, 16)):
                return "BPF_MOV uses reserved fields"
        elif insn.src or insn.off:
            return "BPF_MOV uses reserved fields"
    else:
        if insn.off not in ((0, 1) if op in (DIV, MOD) else (0,)) or (insn.imm if code & X else insn.src):
            return "BPF_ALU uses reserved fields"
        if op in (DIV, MOD) and not code & X and insn.imm == 0:
            return "div by zero"
        if op in (LSH, RSH, ARSH) and not code & X and not 0 <= insn.imm < (64 if alu64 else 32):
            return f"invalid shift {insn.imm}"
    return None


def _invalid_jmp(insn: Insn) -> str | None:
    op, jmp32 = insn.code & 0xF0, insn.cls == JMP32
    if op == JA:
        if insn.src or insn.dst or (insn.off if jmp32 else insn.imm):
            return "BPF_JA uses reserved fields"
    elif op == CALL:
        # a kfunc's off picks the module BTF holding it
        if insn.src not in (HELPER_CALL, PSEUDO_CALL, KFUNC_CALL) or insn.dst or (insn.off and insn.src != KFUNC_CALL):
            return "BPF_CALL uses reserved fields"
    elif op == EXIT:
        if insn.src or insn.dst or insn.imm:
            return "BPF_EXIT uses reserved fields"
    elif insn.imm if insn.code & X else insn.src:
        return "BPF_JMP/JMP32 uses reserved fields"
    return None


def insn_error(name: str, insns: Sequence[Insn], index: int, message: str) -> BpfError:
    """`name: insn N (disassembly): message`, N being the slot (the kernel's numbering)."""
    return BpfError(f"{name}: insn {slot_starts(insns)[index]} ({disasm(insns, index)}): {message}")


# -- helpers: the order of ___BPF_FUNC_MAPPER in include/uapi/linux/bpf.h; the list is frozen at 211
# (bpf_cgrp_storage_delete): new kernel interfaces are kfuncs.
_HELPERS = """
unspec map_lookup_elem map_update_elem map_delete_elem probe_read ktime_get_ns trace_printk get_prandom_u32
get_smp_processor_id skb_store_bytes l3_csum_replace l4_csum_replace tail_call clone_redirect
get_current_pid_tgid get_current_uid_gid get_current_comm get_cgroup_classid skb_vlan_push skb_vlan_pop
skb_get_tunnel_key skb_set_tunnel_key perf_event_read redirect get_route_realm perf_event_output
skb_load_bytes get_stackid csum_diff skb_get_tunnel_opt skb_set_tunnel_opt skb_change_proto skb_change_type
skb_under_cgroup get_hash_recalc get_current_task probe_write_user current_task_under_cgroup skb_change_tail
skb_pull_data csum_update set_hash_invalid get_numa_node_id skb_change_head xdp_adjust_head probe_read_str
get_socket_cookie get_socket_uid set_hash setsockopt skb_adjust_room redirect_map sk_redirect_map
sock_map_update xdp_adjust_meta perf_event_read_value perf_prog_read_value getsockopt override_return
sock_ops_cb_flags_set msg_redirect_map msg_apply_bytes msg_cork_bytes msg_pull_data bind xdp_adjust_tail
skb_get_xfrm_state get_stack skb_load_bytes_relative fib_lookup sock_hash_update msg_redirect_hash
sk_redirect_hash lwt_push_encap lwt_seg6_store_bytes lwt_seg6_adjust_srh lwt_seg6_action rc_repeat rc_keydown
skb_cgroup_id get_current_cgroup_id get_local_storage sk_select_reuseport skb_ancestor_cgroup_id
sk_lookup_tcp sk_lookup_udp sk_release map_push_elem map_pop_elem map_peek_elem msg_push_data msg_pop_data
rc_pointer_rel spin_lock spin_unlock sk_fullsock tcp_sock skb_ecn_set_ce get_listener_sock skc_lookup_tcp
tcp_check_syncookie sysctl_get_name sysctl_get_current_value sysctl_get_new_value sysctl_set_new_value strtol
strtoul sk_storage_get sk_storage_delete send_signal tcp_gen_syncookie skb_output probe_read_user
probe_read_kernel probe_read_user_str probe_read_kernel_str tcp_send_ack send_signal_thread jiffies64
read_branch_records get_ns_current_pid_tgid xdp_output get_netns_cookie get_current_ancestor_cgroup_id
sk_assign ktime_get_boot_ns seq_printf seq_write sk_cgroup_id sk_ancestor_cgroup_id ringbuf_output
ringbuf_reserve ringbuf_submit ringbuf_discard ringbuf_query csum_level skc_to_tcp6_sock skc_to_tcp_sock
skc_to_tcp_timewait_sock skc_to_tcp_request_sock skc_to_udp6_sock get_task_stack load_hdr_opt store_hdr_opt
reserve_hdr_opt inode_storage_get inode_storage_delete d_path copy_from_user snprintf_btf seq_printf_btf
skb_cgroup_classid redirect_neigh per_cpu_ptr this_cpu_ptr redirect_peer task_storage_get task_storage_delete
get_current_task_btf bprm_opts_set ktime_get_coarse_ns ima_inode_hash sock_from_file check_mtu
for_each_map_elem snprintf sys_bpf btf_find_by_name_kind sys_close timer_init timer_set_callback timer_start
timer_cancel get_func_ip get_attach_cookie task_pt_regs get_branch_snapshot trace_vprintk skc_to_unix_sock
kallsyms_lookup_name find_vma loop strncmp get_func_arg get_func_ret get_func_arg_cnt get_retval set_retval
xdp_get_buff_len xdp_load_bytes xdp_store_bytes copy_from_user_task skb_set_tstamp ima_file_hash kptr_xchg
map_lookup_percpu_elem skc_to_mptcp_sock dynptr_from_mem ringbuf_reserve_dynptr ringbuf_submit_dynptr
ringbuf_discard_dynptr dynptr_read dynptr_write dynptr_data tcp_raw_gen_syncookie_ipv4
tcp_raw_gen_syncookie_ipv6 tcp_raw_check_syncookie_ipv4 tcp_raw_check_syncookie_ipv6 ktime_get_tai_ns
user_ringbuf_drain cgrp_storage_get cgrp_storage_delete
"""
HELPER_NAMES: dict[int, str] = {i: f"bpf_{n}" for i, n in enumerate(_HELPERS.split())}


def helper_name(func_id: int) -> str:
    """func_id_name() in kernel/bpf/disasm.c: `bpf_map_lookup_elem`, or `unknown` out of range."""
    return HELPER_NAMES.get(func_id, "unknown")
