"""pt_regs without an exception (x86 ftrace_regs_caller), and its absence on arm64; partial regs;
kprobes on ftrace sites; the trace_selftest regs test."""

import pytest

from emulator import FtlabError
from tracers import FtraceOps, OpsFlag
from tracers.core.kprobes import Kprobe
from tracers.core.regs import ftrace_partial_regs
from tracers.kernel_version import MODELLED, KernelVersion


def _grab(lab, flags, func="sum10", args=tuple(range(1, 11))):
    got = []
    ops = FtraceOps(lambda ip, parent, op, fregs: got.append((fregs, fregs.ftrace_get_regs(), fregs.verify())), flags)
    lab.ftrace.set_filter(ops, func)
    lab.verify.acquire(lab.ftrace)
    lab.ftrace.register(ops)
    assert lab.call(func, *args) == sum(k * a for k, a in enumerate(args, 1))
    lab.ftrace.unregister(ops)
    return got[0]


def test_save_regs_as_trace_selftest(lab):
    """trace_selftest's regs test: SAVE_REGS gives a pt_regs where the arch has ftrace_regs_caller,
    else registration fails, and SAVE_REGS_IF_SUPPORTED registers with ftrace_get_regs() NULL."""
    if lab.karch.regs_caller is None:
        with pytest.raises(FtlabError, match=r"arm64 has no ftrace_regs_caller since 6\.2 .* PSTATE cannot be saved"):
            lab.ftrace.register(FtraceOps(lambda *a: None, OpsFlag.SAVE_REGS))
        fregs, regs, _ = _grab(lab, OpsFlag.SAVE_REGS_IF_SUPPORTED)
        assert regs is None and fregs.kind == "ftrace_regs"
    else:
        fregs, regs, _ = _grab(lab, OpsFlag.SAVE_REGS)
        assert regs is not None and regs.kind == "pt_regs"
    fregs, regs, _ = _grab(lab, OpsFlag.NONE)
    assert regs is None  # plain ftrace_caller: never a pt_regs


def test_ftrace_regs_caller_pt_regs_equal_the_truth():
    """x86 only: arm64 has no ftrace_regs_caller (test_save_regs_as_trace_selftest checks the refusal)."""
    from tracers import Lab

    lab = Lab.open("funcs", "x86_64")
    _, regs, verification = _grab(lab, OpsFlag.SAVE_REGS)
    assert verification.mismatch == []
    assert sorted(c.field for c in verification.checks) == sorted(lab.arch.regs)  # every register
    assert regs.missing == ["orig_ax"]
    assert regs.fields["cs"] == 0x10 and regs.fields["ss"] == 0x18


def test_partial_regs_list_what_they_cannot_know(lab):
    """As 6.17 builds them: nothing beyond the copied ftrace_regs (test_regs_fidelity.py has the
    mode members later releases write)."""
    fregs, _, _ = _grab(lab, OpsFlag.NONE)
    partial = ftrace_partial_regs(fregs, lab.machine.percpu + 0x1000, KernelVersion(6, 17))
    assert partial.kind == "pt_regs" and partial.verify().mismatch == []
    if lab.arch.name == "x86_64":  # the same memory; what ftrace_caller did not save is missing
        assert partial.missing == ["r15", "r14", "r13", "r12", "bx", "r11", "r10", "orig_ax", "cs", "flags", "ss"]
        assert partial.addr == fregs.addr
    else:  # copied; pstate is not filled, fp/lr become x29/x30
        assert partial.missing == [f"x{n}" for n in range(9, 29)] + ["pstate"]
        assert partial.fields["x29"] == fregs.get_frame_pointer()
        assert partial.fields["x30"] == fregs.get_return_address()
        assert partial.regs_get_kernel_argument(0) == 1


def test_partial_regs_of_the_modelled_release_show_what_they_write(lab):
    """7.0 writes cs = __KERNEL_CS (true) and flags (only X86_EFLAGS_FIXED is meant) on x86, and
    pstate = PSR_MODE_EL1h (the mode only) on arm64: shown, and wrong where they are partial."""
    fregs, _, _ = _grab(lab, OpsFlag.NONE)
    partial = ftrace_partial_regs(fregs, lab.machine.percpu + 0x1000, MODELLED)
    written = {"x86_64": ["cs", "flags"], "arm64": ["pstate"]}[lab.arch.name]
    assert not set(written) & set(partial.missing)
    wrong = {"x86_64": ["flags"], "arm64": ["pstate"]}[lab.arch.name]  # cs is the true selector
    assert partial.verify().mismatch == wrong


def test_kprobe_on_an_ftrace_site(lab):
    site = lab.ftrace.site("fib")
    off = site.ip - lab.machine.address_of("fib")
    if lab.ftrace.regs_caller is None:
        with pytest.raises(FtlabError, match=r"fib\+0x4 is an ftrace site, which needs KPROBES_ON_FTRACE"):
            lab.kprobes.register(Kprobe("fib", off))
        return
    seen = []
    lab.verify.acquire(lab.kprobes)
    p = Kprobe(
        "fib",
        off,
        lambda p, regs: seen.append((regs.instruction_pointer(), regs.verify().mismatch)) and 0,
        lambda p, regs, f: seen.append(regs.instruction_pointer()),
    )
    lab.kprobes.register(p)
    assert site.target == lab.ftrace.regs_caller
    assert lab.call("fib", 5) == 5
    assert seen[:2] == [(site.ip + 1, []), site.ip + 5]  # as if an int3, then as if the NOP ran
    assert p.nhit == 15
    lab.kprobes.unregister(p)
    assert not site.on
