"""arm64 pointer authentication really signs and checks (issue #12).

fixtures/obj/arm64/funcs-bti.o is built with -mbranch-protection=pac-ret+bti: chain_a and chain_b
sign their return address with paciasp (SP the modifier), save it in their frame record and check
it with autiasp before ret. The references: the return address a bl leaves (capstone's decoding of
the caller), the Arm ARM's AArch64.Auth (without FEAT_FPAC a failed check sets key A's error code
0b01 in bits 62:61 in place of the PAC), the catalog's Python functions. x86 has no such feature.
"""

import pytest

from emulator import FtlabError, GuestFault, Machine
from emulator import arch as arches
from emulator.arch import arm64
from emulator.asm import disassemble
from fixtures import catalog
from tracers import Kretprobe, Lab
from tracers.builtin.function_graph import FunctionGraphTracer
from tracers.core.kprobes import Kprobe
from tracers.output.sinks import ListSink

ARM64 = arches.get("arm64")
BTI = "funcs-bti"
LOW48 = (1 << 48) - 1
ARG = 0x1234


def body(m, name):
    """(address, text) of each instruction of a function."""
    sym = m.symbols.get(name)
    return [(addr, text) for addr, _, text in disassemble(ARM64, m.read(sym.addr, sym.size), sym.addr)]


def at(m, name, mnemonic):
    return next(addr for addr, text in body(m, name) if text.split()[0] == mnemonic)


@pytest.fixture
def machine():
    m = Machine(ARM64)
    m.load(catalog.variant("arm64", BTI).path)
    return m


def test_the_cpu_has_address_authentication_and_it_is_on(machine):
    """ID_AA64ISAR1_EL1.APA (bits 7:4) names FEAT_PAuth; booting.rst's PAC conditions hold; the
    kernel's __ptrauth_keys_init_cpu SCTLR_EL1 bits are set."""
    uc = machine.uc
    assert (uc.cpr_read(*arm64.ID_AA64ISAR1_EL1) >> 4) & 0xF != 0
    assert uc.cpr_read(*arm64.SCR_EL3) & (1 << 17 | 1 << 16 | 1) == (1 << 17 | 1 << 16 | 1)  # API, APK, NS
    assert uc.cpr_read(*arm64.HCR_EL2) & (1 << 41 | 1 << 40 | 1 << 31) == (1 << 41 | 1 << 40 | 1 << 31)
    enable = 1 << 31 | 1 << 30 | 1 << 27 | 1 << 13  # EnIA, EnIB, EnDA, EnDB
    assert uc.cpr_read(*arm64.SCTLR_EL1) & enable == enable


def test_paciasp_signs_the_return_address_and_autiasp_restores_it(machine):
    m = machine
    call = next(addr for addr, text in body(m, "chain_a") if text == f"bl #{m.symbols.get('chain_b').addr:#x}")
    seen = {}
    m.hook_code(lambda a: seen.setdefault("entry", m.reg("x30")), m.symbols.get("chain_b").addr)
    m.hook_code(lambda a: seen.setdefault("signed", m.reg("x30")), at(m, "chain_b", "paciasp") + 4)
    m.hook_code(lambda a: seen.setdefault("ret", m.reg("x30")), at(m, "chain_b", "autiasp") + 4)
    assert m.call("chain_a", ARG) == catalog.FUNCTIONS["chain_a"].reference(ARG)
    assert seen["entry"] == call + 4  # where chain_a's bl returns
    signed = seen["signed"]
    assert signed != call + 4 and signed & LOW48 == call + 4  # a PAC in the top bits, the address kept
    assert signed >> 55 & 1 == 0  # bit 55 (the half of the address space) is not part of the PAC
    assert seen["ret"] == call + 4


def test_signatures_are_deterministic(machine):
    """The key is fixed, so the same call signs the same way in every machine."""
    signed = []
    for m in (machine, Machine(ARM64)):
        if m is not machine:
            m.load(catalog.variant("arm64", BTI).path)
        m.hook_code(lambda a, m=m: signed.append(m.reg("x30")), at(m, "chain_b", "paciasp") + 4)
        m.call("chain_b", ARG)
    assert signed[0] == signed[1] != signed[0] & LOW48


