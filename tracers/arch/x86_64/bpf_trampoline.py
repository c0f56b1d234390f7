"""x86_64's BPF trampoline, after arch_prepare_bpf_trampoline / __arch_prepare_bpf_trampoline and
invoke_bpf_prog / invoke_bpf_mod_ret in arch/x86/net/bpf_jit_comp.c (v6.8 and later), emitted as
assembly for the lab's assembler. The frame, from rbp down:

    rbp + 8            return address (into the traced function after its site)
    rbp + 0            saved rbp
    rbp - 8            return value                CALL_ORIG: ctx[nr_args]
    rbp - regs_off     the argument registers      ctx = &ctx[0]
    rbp - nregs_off    nr_args                     ctx[-1]
    rbp - ip_off       the traced function         IP_ARG: ctx[-2]
    rbp - rbx_off      saved rbx
    rbp - run_ctx_off  struct bpf_tramp_run_ctx

The kernel's stack arguments (7 to 12 arguments, since 6.6) and IBT's endbr64 and call-depth
accounting are left out: the lab passes register arguments only.
"""

from ..base import BPF_TRAMP_RUN_CTX, FrameSlot, TrampFlag, TrampImage

ARG_REGS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")
MAX_ARGS = len(ARG_REGS)
TOO_MANY_ARGS = (
    "x86_64's trampoline takes arguments 7-12 from the stack (since 6.6); the lab's passes the 6 "
    "register arguments only"
)
COOKIE_OFF = BPF_TRAMP_RUN_CTX.offsets["bpf_cookie"]
X86_NOP5 = ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00"  # x86_nops[5]: im->ip_after_call


