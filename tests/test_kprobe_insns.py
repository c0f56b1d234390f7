"""kprobes on every instruction of the hand-written fixtures/asm/<arch>/insns.S: the instructions
compilers rarely emit (indirect calls and jumps, loop, jrcxz, ret imm16, rip-relative loads;
cbz/tbz, adr/adrp, literal loads, br/blr, ret xN), which kprobes must emulate, simulate or step
exactly, or refuse as the kernel does."""

from collections import Counter

import pytest

from emulator import FtlabError, Machine
from emulator import arch as arches
from emulator.asm import disassemble
from fixtures import bundled
from fixtures.asm.insns import FUNCTIONS
from tracers import Lab
from tracers.core.kprobes import Kprobe

# What the kernel will not probe, with the reason it gives:
# - x86: an indirect call or jump through memory (prepare_emulation(), arch/x86/kernel/kprobes/core.c:
#   "if (X86_MODRM_MOD(opcode) != 3) return -EOPNOTSUPP; /* TODO: support memory addressing */");
# - arm64: PRFM (literal): aarch64_insn_uses_literal() makes it not steppable, and
#   arm_probe_decode_insn() (arch/arm64/kernel/probes/decode-insn.c) simulates only the
#   LDR/LDRSW literals: INSN_REJECTED.
REFUSED = {("x86_64", "call qword ptr"): "goes through memory", ("arm64", "prfm"): "rejected on arm64"}
CALLS = [(name, args) for name, (_, examples) in FUNCTIONS.items() for args in examples]


def refusal(arch: str, text: str) -> str | None:
    return next((why for (a, start), why in REFUSED.items() if a == arch and text.startswith(start)), None)


def bare_run(arch):
    """The untraced results and how often each instruction ran (by offset in the object), on a
    machine with no tracing code at all: a per-instruction code hook, the slow obvious count."""
    m = Machine(arch)
    obj = m.load(bundled(arch.name, "insns"))
    counts = Counter()
    m.hook_code(lambda addr: counts.update([addr - obj.base]), obj.base, obj.base + obj.size - 1)
    results = {(name, args): m.call(name, *args) for name, args in calls(m)}
    return results, counts


def calls(machine):
    """The reference's example calls of the functions this arch's file defines."""
    defined = {s.name for s in machine.objects[0].functions}
    return [(name, args) for name, args in CALLS if name in defined]


@pytest.mark.slow
def test_a_probe_on_every_instruction_behaves_as_the_truth(arch):
    results, runs = bare_run(arches.get(arch))
    for (name, args), value in results.items():
        assert value == FUNCTIONS[name][0](*args), (name, args)
    lab = Lab.open("insns", arch)
    m = lab.machine
    [(start, size)] = lab.obj.sections[".text"]
    text = m.read(start, size)
    lab.verify.acquire(lab.kprobes)
    probed, refused = 0, set()
    for fn in lab.obj.functions:
        for addr, _, insn in disassemble(m.arch, m.read(fn.addr, fn.size), fn.addr):
            if addr in lab.ftrace.by_ip:
                continue  # the ftrace site: KPROBES_ON_FTRACE, tested in test_kprobes
            where = (fn.name, hex(addr - fn.addr), insn)
            seen = []
            p = Kprobe(
                fn.name,
                addr - fn.addr,
                lambda p, regs, seen=seen: seen.append(regs.verify().mismatch) and 0,
                lambda p, regs, flags, seen=seen: seen.append("post"),
            )
            why = refusal(arch, insn)
            if why:
                with pytest.raises(FtlabError, match=why):
                    lab.kprobes.register(p)
                refused.add(insn.split()[0])
                continue
            lab.kprobes.register(p)
            for call, value in results.items():
                assert lab.call(call[0], *call[1]) == value, (where, call)
            lab.kprobes.unregister(p)
            checks = [s for s in seen if s != "post"]
            assert p.nhit == len(checks) == seen.count("post") == runs[addr - lab.obj.base], where
            assert all(mismatch == [] for mismatch in checks), (where, checks)
            probed += 1
    assert refused == {start.split()[0] for a, start in REFUSED if a == arch}
    assert probed > 60
    assert m.read(start, size) == text  # every probe disarmed, byte for byte
