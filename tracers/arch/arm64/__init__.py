"""arm64's kernel arch code: struct pt_regs and ftrace_regs, patchable-function-entry sites
(arch/arm64/kernel/ftrace.c), the kretprobe trampolines, kprobes (kprobes.py), and the
trampolines (*.S)."""

import struct
from pathlib import Path

from emulator.arch.arm64 import CPU
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
    RethookArch,
    ReturnToHandler,
    ReturnTrampoline,
    SiteEncoding,
)
from . import bpf_trampoline, kprobes

X = [f"x{n}" for n in range(31)]

# struct pt_regs (arch/arm64/include/asm/ptrace.h): regs[31], sp, pc, pstate, then software state
# (orig_x0, syscallno, stackframe ...) the lab does not use. PT_REGS_SIZE 336.
PT_REGS = Layout("pt_regs", 336, {**{x: 8 * n for n, x in enumerate(X)}, "sp": 248, "pc": 256, "pstate": 264})
# pt_regs.stackframe, the struct frame_record_meta {fp, lr, type} (6.13+, asm/stacktrace/frame.h)
# that kernel_entry fills as the unwinder's exception boundary, and its type for an EL1 exception.
S_STACKFRAME, S_STACKFRAME_TYPE, FRAME_META_TYPE_PT_REGS = 296, 312, 2
# struct __arch_ftrace_regs (arch/arm64/include/asm/ftrace.h), FREGS_SIZE 112.
FTRACE_REGS = Layout(
    "ftrace_regs",
    112,
    {**{f"x{n}": 8 * n for n in range(9)}, "direct_tramp": 72, "fp": 80, "lr": 88, "sp": 96, "pc": 104},
)

AARCH64_INSN_SIZE = 4
PSR_MODE_EL1H = 0x5  # arch/arm64/include/uapi/asm/ptrace.h; user_mode(regs) is (pstate & 0xf) == EL0t (0)
NOP = 0xD503201F
MOV_X9_LR = 0xAA1E03E9  # what ftrace_init_nop writes before the BL slot
BTI_HINTS = {0xD503241F, 0xD503245F, 0xD503249F, 0xD50324DF}  # bti, bti c, bti j, bti jc
word = struct.Struct("<I")


def encode_call(ip: int, target: int) -> bytes:
    """`BL target` (aarch64_insn_gen_branch_imm); ±128 MiB, as the kernel's reachable_by_bl()."""
    rel = target - ip
    if rel % 4 or not -(1 << 27) <= rel < (1 << 27):
        raise ValueError(f"bl from {ip:#x} to {target:#x} is out of range")
    return word.pack(0x94000000 | ((rel >> 2) & 0x3FFFFFF))


def rethook_enter(regs):
    """kretprobe_trampoline_handler(regs, regs->regs[29]): the frame is the fp the hooked function
    returned with (arch_prepare_kretprobe stored ri->fp = regs->regs[29])."""
    return regs.frame_pointer()


def rethook_leave(regs, frame, ret, write):
    """Nothing to fix up: the return address goes back through regs->pc, which the handler set."""


def adjust_site(addr, read, is_function_start):
    """ftrace_call_adjust: the recorded address -> rec->ip, the NOP that becomes BL.

    -fpatchable-function-entry=2 records the first NOP (after a BTI, if any): ip = addr + 4.
    =4,2 (CALL_OPS) records the first of two NOPs *before* the function, an 8-byte ops literal.
    ftrace_caller finds it from lr by aligning down to 8 (entry-ftrace.S), which only works
    "starting from an 8-byte aligned base": the kernel builds CALL_OPS with FUNCTION_ALIGNMENT_8B.
    A =4,2 build without that alignment has no usable literal.
    """
    if not is_function_start(addr + 8):
        return addr + 4, None
    ip = addr + 8
    if word.unpack(read(ip, 4))[0] in BTI_HINTS:
        ip += 4
    return ip + 4, None if addr % 8 else addr


def init_site(ip, window, mcount):
    """ftrace_init_nop: NOP; NOP  ->  MOV X9, LR; NOP (x9 is a scratch register, so this is harmless)."""
    if window == word.pack(NOP) * 2:
        return word.pack(MOV_X9_LR) + word.pack(NOP)
    return None


