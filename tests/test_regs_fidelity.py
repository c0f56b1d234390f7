"""Issue #10, register fidelity: ftrace_partial_regs() as the modelled release builds it, x86 IBT
kprobe placement (arch_adjust_kprobe_addr), and the per-instruction kprobe decisions."""

from tracers import FtraceOps, OpsFlag
from tracers.core.regs import ftrace_partial_regs

# The pt_regs member that tells kernel from user mode (user_mode(regs)): x86 cs, arm64 pstate.
MODE_MEMBER = {"x86_64": "cs", "arm64": "pstate"}


def _partial_regs(lab):
    """sum10's ftrace_partial_regs(): every pt_regs member's word, and the members it lacks."""
    got = []

    def handler(ip, parent, op, fregs):
        regs = ftrace_partial_regs(fregs, lab.machine.percpu + 0x1000)
        got.append(({m: regs.words[off // 8] for m, off in lab.karch.pt_regs.offsets.items()}, regs.missing))

    ops = FtraceOps(handler, OpsFlag.NONE)
    lab.ftrace.set_filter(ops, "sum10")
    lab.ftrace.register(ops)
    lab.call("sum10", *range(1, 11))
    lab.ftrace.unregister(ops)
    return got[0]


def test_partial_regs_mode_member_is_left_zero_as_6_17_leaves_it(lab):
    """6.17 fills no mode member: arm64 ftrace_partial_regs() leaves pstate 0 (it is set to
    PSR_MODE_EL1h from 6.18, torvalds/linux fd2f74f8f3d3, "tracing: Fix the bug where
    bpf_get_stackid returns -EFAULT on the ARM64"), and x86's returns &fregs->regs with cs = 0 as
    ftrace_caller left it (arch_ftrace_partial_regs(), which sets cs = __KERNEL_CS and touches
    X86_EFLAGS_FIXED, came after 6.17). So user_mode(regs) is true for a BPF program there."""
    words, missing = _partial_regs(lab)
    member = MODE_MEMBER[lab.arch.name]
    assert words[member] == 0 and member in missing
