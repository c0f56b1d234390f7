"""x86_64's kernel arch code: struct pt_regs, fentry patch sites (arch/x86/kernel/ftrace.c),
rethook fix-ups (arch/x86/kernel/rethook.c), kprobes (kprobes.py), and the trampolines (*.S)."""

import struct
from pathlib import Path

from emulator.arch.x86_64 import CPU, KERNEL_CS, KERNEL_DS
from emulator.layout import Layout

from ..base import (
    BPF_PROG,
    BPF_TRAMP_IMAGE,
    BPF_TRAMP_RUN_CTX,
    DirectCalls,
    FgraphArch,
    KernelArch,
    PartialRegs,
    RegFixup,
    RegsCaller,
    RethookArch,
    ReturnToHandler,
    ReturnTrampoline,
    SiteEncoding,
)
from . import bpf_trampoline, kprobes

# struct pt_regs (arch/x86/include/asm/ptrace.h); ftrace_regs wraps one, so it has the same layout.
PT_REGS = Layout(
    "pt_regs",
    168,
    {
        "r15": 0,
        "r14": 8,
        "r13": 16,
        "r12": 24,
        "bp": 32,
        "bx": 40,
        "r11": 48,
        "r10": 56,
        "r9": 64,
        "r8": 72,
        "ax": 80,
        "cx": 88,
        "dx": 96,
        "si": 104,
        "di": 112,
        "orig_ax": 120,
        "ip": 128,
        "cs": 136,
        "flags": 144,
        "sp": 152,
        "ss": 160,
    },
)
FTRACE_REGS = Layout("ftrace_regs", 168, dict(PT_REGS.offsets))

X86_EFLAGS_FIXED = 0x2  # RFLAGS bit 1, always 1 in the hardware (arch/x86/include/uapi/asm/processor-flags.h)
MASK64 = (1 << 64) - 1

CALL, NOP5 = 0xE8, bytes.fromhex("0f1f440000")  # x86_nops[5], what ftrace_make_nop writes
MCOUNT_INSN_SIZE = 5  # the call at a site


def encode_call(ip: int, target: int) -> bytes:
    """`call rel32` (ftrace_call_replace); keystone can't be trusted with it (it mis-encodes
    relative branches given as numbers)."""
    rel = target - (ip + MCOUNT_INSN_SIZE)
    if not -(1 << 31) <= rel < (1 << 31):
        raise ValueError(f"call from {ip:#x} to {target:#x} is out of rel32 range")
    return bytes([CALL]) + struct.pack("<i", rel)


def after_site(site, truth, u64):
    """regs.ip: the return address the site's call pushed, the instruction after the 5-byte site."""
    return site + MCOUNT_INSN_SIZE


def adjust_site(addr, read, is_function_start):
    return addr, None  # __mcount_loc records the call itself (func+0, or func+4 after endbr64)


def init_site(ip, window, mcount):
    """ftrace_init_nop: `call __fentry__` or `call mcount` (or gcc's -mnop-mcount NOP) becomes NOP5
    (ftrace_make_nop before 5.2 checked the call against MCOUNT_ADDR, mcount's address)."""
    if window == NOP5 or window == encode_call(ip, mcount):
        return NOP5
    return None


def rethook_enter(regs):
    """arch_rethook_trampoline_callback's fix-ups; the frame is the fake return slot above regs."""
    regs.set_reg("cs", KERNEL_CS)
    regs.set_reg("orig_ax", (1 << 64) - 1)
    regs.set_reg("sp", regs.kernel_stack_pointer() + 16)  # the trampoline pushed sp - 16
    return regs.addr + PT_REGS.size


def rethook_leave(regs, frame, ret, write):
    """arch_rethook_fixup_return writes the real return address for the final ret; flags are
    copied into the ss slot so the trampoline can popfq right before that ret."""
    write(frame, struct.pack("<Q", ret))
    regs.set_reg("ss", regs.fields["flags"])


# The kernel's ptrace-abi.h names for the pt_regs offsets: RAX, RIP, EFLAGS, ORIG_RAX ...
ASM_NAMES = {
    "bp": "RBP",
    "bx": "RBX",
    "ax": "RAX",
    "cx": "RCX",
    "dx": "RDX",
    "si": "RSI",
    "di": "RDI",
    "orig_ax": "ORIG_RAX",
    "ip": "RIP",
    "flags": "EFLAGS",
    "sp": "RSP",
}

