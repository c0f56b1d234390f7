"""arm64's BPF trampoline, after prepare_trampoline / invoke_bpf_prog / invoke_bpf_mod_ret in
arch/arm64/net/bpf_jit_comp.c (v6.8 and later), emitted as assembly for the lab's assembler. The
frame, from the top:

                       [ parent ip (x9) ][ fp ]   a frame record for the traced function's caller
    sp + retaddr_off   [ self ip (lr)   ][ fp ]   and one for the traced function
                       [ padding to 16 bytes ]
    sp + regs_off      x19, x20 (the prog and its start time across the calls)
    sp + retval_off    return value                CALL_ORIG: ctx[nr_args]
    sp + args_off      x0 .. x(nr_args - 1)        ctx = &ctx[0]
    sp + nregs_off     nr_args                     ctx[-1]
    sp + ip_off        the traced function         IP_ARG: ctx[-2]
    sp + run_ctx_off   struct bpf_tramp_run_ctx

Entered from the site's `MOV X9, LR; BL` (x9 = the caller's lr, lr = after the BL) or, the same
way, from ftrace_caller's `br x17`. Arguments past x7 (on the stack, a later release) are left
out.
"""

from ..base import BPF_TRAMP_RUN_CTX, FrameSlot, TrampFlag, TrampImage

MAX_ARGS = 8
TOO_MANY_ARGS = "arm64's trampoline passes the 8 argument registers x0-x7 only"
COOKIE_OFF = BPF_TRAMP_RUN_CTX.offsets["bpf_cookie"]
AARCH64_INSN_SIZE = 4


