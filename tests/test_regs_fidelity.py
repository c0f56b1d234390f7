"""Issue #10, register fidelity: ftrace_partial_regs() as the modelled release builds it, x86 IBT
kprobe placement (arch_adjust_kprobe_addr), and the per-instruction kprobe decisions."""

import struct

import pytest
from unicorn.arm64_const import UC_ARM64_REG_X29

from emulator.asm import decode
from fixtures import catalog
from tracers import FtraceOps, Lab, OpsFlag
from tracers.core.kprobes import Kprobe
from tracers.core.regs import ftrace_partial_regs
from tracers.kernel_version import MODELLED, KernelVersion
from tracers.probe_events import ProbeSpecError, parse

# The pt_regs member that tells kernel from user mode (user_mode(regs)): x86 cs, arm64 pstate.
MODE_MEMBER = {"x86_64": "cs", "arm64": "pstate"}
PSR_MODE_EL1H, KERNEL_CS, X86_EFLAGS_FIXED = 0x5, 0x10, 0x2  # asm/ptrace.h, asm/segment.h, processor-flags.h


def _partial_regs(lab):
    """sum10's ftrace_partial_regs() as lab's release builds it: every pt_regs member's word, the
    members it lacks, and the flags word ftrace_caller left before the fix-ups."""
    got = []

    def handler(ip, parent, op, fregs):
        flags = lab.karch.ftrace_regs.offsets.get("flags")
        before = 0 if flags is None else fregs.words[flags // 8]
        regs = ftrace_partial_regs(fregs, lab.machine.percpu + 0x1000, lab.kernel)
        got.append(({m: regs.words[off // 8] for m, off in lab.karch.pt_regs.offsets.items()}, regs.missing, before))

    ops = FtraceOps(handler, OpsFlag.NONE)
    lab.ftrace.set_filter(ops, "sum10")
    lab.ftrace.register(ops)
    lab.call("sum10", *range(1, 11))
    lab.ftrace.unregister(ops)
    return got[0]


@pytest.mark.parametrize("arch_name", ["x86_64", "arm64"])
def test_partial_regs_mode_member_is_left_zero_before_6_18(arch_name):
    """6.17 fills no mode member: arm64 ftrace_partial_regs() leaves pstate 0, EL0t, so
    user_mode(regs) is true and bpf_get_stackid() from kprobe.multi returned -EFAULT (the report in
    torvalds/linux fd2f74f8f3d3); x86's returns &fregs->regs with cs = 0 as ftrace_caller left it
    (arch/x86/kernel/ftrace_64.S), which x86_64's user_mode() (cs & 3) reads as kernel mode."""
    lab = Lab.open(catalog.DEFAULT, arch_name, kernel=KernelVersion(6, 17))
    words, missing, _ = _partial_regs(lab)
    member = MODE_MEMBER[arch_name]
    assert words[member] == 0 and member in missing
    if arch_name == "x86_64":
        assert "flags" in missing


def test_arm64_partial_regs_pstate_is_psr_mode_el1h_from_6_18():
    """torvalds/linux fd2f74f8f3d3 ("tracing: Fix the bug where bpf_get_stackid returns -EFAULT on
    the ARM64", arm64 for-next/core for 6.18) adds regs->pstate = PSR_MODE_EL1h to arm64's
    ftrace_partial_regs(): the mode only, none of NZCV, DAIF or PAN, so it differs from the true
    PSTATE in those bits and is shown (not listed as missing)."""
    for kernel in (KernelVersion(6, 18), MODELLED):
        lab = Lab.open(catalog.DEFAULT, "arm64", kernel=kernel)
        words, missing, _ = _partial_regs(lab)
        assert words["pstate"] == PSR_MODE_EL1H and "pstate" not in missing


@pytest.mark.parametrize(
    "kernel, fixed",
    [(KernelVersion(6, 18), False), (KernelVersion(6, 19), False), (KernelVersion(7, 0), True)],
    ids=str,
)
def test_x86_arch_ftrace_partial_regs_sets_kernel_cs_and_the_fixed_flag_by_release(kernel, fixed):
    """x86 arch_ftrace_partial_regs() (torvalds/linux 20a0bc10272f, 6.18-rc6) writes, in
    &fregs->regs itself, cs = __KERNEL_CS and flags &= ~X86_EFLAGS_FIXED; aea251799998 (7.0)
    makes it flags |= X86_EFLAGS_FIXED, so perf_hw_regs() unwinds from these regs. Every other bit
    of flags is whatever ftrace_caller's frame held: it never writes that slot."""
    lab = Lab.open(catalog.DEFAULT, "x86_64", kernel=kernel)
    words, missing, before = _partial_regs(lab)
    assert words["cs"] == KERNEL_CS and "cs" not in missing and "flags" not in missing
    want = before | X86_EFLAGS_FIXED if fixed else before & ~X86_EFLAGS_FIXED
    assert words["flags"] == want


# -- x86 IBT: arch_adjust_kprobe_addr() ------------------------------------------------------------

# Where `p SYM` probes, per variant with a landing pad: x86 moves it past ENDBR to the fentry site
# (arch/x86/kernel/kprobes/core.c arch_adjust_kprobe_addr); arm64 keeps kernel/kprobes.c's __weak
# default, so a probe on a BTI function stays on its `bti c`.
ENTRY_PROBE = {("x86_64", "funcs-endbr"): 4, ("arm64", "funcs-bti"): 0}


@pytest.mark.parametrize("arch_name,variant", list(ENTRY_PROBE))
def test_a_probe_at_sym_goes_where_arch_adjust_kprobe_addr_puts_it(arch_name, variant):
    lab = Lab.open(variant, arch_name)
    sym = lab.machine.symbols.get("sum10")
    before = lab.machine.read(sym.addr, 4)
    p = Kprobe("sum10", 0, lambda p, regs: 0)
    lab.kprobes.register(p)
    assert p.addr - sym.addr == ENTRY_PROBE[arch_name, variant]
    assert lab.call("sum10", *range(1, 11)) == sum(k * k for k in range(1, 11)) and p.nhit == 1
    if ENTRY_PROBE[arch_name, variant]:  # the ENDBR is left alone: the probe is on the ftrace site
        assert lab.machine.read(sym.addr, 4) == before and p.addr == lab.ftrace.site("sum10").ip


@pytest.mark.parametrize("arch_name,variant", list(ENTRY_PROBE))
def test_kprobe_on_func_entry_takes_sym_plus_4_after_endbr(arch_name, variant):
    """_kprobe_addr()'s on_func_entry: +4 is the entry only after an ENDBR; +8 never is."""
    lab = Lab.open(variant, arch_name)
    on_entry = lab.kprobes.kprobe_on_func_entry
    assert on_entry("sum10", 0) and not on_entry("sum10", 8) and on_entry("nope", 0) is None
    assert on_entry("sum10", 4) == bool(ENTRY_PROBE[arch_name, variant])


def test_r_sym_plus_4_after_endbr_is_a_kretprobe_and_p_sym_plus_4_has_args():
    """trace_kprobe.c asks kprobe_on_func_entry(): `r SYM+4` after an ENDBR is not BAD_RETPROBE,
    and `p SYM+4` gets TPARG_FL_FENTRY ($argN); SYM+8 is neither."""
    lab = Lab.open("funcs-endbr", "x86_64")
    regs, on_entry = list(lab.karch.pt_regs.offsets), lab.kprobes.kprobe_on_func_entry
    assert parse("r sum10+4 $retval", regs, on_entry).is_return
    assert parse("p sum10+4 $arg1", regs, on_entry).offset == 4
    with pytest.raises(ProbeSpecError, match="Retprobe address must be an function entry"):
        parse("r sum10+8", regs, on_entry)
    with pytest.raises(ProbeSpecError):
        parse("p sum10+8 $arg1", regs, on_entry)


# -- which instructions kprobes take, and how ------------------------------------------------------

A64 = "<I"
# (encoding by hand from the Arm ARM / Intel SDM, what the kernel does): arm64 after
# arch/arm64/kernel/probes/decode-insn.c (arm_kprobe_decode_insn, aarch64_insn_is_steppable and
# aarch64_insn_is_steppable_hint in asm/insn.h); x86 after arch/x86/kernel/kprobes/core.c
# (prepare_emulation, __copy_instruction).
DECISIONS = {
    "arm64": [
        (0xD50323BF, "autiasp", "rejected"),  # a HINT off the steppable list
        (0xD503233F, "paciasp", "xol"),
        (0xD503245F, "bti c", "xol"),
        (0xD503201F, "nop", "simulate"),  # simulate_nop
        (0xD503207F, "wfi", "rejected"),
        (0xD5033FDF, "isb", "xol"),
        (0xD53B4220, "mrs x0, daif", "rejected"),  # DAIF is masked while stepping
        (0xD538D080, "mrs x0, tpidr_el1", "xol"),
        (0xD51B4220, "msr daif, x0", "rejected"),
        (0xC85F7C20, "ldxr x0, [x1]", "rejected"),
        (0xC8DFFC20, "ldar x0, [x1]", "xol"),  # not in the exclusive class
        (0xD65F0BFF, "retaa", "rejected"),  # a branch, and not one simulate-insn.c knows
        (0xD65F03C0, "ret", "simulate"),
        (0x58000040, "ldr x0, #8", "simulate"),
        (0xD8000040, "prfm pldl1keep, #8", "rejected"),
    ],
    "x86_64": [
        (bytes.fromhex("ff1500000000"), "call qword ptr [rip]", "through memory"),
        (bytes.fromhex("ff20"), "jmp qword ptr [rax]", "through memory"),
        (bytes.fromhex("67ffd0"), "call eax (addr32)", "through memory"),
        (bytes.fromhex("ffd0"), "call rax", "simulate"),
        (bytes.fromhex("ffe0"), "jmp rax", "simulate"),
        (bytes.fromhex("ff1c24"), "lcall [rsp]", "not supported"),
        (bytes.fromhex("fa"), "cli", "simulate"),  # kprobe_emulate_ifmodifiers
        (bytes.fromhex("9c"), "pushfq", "simulate"),
        (bytes.fromhex("cc"), "int3", "not supported"),
        (bytes.fromhex("48cf"), "iretq", "not supported"),
        (bytes.fromhex("0f01c1"), "vmcall", "VM extension"),
        (bytes.fromhex("8ed0"), "mov ss, ax", "masks the debug exception"),
        (bytes.fromhex("e2fe"), "loop", "simulate"),  # kprobe_emulate_loop: never out of line
        (bytes.fromhex("e1fe"), "loope", "simulate"),
        (bytes.fromhex("f4"), "hlt", "xol"),
        (bytes.fromhex("0f0b"), "ud2", "xol"),
    ],
}


@pytest.mark.parametrize(
    "arch_name,code,text,expect",
    [pytest.param(a, c, t, e, id=f"{a}-{t}") for a, rows in DECISIONS.items() for c, t, e in rows],
)
def test_kprobe_decode_decides_as_the_kernel(arch_name, code, text, expect):
    karch = Lab.open("funcs", arch_name).karch
    raw = code if isinstance(code, bytes) else struct.pack(A64, code)
    how = karch.kprobes.decode(decode(karch.cpu, raw + bytes(16), 0x1000))
    assert how == expect if expect in ("xol", "simulate") else expect in how, (text, how)


def test_x86_int3_entry_leaves_the_kernels_48_byte_gap():
    """The CPU only aligns rsp and pushes its 5-word frame; idtentry X86_TRAP_BP (arch/x86/entry/
    entry_64.S) copies frame and orig_ax 6 words down, so pt_regs ends 48 bytes under the aligned
    interrupted stack, room for int3_emulate_push()."""
    lab = Lab.open("funcs", "x86_64")
    got = []
    sym = lab.machine.symbols.get("sum10")
    p = Kprobe("sum10", lab.ftrace.site("sum10").ip + 5 - sym.addr, lambda p, regs: got.append(regs) or 0)
    lab.kprobes.register(p)
    lab.call("sum10", *range(1, 11))
    regs = got[0]
    assert (regs.kernel_stack_pointer() & ~0xF) - (regs.addr + lab.karch.pt_regs.size) == 48


def test_arm64_exception_entry_writes_the_metadata_frame_record():
    """kernel_entry (arch/arm64/kernel/entry.S, 6.13+): pt_regs.stackframe = {fp 0, lr 0,
    FRAME_META_TYPE_PT_REGS (2)} at offset 296, and x29 points at it while the handler runs."""
    lab = Lab.open("funcs", "arm64")
    got = []

    def pre(p, regs):
        got.append((lab.machine.read(regs.addr + 296, 24), lab.machine.uc.reg_read(UC_ARM64_REG_X29) - regs.addr))
        return 0

    sym = lab.machine.symbols.get("sum10")
    lab.kprobes.register(Kprobe("sum10", lab.ftrace.site("sum10").ip + 4 - sym.addr, pre))
    lab.call("sum10", *range(1, 11))
    assert got == [(struct.pack("<3Q", 0, 0, 2), 296)]


class _Regs:
    """Just what simulate() touches of a pt_regs."""

    def __init__(self, **fields):
        self.fields = fields

    def reg(self, name):
        return self.fields[name]

    def set_reg(self, name, value):
        self.fields[name] = value

    def kernel_stack_pointer(self):
        return self.fields["sp"]

    def instruction_pointer_set(self, value):
        self.fields["ip"] = value


ZF = 1 << 6


@pytest.mark.parametrize(
    "code, cx, flags, want_cx, taken",
    [
        ("e2f0", 3, 0, 2, True),  # loop: rcx-1 != 0
        ("e2f0", 1, 0, 0, False),
        ("e2f0", 0, 0, (1 << 64) - 1, True),  # wraps
        ("67e2f0", (5 << 32) | 1, 0, 5 << 32, False),  # loop with ecx: the kernel's u32 store
        ("e1f0", 3, ZF, 2, True),  # loope: and ZF
        ("e1f0", 3, 0, 2, False),
        ("e0f0", 3, ZF, 2, False),  # loopne: and not ZF
        ("e0f0", 3, 0, 2, True),
    ],
)
def test_x86_kprobe_emulates_loop_as_kprobe_emulate_loop(code, cx, flags, want_cx, taken):
    """arch/x86/kernel/kprobes/core.c kprobe_emulate_loop: decrement (e|r)cx, branch while it is
    non-zero (and ZF for loope, !ZF for loopne); a loop run out of line would branch off the slot."""
    karch = Lab.open("funcs", "x86_64").karch
    raw = bytes.fromhex(code)
    insn = decode(karch.cpu, raw + bytes(16), 0x1000)
    regs = _Regs(cx=cx, flags=flags, sp=0x8000, ip=0x1000)
    karch.kprobes.simulate(insn, regs, machine=None)
    target = 0x1000 + len(raw) - 0x10
    assert (regs.fields["cx"], regs.fields["ip"]) == (want_cx, target if taken else 0x1000 + len(raw))
