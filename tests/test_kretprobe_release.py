"""kretprobes' return by kernel release (issue #10), and fprobe's rethook design only where it existed.

arm64 kretprobes never ran on rethook. Since 6.9 (commit 253751233b19) __kretprobe_trampoline is
`brk #KRETPROBES_BRK_IMM` (arch/arm64/kernel/probes/kprobes_trampoline.S): the exception's
pt_regs, PSTATE from SPSR_EL1. In 5.x-6.8 the same file built PSTATE by ORing what MRS reads
(NZCV, DAIF, CurrentEL, SPSel) and lost PAN. x86's kretprobes return through the rethook
trampoline (pushfq) in every modelled release. fprobe before 6.14 ran on rethook, which arm64
never had (83acdce68949, reverted as 0f8f8030038a), so arm64 had no fprobe before 6.14.
"""

import struct

import pytest

from emulator import FtlabError
from emulator.asm import decode
from fixtures import catalog
from helpers import ftlab
from tracers import Fprobe, Kretprobe, Lab
from tracers.call_syntax import parse_calls
from tracers.cli.main import main
from tracers.cli.mechanisms import capture
from tracers.kernel_version import CHANGES, MODELLED, KernelVersion

TARGET = "chain_c"
ARG = 0x1234567
# The ARM ARM's BRK encoding: 0xd4200000 | imm16 << 5; KRETPROBES_BRK_IMM is 0x007
# (arch/arm64/include/asm/brk-imm.h).
BRK_7 = 0xD4200000 | 0x007 << 5
PAN = 1 << 22  # PSTATE.PAN, as SPSR_EL1 holds it
MRS_VISIBLE = 0xF0000000 | 0x3C0 | 0xC | 0x1  # NZCV | DAIF | CurrentEL | SPSel: what MRS ORs in
BEFORE_BRK = KernelVersion(6, 8)


def _lab(arch, kernel=MODELLED):
    return Lab.open(catalog.DEFAULT, arch, kernel=kernel)


def _return_regs(lab):
    """One kretprobe return on TARGET, with verify on: (the handler's pt_regs fields, its checks,
    what the call returned, the real return address the handler saw in pc)."""
    seen = []
    with lab.verify.holding(lab.rethook):
        lab.kretprobes().register(
            Kretprobe(TARGET, lambda ri, regs: seen.append((dict(regs.fields), regs.verify(), ri.ret_addr)))
        )
        result = lab.call(TARGET, ARG)
    [(fields, verification, ret_addr)] = seen
    return fields, verification, ret_addr, result


def test_the_release_of_arm64s_brk_7_is_a_change():
    assert CHANGES["arm64_kretprobe_brk"][0] == KernelVersion(6, 9)
    assert MODELLED.has("arm64_kretprobe_brk") and not BEFORE_BRK.has("arm64_kretprobe_brk")


def test_arm64_kretprobe_trampoline_is_brk_7_since_6_9():
    for kernel in (KernelVersion(6, 9), MODELLED):
        lab = _lab("arm64", kernel)
        [word] = struct.unpack("<I", lab.machine.read(lab.rethook.trampoline, 4))
        assert word == BRK_7
        assert decode(lab.arch, lab.machine.read(lab.rethook.trampoline, 4), 0).mnemonic == "brk"
        assert lab.machine.symbols.lookup(lab.rethook.trampoline)[0].name == "__kretprobe_trampoline"


def test_arm64_kretprobe_before_6_9_is_the_software_trampoline():
    lab = _lab("arm64", BEFORE_BRK)
    code = lab.machine.read(lab.rethook.trampoline, 4 * 16)
    words = struct.unpack("<16I", code)
    assert BRK_7 not in words
    assert lab.machine.symbols.lookup(lab.rethook.trampoline)[0].name == "__kretprobe_trampoline"


def test_arm64_kretprobe_pt_regs_is_the_exception_s_since_6_9():
    """BRK #7: the exception's pt_regs, PSTATE (PAN included) as the hardware saved it."""
    lab = _lab("arm64")
    fields, v, ret_addr, result = _return_regs(lab)
    assert result == catalog.FUNCTIONS[TARGET].reference(ARG)
    assert v.mismatch == []
    [pstate] = [c for c in v.checks if c.field == "pstate"]
    assert pstate.truth & PAN and fields["pstate"] == pstate.truth  # the kernel runs with PAN set
    assert fields["pc"] == ret_addr  # kretprobe_trampoline_handler set the real return address
    assert len(v.checks) == 34  # x0-x30, sp, pc, pstate


def test_arm64_kretprobe_pt_regs_loses_pan_before_6_9():
    """kprobes_trampoline.S before 6.9: PSTATE is what MRS reads, so PAN is lost."""
    lab = _lab("arm64", BEFORE_BRK)
    fields, v, ret_addr, result = _return_regs(lab)
    assert result == catalog.FUNCTIONS[TARGET].reference(ARG)
    assert v.mismatch == ["pstate"]
    [pstate] = [c for c in v.checks if c.field == "pstate"]
    assert fields["pstate"] == pstate.truth & MRS_VISIBLE  # every other bit is gone
    assert v.lost_bits(pstate) == ["PAN"]
    assert fields["pc"] == ret_addr