class Frame:
    """The stack offsets below rbp, as __arch_prepare_bpf_trampoline computes them."""

    def __init__(self, nr_args: int, flags: TrampFlag):
        self.nr_args, self.ip_arg = nr_args, bool(flags & TrampFlag.IP_ARG)
        self.save_ret = bool(flags & TrampFlag.CALL_ORIG)  # or RET_FENTRY_RET (struct_ops only)
        size = 8 if self.save_ret else 0
        size += 8 * nr_args
        self.regs_off = size
        size += 8
        self.nregs_off = size
        if flags & TrampFlag.IP_ARG:
            size += 8
        self.ip_off = size
        size += 8
        self.rbx_off = size
        size += -(-BPF_TRAMP_RUN_CTX.size // 8) * 8
        self.run_ctx_off = self.size = size

    def slots(self) -> list[FrameSlot]:
        """The frame from the body's sp (rbp - size) up, named as the kernel's layout comment in
        __arch_prepare_bpf_trampoline names them: what emit() stores at each rbp - offset."""
        at = self.size  # rbp, as an offset from sp

        def slot(off, name, ctx=None, size=8):
            return FrameSlot(at - off, size, name, ctx)

        slots = [slot(self.run_ctx_off, "bpf_tramp_run_ctx", size=self.run_ctx_off - self.rbx_off)]
        slots.append(slot(self.rbx_off, "rbx value"))
        if self.ip_arg:
            slots.append(slot(self.ip_off, "traced function", -2))
        slots.append(slot(self.nregs_off, "regs count", -1))
        slots += [slot(self.regs_off - 8 * i, f"reg_arg{i + 1}", i) for i in range(self.nr_args)]
        if self.save_ret:
            slots.append(slot(8, "return value", self.nr_args))
        return [*slots, slot(0, "RBP"), slot(-8, "return address")]


def ctx_from_entry_sp(nr_args: int, flags: TrampFlag) -> int:
    """ctx - the sp the trampoline is entered with (its return address's slot): push rbp."""
    return -8 - Frame(nr_args, flags).regs_off


def ctx_from_body_sp(nr_args: int, flags: TrampFlag) -> int:
    """ctx - sp inside the trampoline's body (after sub rsp, stack_size): rbp - regs_off."""
    f = Frame(nr_args, flags)
    return f.size - f.regs_off


def emit(t: TrampImage) -> str:
    f = Frame(t.nr_args, t.flags)
    out = [
        f".globl {t.name}",
        f"{t.name}:",
        "push rbp",
        "mov rbp, rsp",
        f"sub rsp, {f.size}",
        f"mov [rbp-{f.rbx_off}], rbx",
        f"mov eax, {t.nr_args}",
        f"mov [rbp-{f.nregs_off}], rax",
    ]
    if t.flags & TrampFlag.IP_ARG:
        out += [f"movabs rax, {t.func_addr}", f"mov [rbp-{f.ip_off}], rax"]
    out += [f"mov [rbp-{f.regs_off - 8 * i}], {r}" for i, r in enumerate(ARG_REGS[: t.nr_args])]
    restore = [f"mov {r}, [rbp-{f.regs_off - 8 * i}]" for i, r in enumerate(ARG_REGS[: t.nr_args])]
    if t.flags & TrampFlag.CALL_ORIG:
        out += [f"movabs rdi, {t.im}", f"call {t.calls['__bpf_tramp_enter']}"]
    for n, link in enumerate(t.fentry):
        out += _invoke(t, f, link, f"{t.name}_fentry{n}", save_ret=False)
    if t.fmod_ret:
        out += ["mov eax, 0", "mov [rbp-8], rax"]  # the first fmod_ret prog must not see garbage
        for n, link in enumerate(t.fmod_ret):
            out += _invoke(t, f, link, f"{t.name}_fmod_ret{n}", save_ret=True)
            out += ["cmp qword ptr [rbp-8], 0", f"jne {t.name}_do_fexit"]
    if t.flags & TrampFlag.CALL_ORIG:
        out += [*restore, f"call {t.orig_call}", f".globl {t.name}_after_call", f"{t.name}_after_call:"]
        out += ["mov [rbp-8], rax", X86_NOP5]
    out.append(f"{t.name}_do_fexit:")  # the kernel aligns it to 16 with NOPs; the lab does not
    for n, link in enumerate(t.fexit):
        out += _invoke(t, f, link, f"{t.name}_fexit{n}", save_ret=False)
    if t.flags & TrampFlag.RESTORE_REGS:
        out += restore
    if t.flags & TrampFlag.CALL_ORIG:
        out += [f"movabs rdi, {t.im}", f"call {t.calls['__bpf_tramp_exit']}"]
    if f.save_ret:
        out.append("mov rax, [rbp-8]")
    out += [f"mov rbx, [rbp-{f.rbx_off}]", "leave"]
    if t.flags & TrampFlag.SKIP_FRAME:
        out.append("add rsp, 8")  # return to the traced function's caller
    out.append("ret")
    return "\n".join(out) + "\n"


def _invoke(t: TrampImage, f: Frame, link, label: str, save_ret: bool) -> list[str]:
    """invoke_bpf_prog: the cookie into the run_ctx, __bpf_prog_enter_recur(prog, &run_ctx) (0:
    skip the program), prog->bpf_func(ctx), __bpf_prog_exit_recur(prog, start, &run_ctx)."""
    return [
        f"{'mov' if link.cookie < 1 << 31 else 'movabs'} rdi, {link.cookie}",  # emit_mov_imm64
        f"mov [rbp-{f.run_ctx_off - COOKIE_OFF}], rdi",
        f"movabs rdi, {link.prog}",
        f"lea rsi, [rbp-{f.run_ctx_off}]",
        f"call {t.calls['__bpf_prog_enter_recur']}",
        "mov rbx, rax",  # the start time
        "test rax, rax",
        f"je {label}_skip",
        f"lea rdi, [rbp-{f.regs_off}]",  # R1 = ctx
        f"call {link.bpf_func}",
        *(["mov [rbp-8], rax"] if save_ret else []),
        f"{label}_skip:",
        f"movabs rdi, {link.prog}",
        "mov rsi, rbx",
        f"lea rdx, [rbp-{f.run_ctx_off}]",
        f"call {t.calls['__bpf_prog_exit_recur']}",
    ]


def prog_stub(name: str) -> str:
    """prog->bpf_func as the lab runs it: leaves ctx in its mailbox and branches to the label the
    lab's hook is on, which sets rax to the program's r0; then returns."""
    return f"""
.globl {name}
{name}:
    mov rax, [rip+{name}_args]
    mov [rax], rdi
    jmp {name}_lab
.globl {name}_lab
{name}_lab:
    ret
.balign 8
{name}_args:
    .quad 0
"""