KERNEL = KernelArch(
    cpu=CPU,
    pt_regs=PT_REGS,
    ftrace_regs=FTRACE_REGS,
    # ftrace_caller (arch/x86/kernel/ftrace_64.S) stores these; cs = 0 and orig_ax = 0 are markers
    # ("not a full pt_regs"), not captured registers.
    ftrace_regs_saved=("ax", "cx", "dx", "si", "di", "r8", "r9", "bp", "ip", "sp"),
    ftrace_regs_aliases={},
    ftrace_regs_is_pt_regs=True,  # HAVE_FTRACE_REGS_HAVING_PT_REGS
    ftrace_regs_stack_args=True,  # regs_get_kernel_argument: n >= 6 is sp[n - 5]
    # ftrace_partial_regs() returns &fregs->regs itself (HAVE_FTRACE_REGS_HAVING_PT_REGS). x86_64's
    # user_mode(regs) is regs->cs & 3 (arch/x86/include/asm/ptrace.h), and perf_callchain_kernel()
    # unwinds from the regs' ip/sp/bp only when perf_hw_regs(regs) sees X86_EFLAGS_FIXED in flags,
    # else from the current stack (arch/x86/events/core.c).
    partial_regs=(
        (
            None,
            PartialRegs(
                (),
                "cs as the trampoline left it (ftrace_caller: 0, kernel RPL; return_to_handler: never "
                "written), flags never written",
            ),
        ),
        (
            # torvalds/linux 20a0bc10272f (6.18-rc6): arch_ftrace_partial_regs()
            "x86_arch_ftrace_partial_regs",
            PartialRegs(
                (RegFixup("cs", 0, KERNEL_CS), RegFixup("flags", MASK64 & ~X86_EFLAGS_FIXED, 0)),
                "cs = __KERNEL_CS, X86_EFLAGS_FIXED cleared (20a0bc10272f): user_mode() is false, and "
                "perf unwinds the current stack",
            ),
        ),
        (
            # torvalds/linux aea251799998 (7.0): regs->flags |= X86_EFLAGS_FIXED
            "x86_partial_regs_flags_fixed",
            PartialRegs(
                (RegFixup("cs", 0, KERNEL_CS), RegFixup("flags", MASK64, X86_EFLAGS_FIXED)),
                "cs = __KERNEL_CS, X86_EFLAGS_FIXED set (aea251799998): user_mode() is false, and "
                "perf unwinds from these regs' ip, sp and bp",
            ),
        ),
    ),
    regs_caller=RegsCaller(
        saved=tuple(r for r in PT_REGS.offsets if r != "orig_ax"), full_marker="cs"
    ),  # arch_ftrace_get_regs(): NULL when regs.cs == 0
    no_regs_caller_reason=None,
    sites=SiteEncoding(
        name="fentry",
        tables=("__mcount_loc",),
        call_symbols=("__fentry__",),
        offset_from_reloc=-1,  # the PLT32 relocation is on the rel32 after the e8 byte
        size=MCOUNT_INSN_SIZE,
        nop=NOP5,
        adjust=adjust_site,
        window=0,
        init=init_site,
        encode_call=encode_call,
        meaning={"ip": after_site},
        where="call __fentry__ at the entry, before the prologue: every register is the caller's",
        # the arguments, rax and the callee-saved registers are live; the kernel's ftrace_caller
        # restores neither r10 nor r11 (ftrace_regs_caller saves r11 but does not restore it), and
        # the flags are never preserved across a call
        clobbers=("r10", "r11", "flags"),
    ),
    legacy_sites=(
        SiteEncoding(
            name="mcount",
            after_prologue=True,
            tables=("__mcount_loc",),  # gcc -pg -mrecord-mcount; else the relocations against mcount
            call_symbols=("mcount",),
            offset_from_reloc=-1,
            size=MCOUNT_INSN_SIZE,
            nop=NOP5,
            adjust=adjust_site,
            window=0,
            init=init_site,
            encode_call=encode_call,
            caller="ftrace_caller_mcount",
            regs_caller="ftrace_regs_caller_mcount",
            calls=("ftrace_call_mcount", "ftrace_regs_call_mcount"),
            # sp: the function's sp at entry, where its return address is: 8(%rbp) after the prologue
            meaning={"ip": after_site, "sp": lambda site, truth, u64: truth["bp"] + 8},
            where=(
                "call mcount after push rbp; mov rbp, rsp (-pg without -mfentry, gone in 5.2): the "
                "parent and the entry sp are found through rbp, bp is the function's own frame"
            ),
            # gcc calls mcount with the arguments still live in their registers (the kernel's
            # mcount saved them as ftrace_caller does); r10, r11 and the flags are the call's
            clobbers=("r10", "r11", "flags"),
        ),
    ),
    # return_to_handler (arch/x86/kernel/ftrace_64.S) by release; ip is the real return address,
    # which ftrace_return_to_handler() stores (ftrace_regs_set_instruction_pointer).
    fgraph=FgraphArch(
        return_to_handlers=(
            (
                None,  # 6.14-6.17: rax, rdx and rbp only
                ReturnToHandler(
                    "return_to_handler.S",
                    ("ax", "dx", "bp", "ip"),
                    "rax, rdx, rbp: no sp, so $stack at an fprobe exit reads a slot nothing wrote, and "
                    "the ORC unwinder stops at return_to_handler",
                ),
            ),
            (
                # torvalds/linux 20a0bc10272f (6.18-rc6): subq $8, %rsp + UNWIND_HINT_FUNC, and
                # movq %rsp, RSP(%rsp) after subq $(FRAME_SIZE), %rsp
                "x86_return_to_handler_orc",
                ReturnToHandler(
                    "return_to_handler_orc.S",
                    ("ax", "dx", "bp", "sp", "ip"),
                    "rax, rdx, rbp, and as sp the ftrace_regs' own address (20a0bc10272f): 8 + "
                    "FRAME_SIZE below the sp the function returned with; enough for perf's first_frame "
                    "unwind of the current stack",
                ),
            ),
            (
                # torvalds/linux 8bc11700e0d2 (7.0): movq %rsp, %rdi first, movq %rdi, RSP(%rsp)
                "x86_return_to_handler_entry_sp",
                ReturnToHandler(
                    "return_to_handler_orc_sp.S",
                    ("ax", "dx", "bp", "sp", "ip"),
                    "rax, rdx, rbp, and as sp the sp the function returned with (8bc11700e0d2): perf "
                    "and BPF unwind from these regs' ip, sp and bp, and $stack reads the caller's stack",
                ),
            ),
        ),
        retp="sp",
        fp_test=False,
    ),
    # A complete pt_regs without an exception: every register, flags from pushfq, fixed cs/ss.
    rethook=RethookArch(
        saved=tuple(r for r in PT_REGS.offsets if r != "orig_ax"),
        enter=rethook_enter,
        leave=rethook_leave,
        trampolines=(
            (
                None,
                ReturnTrampoline(
                    "rethook_trampoline.S",
                    "arch_rethook_trampoline",
                    "kretprobe return: the rethook trampoline's pt_regs",
                    callback="arch_rethook_trampoline_callback",
                    guest="rethook.S",
                ),
            ),
        ),
    ),
    kprobes=kprobes,
    # x86_64 has had direct calls since 5.5 (562955fe6a55): arch_ftrace_set_direct_caller() puts
    # the trampoline's address in regs->orig_ax, which ftrace_regs_caller jumps to
    direct_calls=DirectCalls(
        member="orig_ax",
        since=None,
        needs_call_ops=False,
        unsupported="",
        trampoline=bpf_trampoline,
    ),
    asm_constants={
        **{ASM_NAMES.get(k, k.upper()): v for k, v in PT_REGS.offsets.items()},
        **FTRACE_REGS.asm_constants("FREGS_"),
        "FRAME_SIZE": PT_REGS.size,
        "MCOUNT_INSN_SIZE": MCOUNT_INSN_SIZE,
        "KERNEL_CS": KERNEL_CS,
        "KERNEL_DS": KERNEL_DS,
        **BPF_PROG.asm_constants("BPF_PROG_"),
        **BPF_TRAMP_RUN_CTX.asm_constants("BPF_TRAMP_RUN_CTX_"),
        **BPF_TRAMP_IMAGE.asm_constants("BPF_TRAMP_IMAGE_"),
    },
    source_dir=Path(__file__).parent,
    exception_entry="asm_exc_int3",  # entry.S
    stack_align=8,
    stack_align_reason=(
        "the kernel's C code is built with -mpreferred-stack-boundary=3, arch/x86/Makefile: "
        "'the standard kernel entry on x86-64 leaves the stack on an 8-byte boundary'"
    ),
)
