"""kprobes on every instruction of the hand-written fixtures/asm/<arch>/insns.S: the instructions
compilers rarely emit (indirect calls and jumps, loop, jrcxz, ret imm16, rip-relative loads;
cbz/tbz, adr/adrp, literal loads, br/blr, ret xN), which kprobes must emulate, simulate or step
exactly, or refuse as the kernel does."""

from collections import Counter

import pytest

from emulator import FtlabError, GuestFault, Machine
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
# What the kernel emulates otherwise than the CPU runs it: x86's kprobe_emulate_ret() pops only the
# return address, so a probed `ret imm16` leaves its imm16 bytes on the stack (int3_emulate_ret(),
# arch/x86/include/asm/text-patching.h). A call that runs it comes back to the wrong place.
MISEMULATED = {("x86_64", "ret 0x10")}
CALLS = [(name, args) for name, (_, examples) in FUNCTIONS.items() for args in examples]


def refusal(arch: str, text: str) -> str | None:
    return next((why for (a, start), why in REFUSED.items() if a == arch and text.startswith(start)), None)


def bare_run(arch):
    """The untraced results, how often each instruction ran over all of them, and which ones each
    call ran (by offset in the object), on a machine with no tracing code at all: a per-instruction
    code hook, the slow obvious count."""
    m = Machine(arch)
    obj = m.load(bundled(arch.name, "insns"))
    current: Counter = Counter()
    m.hook_code(lambda addr: current.update([addr - obj.base]), obj.base, obj.base + obj.size - 1)
    results, reached, runs = {}, {}, Counter()
    for call in calls(m):
        current.clear()
        results[call] = m.call(call[0], *call[1])
        reached[call] = set(current)
        runs += current
    return results, runs, reached


def calls(machine):
    """The reference's example calls of the functions this arch's file defines."""
    defined = {s.name for s in machine.objects[0].functions}
    return [(name, args) for name, args in CALLS if name in defined]


@pytest.mark.slow
def test_a_probe_on_every_instruction_behaves_as_the_truth(arch):
    results, runs, reached = bare_run(arches.get(arch))
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
                if (arch, insn) in MISEMULATED and addr - lab.obj.base in reached[call]:
                    with pytest.raises(GuestFault):
                        lab.call(call[0], *call[1])
                    continue
                assert lab.call(call[0], *call[1]) == value, (where, call)
            lab.kprobes.unregister(p)
            checks = [s for s in seen if s != "post"]
            assert p.nhit == len(checks) == seen.count("post") == runs[addr - lab.obj.base], where
            assert all(mismatch == [] for mismatch in checks), (where, checks)
            probed += 1
    assert refused == {start.split()[0] for a, start in REFUSED if a == arch}
    assert probed > 60
    assert m.read(start, size) == text  # every probe disarmed, byte for byte


def test_a_probed_ret_imm16_pops_only_the_return_address():
    """kprobe_emulate_ret(): after a probed `ret 16`, sp is 8 above where it was, not 24 (the CPU's
    ret imm16 pops the return address and 16 bytes of arguments), so ret_imm's `pop rbx; ret` take
    the pushed arguments for its saved rbx and return address, 7: a fault at address 7."""
    lab = Lab.open("insns", "x86_64")  # ret imm16 is x86's
    pop_two = lab.machine.symbols.get("pop_two")
    ret = next(
        a
        for a, _, t in disassemble(lab.arch, lab.machine.read(pop_two.addr, pop_two.size), pop_two.addr)
        if t == "ret 0x10"
    )
    sp = {}
    p = Kprobe(
        "pop_two",
        ret - pop_two.addr,
        lambda p, regs: sp.update(pre=regs.kernel_stack_pointer()) and 0,
        lambda p, regs, flags: sp.update(post=regs.kernel_stack_pointer()),
    )
    lab.kprobes.register(p)
    with pytest.raises(GuestFault, match=r"execution of unmapped address .* at 0x7 "):
        lab.call("ret_imm", 5)
    assert sp["post"] - sp["pre"] == 8
    lab.kprobes.unregister(p)
    assert lab.call("ret_imm", 5) == FUNCTIONS["ret_imm"][0](5)