class Frame:
    """The stack offsets above sp, as prepare_trampoline computes them."""

    def __init__(self, nr_args: int, flags: TrampFlag):
        self.nr_args, self.ip_arg = nr_args, bool(flags & TrampFlag.IP_ARG)
        self.run_ctx_off = 0
        size = -(-BPF_TRAMP_RUN_CTX.size // 8) * 8
        self.ip_off = size
        if flags & TrampFlag.IP_ARG:
            size += 8
        self.nregs_off = size
        size += 8
        self.args_off = size
        size += 8 * nr_args
        self.retval_off = size
        self.save_ret = bool(flags & TrampFlag.CALL_ORIG)  # or RET_FENTRY_RET (struct_ops only)
        if self.save_ret:
            size += 8
        self.regs_off = size
        size += 16
        self.size = -(-size // 16) * 16  # SP stays 16-byte aligned
        self.retaddr_off = self.size + 8

    def slots(self) -> list[FrameSlot]:
        """The frame from the body's sp up, named as the kernel's layout comment in
        prepare_trampoline names them: what emit() stores at each sp + offset, then the two frame
        records it pushed first (the padding the 16-byte alignment leaves is not a slot)."""
        slots = [FrameSlot(self.run_ctx_off, self.ip_off - self.run_ctx_off, "bpf_tramp_run_ctx")]
        if self.ip_arg:
            slots.append(FrameSlot(self.ip_off, 8, "traced function", -2))
        slots.append(FrameSlot(self.nregs_off, 8, "arg regs count", -1))
        slots += [FrameSlot(self.args_off + 8 * i, 8, f"arg reg {i + 1}", i) for i in range(self.nr_args)]
        if self.save_ret:
            slots.append(FrameSlot(self.retval_off, 8, "return value", self.nr_args))
        slots += [FrameSlot(self.regs_off, 8, "x19"), FrameSlot(self.regs_off + 8, 8, "x20")]
        names = ("FP", "self ip", "FP", "parent ip")  # stp x29, x30 under stp x29, x9
        return slots + [FrameSlot(self.size + 8 * i, 8, name) for i, name in enumerate(names)]


def ctx_from_entry_sp(nr_args: int, flags: TrampFlag) -> int:
    """ctx - the sp the trampoline is entered with: two frame records, then the frame."""
    f = Frame(nr_args, flags)
    return -32 - f.size + f.args_off


def ctx_from_body_sp(nr_args: int, flags: TrampFlag) -> int:
    """ctx - sp inside the trampoline's body: sp + args_off."""
    return Frame(nr_args, flags).args_off


def mov_i64(reg: str, value: int) -> list[str]:
    """emit_a64_mov_i64 for the lab's values: MOVZ, then a MOVK per further non-zero half-word."""
    halves = [(value >> s) & 0xFFFF for s in range(0, 64, 16)]
    out = [f"mov {reg}, #{halves[0]}"]  # MOVZ, as capstone prints it
    out += [f"movk {reg}, #{h}, lsl #{16 * i}" for i, h in enumerate(halves) if i and h]
    return out


def sp_plus(reg: str, offset: int) -> str:
    """A64_ADD_I(1, reg, A64_SP, offset); with 0 that is the alias capstone prints, MOV reg, SP."""
    return f"add {reg}, sp, #{offset}" if offset else f"mov {reg}, sp"


def call(target: int) -> list[str]:
    """emit_call: the address into x10, then BLR."""
    return [*mov_i64("x10", target), "blr x10"]


def emit(t: TrampImage) -> str:
    f = Frame(t.nr_args, t.flags)
    out = [
        f".globl {t.name}",
        f"{t.name}:",
        "hint #38",  # bti jc: entered by BL or by ftrace_caller's BR x17
        "stp x29, x9, [sp, #-16]!",  # a frame record for the parent
        "mov x29, sp",
        "stp x29, x30, [sp, #-16]!",  # and one for the traced function
        "mov x29, sp",
        f"sub sp, sp, #{f.size}",
    ]
    if t.flags & TrampFlag.IP_ARG:
        out += [*mov_i64("x10", t.func_addr), f"str x10, [sp, #{f.ip_off}]"]
    out += [f"mov x10, #{t.nr_args}", f"str x10, [sp, #{f.nregs_off}]"]
    out += [f"str x{i}, [sp, #{f.args_off + 8 * i}]" for i in range(t.nr_args)]
    restore = [f"ldr x{i}, [sp, #{f.args_off + 8 * i}]" for i in range(t.nr_args)]
    out += [f"str x19, [sp, #{f.regs_off}]", f"str x20, [sp, #{f.regs_off + 8}]"]
    if t.flags & TrampFlag.CALL_ORIG:
        out += [*mov_i64("x0", t.im), *call(t.calls["__bpf_tramp_enter"])]
    for n, link in enumerate(t.fentry):
        out += _invoke(t, f, link, f"{t.name}_fentry{n}", save_ret=False)
    if t.fmod_ret:
        out.append(f"str xzr, [sp, #{f.retval_off}]")  # the first fmod_ret prog must not see garbage
        for n, link in enumerate(t.fmod_ret):
            out += _invoke(t, f, link, f"{t.name}_fmod_ret{n}", save_ret=True)
            out += [f"ldr x10, [sp, #{f.retval_off}]", f"cbnz x10, {t.name}_do_fexit"]
    if t.flags & TrampFlag.CALL_ORIG:
        # into the traced function after its site, returning here
        out += [*restore, f"ldr x10, [sp, #{f.retaddr_off}]", f"adr x30, {t.name}_after_call", "ret x10"]
        out += [f".globl {t.name}_after_call", f"{t.name}_after_call:", f"str x0, [sp, #{f.retval_off}]", "nop"]
    out.append(f"{t.name}_do_fexit:")
    for n, link in enumerate(t.fexit):
        out += _invoke(t, f, link, f"{t.name}_fexit{n}", save_ret=False)
    if t.flags & TrampFlag.CALL_ORIG:
        out += [*mov_i64("x0", t.im), *call(t.calls["__bpf_tramp_exit"])]
    if t.flags & TrampFlag.RESTORE_REGS:
        out += restore
    out += [f"ldr x19, [sp, #{f.regs_off}]", f"ldr x20, [sp, #{f.regs_off + 8}]"]
    if f.save_ret:
        out.append(f"ldr x0, [sp, #{f.retval_off}]")
    out += ["mov sp, x29", "ldp x29, x30, [sp], #16", "ldp x29, x9, [sp], #16"]
    if t.flags & TrampFlag.SKIP_FRAME:
        out += ["mov x30, x9", "ret x9"]  # to the traced function's caller
    else:
        out += ["mov x10, x30", "mov x30, x9", "ret x10"]  # back into the traced function
    return "\n".join(out) + "\n"


def _invoke(t: TrampImage, f: Frame, link, label: str, save_ret: bool) -> list[str]:
    """invoke_bpf_prog: the cookie into the run_ctx, x19 = prog, __bpf_prog_enter_recur(prog,
    &run_ctx) into x20 (0: skip the program), prog->bpf_func(ctx), __bpf_prog_exit_recur(prog,
    start, &run_ctx)."""
    cookie_at = f"[sp, #{f.run_ctx_off + COOKIE_OFF}]"
    cookie = [f"str xzr, {cookie_at}"] if link.cookie == 0 else [*mov_i64("x10", link.cookie), f"str x10, {cookie_at}"]
    return [
        *cookie,
        *mov_i64("x19", link.prog),
        "mov x0, x19",
        sp_plus("x1", f.run_ctx_off),
        *call(t.calls["__bpf_prog_enter_recur"]),
        "mov x20, x0",
        f"cbz x0, {label}_skip",
        sp_plus("x0", f.args_off),  # R1 = ctx
        *call(link.bpf_func),
        *([f"str x0, [sp, #{f.retval_off}]"] if save_ret else []),
        f"{label}_skip:",
        "mov x0, x19",
        "mov x1, x20",
        sp_plus("x2", f.run_ctx_off),
        *call(t.calls["__bpf_prog_exit_recur"]),
    ]


def prog_stub(name: str) -> str:
    """prog->bpf_func as the lab runs it: leaves ctx in its mailbox and branches to the label the
    lab's hook is on, which sets x0 to the program's r0; then returns."""
    return f"""
.globl {name}
{name}:
    ldr x9, {name}_args
    str x0, [x9]
    b {name}_lab
.globl {name}_lab
{name}_lab:
    ret
.balign 8
{name}_args:
    .quad 0
"""