def init_mcount_site(ip, window, mcount):
    """ftrace_init_nop for -pg (ftrace_make_nop(mod, rec, MCOUNT_ADDR), arch/arm64/kernel/ftrace.c of
    the !WITH_REGS builds): `BL _mcount` becomes a NOP; the MOV X0, X30 before it stays."""
    if window in (word.pack(NOP), encode_call(ip, mcount)):
        return word.pack(NOP)
    return None


def after_site(site, truth, u64):
    """fregs->pc is x30 after the site's BL: the instruction after the BL."""
    return site + AARCH64_INSN_SIZE


KERNEL = KernelArch(
    cpu=CPU,
    pt_regs=PT_REGS,
    ftrace_regs=FTRACE_REGS,
    ftrace_regs_saved=tuple(X[:9]) + ("fp", "lr", "sp", "pc"),
    ftrace_regs_aliases={"fp": "x29", "lr": "x30"},
    ftrace_regs_is_pt_regs=False,
    ftrace_regs_stack_args=False,  # ftrace_regs_get_argument: 0 past x7
    # ftrace_partial_regs() copies x0-x8, sp, pc, fp and lr into the caller's pt_regs
    # (arch/arm64/include/asm/ftrace.h); get_perf_callchain() skips the kernel stack when
    # user_mode(regs), so bpf_get_stackid() from kprobe.multi returned -EFAULT until pstate was set.
    partial_regs=(
        (None, PartialRegs((), "pstate left 0, EL0t: user_mode() is true, so bpf_get_stackid() gets -EFAULT")),
        (
            # torvalds/linux fd2f74f8f3d3 (arm64 for-next/core, 6.18)
            "arm64_partial_regs_el1h",
            PartialRegs(
                (RegFixup("pstate", 0, PSR_MODE_EL1H),),
                "pstate = PSR_MODE_EL1h (fd2f74f8f3d3): user_mode() is false, the kernel stack is unwound",
            ),
        ),
    ),
    regs_caller=None,
    no_regs_caller_reason=(
        "arm64 has no ftrace_regs_caller since 6.2 (DYNAMIC_FTRACE_WITH_ARGS): "
        "PSTATE cannot be saved without taking an exception, so ftrace_get_regs() "
        "is always NULL and there are no kprobes on ftrace"
    ),
    sites=SiteEncoding(
        name="patchable",
        tables=("__patchable_function_entries",),
        call_symbols=(),
        offset_from_reloc=0,
        size=AARCH64_INSN_SIZE,
        nop=word.pack(NOP),
        adjust=adjust_site,
        window=4,
        init=init_site,
        encode_call=encode_call,
        regs_caller=None,
        ops_caller="ftrace_caller_ops",
        call_ops_since="arm64_call_ops",
        calls=("ftrace_call",),
        meaning={"pc": after_site},
        where="MOV X9, LR; BL at the entry, before the prologue: every register is the caller's",
        # "x0-x8 and x18-x30 are live ..., and x9-x17 are safe to clobber" (entry-ftrace.S, since
        # 6.2); NZCV too, as across any call
        clobbers=tuple(f"x{n}" for n in range(9, 18)) + ("pstate",),
    ),
    legacy_sites=(
        SiteEncoding(
            name="mcount",
            after_prologue=True,
            tables=(),  # -pg records nothing: every R_AARCH64_CALL26 against _mcount is a site
            call_symbols=("_mcount",),
            offset_from_reloc=0,
            size=AARCH64_INSN_SIZE,
            nop=word.pack(NOP),
            adjust=lambda addr, read, is_function_start: (addr, None),
            window=0,  # gcc's MOV X0, X30 before it stays
            init=init_mcount_site,
            encode_call=encode_call,
            caller="ftrace_caller_mcount",
            regs_caller=None,
            calls=("ftrace_call_mcount",),
            saved=tuple(X[1:9]) + ("fp", "lr", "sp", "pc"),  # x0 is gone: gcc's MOV X0, X30
            meaning={
                "pc": after_site,
                # fp and lr at the function's entry, from the frame record the prologue built
                "fp": lambda site, truth, u64: u64(truth["x29"]),
                "lr": lambda site, truth, u64: u64(truth["x29"] + 8),
            },
            where=(
                "BL _mcount after the prologue's frame record (-pg): fp and lr are read from that "
                "record, sp is the site's; x0 is not saved: gcc's -pg puts MOV X0, X30 before the BL, over "
                "argument 1 (clang's does not)"
            ),
            # an ordinary call to the compiler: AAPCS64's caller-saved x0-x17, and lr (saved by the
            # prologue); x18 stays (the platform register: the shadow call stack)
            clobbers=tuple(f"x{n}" for n in range(18)) + ("x30", "pstate"),
        ),
    ),
    # return_to_handler (arch/arm64/kernel/entry-ftrace.S, 6.14+): x0-x7 and x29 only, in every
    # modelled release with fgraph on ftrace_regs (the 6.18 and 7.0 sp fixes were x86's);
    # pc: the real return address, set by fgraph
    fgraph=FgraphArch(
        return_to_handlers=(
            (
                None,
                ReturnToHandler(
                    "return_to_handler.S",
                    tuple(X[:8]) + ("fp", "pc"),
                    "x0-x7 and fp: no sp, so $stack at an fprobe exit reads a slot nothing wrote",
                ),
            ),
        ),
        retp="fp",
        fp_test=True,
    ),
    # arm64 kretprobes never ran on rethook: they return through __kretprobe_trampoline, which
    # stores every register; its pstate is only what MRS reads before 6.9, the exception's since.
    rethook=RethookArch(
        saved=tuple(PT_REGS.offsets),
        enter=rethook_enter,
        leave=rethook_leave,
        trampolines=(
            (
                None,
                ReturnTrampoline(
                    "kretprobe_trampoline_mrs.S",
                    "__kretprobe_trampoline",
                    "kretprobe return: __kretprobe_trampoline's pt_regs (PSTATE read with MRS)",
                    callback="trampoline_probe_handler",
                ),
            ),
            (
                "arm64_kretprobe_brk",
                ReturnTrampoline(
                    "kretprobe_trampoline.S",
                    "__kretprobe_trampoline",
                    "kretprobe return: BRK #7, the exception's pt_regs",
                    trap=True,
                ),
            ),
        ),
        no_rethook_reason=(
            "arm64 never had rethook (83acdce68949 was reverted as 0f8f8030038a in the 5.18 merge "
            "window), so it had no fprobe until fprobe moved onto fgraph in 6.14"
        ),
    ),
    kprobes=kprobes,
    # arm64 DYNAMIC_FTRACE_WITH_DIRECT_CALLS (2aa6ac03516d, 6.4) selects it only with
    # DYNAMIC_FTRACE_WITH_CALL_OPS (arch/arm64/Kconfig): before, bpf_arch_text_poke() refused
    # kernel text ("we rely on ftrace to poke kernel functions") and fentry on kernel functions
    # failed with -ENOTSUPP.
    direct_calls=DirectCalls(
        member="direct_tramp",
        since="arm64_direct_calls",
        needs_call_ops=True,
        unsupported=(
            "arm64 has ftrace direct calls (DYNAMIC_FTRACE_WITH_DIRECT_CALLS, 6.4) only with "
            "DYNAMIC_FTRACE_WITH_CALL_OPS sites (-fpatchable-function-entry=4,2, functions 8-byte "
            "aligned): no BPF trampoline can be attached to a kernel function without them (-ENOTSUPP)"
        ),
        trampoline=bpf_trampoline,
    ),
    asm_constants={
        **FTRACE_REGS.asm_constants("FREGS_"),
        **{f"S_{k.upper()}": v for k, v in PT_REGS.offsets.items()},
        "S_LR": PT_REGS.offsets["x30"],
        "S_FP": PT_REGS.offsets["x29"],
        "S_STACKFRAME": S_STACKFRAME,
        "S_STACKFRAME_TYPE": S_STACKFRAME_TYPE,
        "FRAME_META_TYPE_PT_REGS": FRAME_META_TYPE_PT_REGS,
        "PT_REGS_SIZE": PT_REGS.size,
        "AARCH64_INSN_SIZE": AARCH64_INSN_SIZE,
        **BPF_PROG.asm_constants("BPF_PROG_"),
        **BPF_TRAMP_RUN_CTX.asm_constants("BPF_TRAMP_RUN_CTX_"),
        **BPF_TRAMP_IMAGE.asm_constants("BPF_TRAMP_IMAGE_"),
    },
    source_dir=Path(__file__).parent,
    exception_entry="vectors",  # entry.S
    stack_align=16,
    stack_align_reason=(
        "AAPCS64; the kernel sets SCTLR_EL1.SA (INIT_SCTLR_EL1_MMU_ON, arch/arm64/include/asm/sysreg.h), "
        "so a load or store through a misaligned sp faults"
    ),
)
