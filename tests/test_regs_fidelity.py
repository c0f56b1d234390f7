"""Issue #10, register fidelity: ftrace_partial_regs() as the modelled release builds it, x86 IBT
kprobe placement (arch_adjust_kprobe_addr), and the per-instruction kprobe decisions."""

import pytest

from tracers import FtraceOps, Lab, OpsFlag
from tracers.core.kprobes import Kprobe
from tracers.core.regs import ftrace_partial_regs
from tracers.probe_events import ProbeSpecError, parse

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