@pytest.mark.parametrize("bit", [2, 50])  # in the address, in the PAC
def test_a_corrupted_saved_return_address_is_caught(machine, bit):
    """One bit of chain_b's saved x30 flipped in its frame record: autiasp's check fails, the
    pointer is poisoned and the ret faults, named as a failed authentication."""
    m = machine
    saved = {}

    def corrupt(_):
        slot = m.reg("sp") + 8  # stp x29, x30, [sp, #-16]!: the frame record's x30
        saved["x30"] = m.u64(slot)
        m.write(slot, (saved["x30"] ^ 1 << bit).to_bytes(8, "little"))

    stp = at(m, "chain_b", "paciasp") + 4
    m.hook_code(corrupt, stp + 4)
    with pytest.raises(GuestFault) as err:
        m.call("chain_b", ARG)
    pointer = (saved["x30"] ^ 1 << bit) & LOW48
    poisoned = pointer | 0b01 << 61  # key A's error code in bits 62:61 (AArch64.Auth, no FEAT_FPAC)
    assert str(err.value) == (
        f"guest fault: execution of {poisoned:#x}, a pointer that failed authentication: AUTIA (key A) "
        f"found the PAC of {pointer:#x} <{m.symbols.name(pointer)}> wrong and poisoned it "
        "(a return address corrupted after PACIASP?)"
    )


def test_other_non_canonical_fetches_are_not_called_authentication_failures(machine):
    """A pointer with any other top bits is just an unmapped address."""
    assert arm64.failed_authentication(0x8000_0000_4000_0000, hex) is None  # bit 63: no error code
    assert arm64.failed_authentication(0x2001_0000_4000_0000, hex) is None  # a PAC bit left as well
    assert arm64.failed_authentication(0x0000_0000_4000_0000, hex) is None
    assert "AUTIB (key B)" in arm64.failed_authentication(0b10 << 61 | 0x4000_0000, hex)
    assert "AUTIA (key A)" in arm64.failed_authentication(0xDFFF_FFFF_4000_0000, hex)  # upper half, key A


def test_mechanisms_verify_around_paciasp_and_autiasp():
    """function_graph (its patch site is before paciasp: it rewrites the unsigned LR), a kretprobe
    (it swaps LR at entry, so paciasp signs the trampoline's address) and kprobes on paciasp
    (stepped out of line: SP, the modifier, is the same there) all give the catalog's result with
    verified snapshots."""
    lab = Lab.open(BTI, "arm64")
    expected = catalog.FUNCTIONS["chain_a"].reference(ARG)
    sink = ListSink()
    with FunctionGraphTracer(lab, sink, verify=True):
        assert lab.call("chain_a", ARG) == expected
    assert sink.events and all(ev.mismatch == [] for ev in sink.events)
    assert {lab.machine.symbols.lookup(ev.ip)[0].name for ev in sink.events} == {"chain_a", "chain_b", "chain_c"}

    seen = []
    with lab.verify.holding(lab.rethook):
        lab.kretprobes().register(Kretprobe("chain_b", lambda ri, regs: seen.append(regs.verify())))
        assert lab.call("chain_a", ARG) == expected
    assert len(seen) == 1 and seen[0].mismatch == []

    hits = []
    lab.verify.acquire(lab.kprobes)
    for name in ("chain_a", "chain_b"):
        offset = at(lab.machine, name, "paciasp") - lab.machine.symbols.get(name).addr
        lab.kprobes.register(Kprobe(name, offset, lambda p, regs: hits.append(regs.verify()) and 0))
    assert lab.call("chain_a", ARG) == expected
    assert len(hits) == 2 and all(v.mismatch == [] for v in hits)


def test_autiasp_cannot_be_kprobed():
    """As in the kernel: autiasp is a HINT not on aarch64_insn_is_steppable_hint()'s list (only the
    PAC-signing hints, xpaclri, bti and nop are), so arm_kprobe_decode_insn() rejects it."""
    lab = Lab.open(BTI, "arm64")
    offset = at(lab.machine, "chain_b", "autiasp") - lab.machine.symbols.get("chain_b").addr
    with pytest.raises(FtlabError, match=r"cannot probe chain_b\+0x[0-9a-f]+: 'autiasp' is rejected on arm64"):
        lab.kprobes.register(Kprobe("chain_b", offset, lambda p, regs: 0))