@pytest.mark.parametrize("kernel", [KernelVersion(5, 18), BEFORE_BRK, MODELLED], ids=str)
def test_x86_kretprobe_is_the_rethook_trampoline_in_every_release(kernel):
    lab = _lab("x86_64", kernel)
    assert lab.machine.symbols.lookup(lab.rethook.trampoline)[0].name == "arch_rethook_trampoline"
    _, v, _, result = _return_regs(lab)
    assert v.mismatch == [] and len(v.checks) == 20
    assert result == catalog.FUNCTIONS[TARGET].reference(ARG)


@pytest.mark.parametrize("kernel", [BEFORE_BRK, MODELLED], ids=str)
def test_nested_kretprobes_return_through_either_trampoline(arch, kernel):
    """fib recursion: every frame's return hooked, each handler sees its own return value, the call
    still returns the right answer, and the per-task list is empty afterwards."""
    lab = _lab(arch, kernel)
    rets = []
    lab.kretprobes().register(Kretprobe("fib", lambda ri, regs: rets.append(regs.regs_return_value())))
    assert lab.call("fib", 5) == 5
    fib = catalog.FUNCTIONS["fib"].reference
    assert sorted(rets) == sorted(fib(n) for n in _fib_calls(5))
    assert lab.rethook.task == []


def _fib_calls(n):
    return [n] + (_fib_calls(n - 1) + _fib_calls(n - 2) if n > 1 else [])


def test_regs_shows_the_release_s_kretprobe_pstate():
    exact = capture(_lab("arm64"), "rethook", "fib", parse_calls("fib(3)"))
    assert exact.title == "kretprobe return: BRK #7, the exception's pt_regs" and exact.mismatch == []
    lost = capture(_lab("arm64", BEFORE_BRK), "rethook", "fib", parse_calls("fib(3)"))
    assert "__kretprobe_trampoline" in lost.title and lost.mismatch == ["pstate"]


def test_regs_cli_by_release(capsys):
    out = ftlab(capsys, "regs", "--arch", "arm64", "funcs", "fib(3)", "--at", "fib", "--kernel", "6.8")
    section = out.split("== kretprobe return: ")[1]
    assert "differ: PAN" in section.split("\n== ")[0]
    out = ftlab(capsys, "regs", "--arch", "arm64", "funcs", "fib(3)", "--at", "fib")
    section = out.split("== kretprobe return: ")[1]
    assert section.startswith("BRK #7") and "DIFFERENT" not in section.split("\n== ")[0]


# -- fprobe's rethook design: x86 only ----------------------------------------------------------


def test_arm64_refuses_the_rethook_fprobe_design():
    with pytest.raises(FtlabError, match=r"^fprobe: no rethook design on arm64: arm64 never had rethook"):
        _lab("arm64").fprobes("rethook")


@pytest.mark.parametrize("kernel", [KernelVersion(5, 18), KernelVersion(6, 13)], ids=str)
def test_arm64_before_6_14_has_no_fprobe(kernel):
    fprobes = _lab("arm64", kernel).fprobes()  # a registry on the release's design ...
    with pytest.raises(FtlabError, match=rf"^fprobe: Linux {kernel} has no fprobe on arm64: .*fgraph in 6.14$"):
        fprobes.register_syms(Fprobe(lambda *a: 0), [TARGET])  # ... that refuses every fprobe
    assert _lab("arm64", KernelVersion(6, 14)).fprobes().design == "fgraph"


@pytest.mark.parametrize("kernel", [KernelVersion(6, 13), MODELLED], ids=str)
def test_x86_keeps_the_rethook_fprobe_design(kernel):
    """x86 had rethook: the design of 6.13 by default, and on request in 6.17."""
    lab = _lab("x86_64", kernel)
    fprobes = lab.fprobes() if kernel < MODELLED else lab.fprobes("rethook")
    assert fprobes.design == "rethook"
    exits = []
    fprobes.register_syms(Fprobe(None, lambda fp, ip, ret_ip, regs, data: exits.append(regs.kind)), [TARGET])
    lab.call(TARGET, ARG)
    assert exits == ["pt_regs"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--fprobe-design", "rethook"], "fprobe: no rethook design on arm64: "),
        (["--kernel", "6.13"], "fprobe: Linux 6.13 has no fprobe on arm64: "),
    ],
)
def test_cli_refuses_arm64_fprobes_that_never_existed(capsys, extra, message):
    code = main(["trace", "--arch", "arm64", "funcs", "fib(3)", "-e", "f:fibin fib n=$arg1:s64", *extra])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith(f"ftlab: error: {message}") and err.count("\n") == 1


def test_cli_arm64_kretprobe_events_before_6_14_still_work(capsys):
    event = "r:fibret fib ret=$retval:s64"
    out = ftlab(capsys, "trace", "--arch", "arm64", "funcs", "fib(3)", "-e", event, "--kernel", "6.8", "--verify")
    assert "# kprobes/fibret: hits 5 nmissed 0" in out
    assert "# verify: 0 of 5 snapshots" in out  # every one lost PAN
