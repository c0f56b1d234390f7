"""kprobes: a breakpoint on any instruction, the exception's complete pt_regs, single-stepping out
of line or simulated, and the kernel's test_kprobes cases, on both arches."""

from collections import Counter

import pytest
import unicorn

from emulator import FtlabError
from emulator.asm import disassemble
from helpers import EXAMPLES, all_variants, example
from tracers import Lab
from tracers.core.kprobes import Kprobe
from tracers.core.regs import decode_flags

# Every example, with fib small enough to probe every instruction quickly but deep enough to recurse.
CALLS = [ex for ex in EXAMPLES if ex.name != "fib"] + [example("fib", 7), example("popcount_buf", b"", 0)]


def executed(lab):
    """How often each instruction runs over CALLS: the slow, obvious per-instruction reference."""
    counts, m = Counter(), lab.machine
    h = m.uc.hook_add(
        unicorn.UC_HOOK_CODE,
        lambda uc, addr, size, _: counts.update([addr]),
        begin=lab.obj.base,
        end=lab.obj.base + lab.obj.size,
    )
    m.uc.ctl_flush_tb()
    for ex in CALLS:
        ex.call(lab)
    m.uc.hook_del(h)
    return counts


# What the fixtures hold that the kernel will not probe: arm64's pointer-auth check (not a
# steppable hint, decode-insn.c).
KERNEL_REFUSES = {"autiasp"}


@pytest.mark.slow
@pytest.mark.parametrize("arch_name,variant", all_variants())
def test_a_probe_on_every_instruction_changes_no_result(arch_name, variant):
    lab = Lab.open(variant, arch_name)
    m, runs = lab.machine, executed(lab)
    text = m.read(lab.obj.base, lab.obj.size)
    probed = 0
    for fn in lab.obj.functions:
        for addr, _, insn in disassemble(m.arch, m.read(fn.addr, fn.size), fn.addr):
            if addr in lab.ftrace.by_ip:
                continue  # the ftrace site: see the KPROBES_ON_FTRACE test
            hits = Counter()
            p = Kprobe(
                fn.name,
                addr - fn.addr,
                lambda p, regs, hits=hits: hits.update(["pre"]) and 0,
                lambda p, regs, flags, hits=hits: hits.update(["post"]),
            )
            if insn.split()[0] in KERNEL_REFUSES:  # see test_regs_fidelity
                with pytest.raises(FtlabError, match="rejected"):
                    lab.kprobes.register(p)
                continue
            lab.kprobes.register(p)
            for ex in CALLS:
                assert ex.call(lab) == ex.expected, (fn.name, hex(addr), insn, str(ex))
            lab.kprobes.unregister(p)
            assert hits["pre"] == hits["post"] == runs[addr] == p.nhit, (fn.name, insn)
            probed += 1
    assert probed > 100
    assert m.read(lab.obj.base, lab.obj.size) == text  # every probe disarmed, byte for byte


def test_disarm_restores_the_bytes(lab):
    m, fib = lab.machine, lab.machine.symbols.get("fib")
    before = m.read(fib.addr, fib.size)
    insns = disassemble(m.arch, before, fib.addr)
    probes = [Kprobe("fib", a - fib.addr) for a, _, _ in insns[2:6]]
    for p in probes:
        lab.kprobes.register(p)
    assert m.read(fib.addr, fib.size) != before
    for p in probes:
        lab.kprobes.unregister(p)
    assert m.read(fib.addr, fib.size) == before


def _body(lab, func, n):
    """The nth instruction after the patch site: (offset, text)."""
    m, sym = lab.machine, lab.machine.symbols.get(func)
    site = lab.ftrace.site(func).ip
    insns = [(a - sym.addr, t) for a, _, t in disassemble(m.arch, m.read(sym.addr, sym.size), sym.addr) if a > site]
    return insns[n]


@pytest.mark.parametrize("n", range(6))
def test_pt_regs_equal_the_truth_at_every_probe_point(lab, n):
    checks = []
    lab.verify.acquire(lab.kprobes)
    for ex in (example("fib", 6), example("sum10", *range(1, 11)), example("crc32_bitwise", 0, b"abc", 3)):
        off, _ = _body(lab, ex.name, n)
        p = Kprobe(ex.name, off, lambda p, regs: checks.append((regs.verify(), regs.fields)) and 0)
        lab.kprobes.register(p)
        assert ex.call(lab) == ex.expected
        lab.kprobes.unregister(p)
    assert checks
    for verification, _fields in checks:
        assert verification.mismatch == []
        assert len(verification.checks) == len(lab.arch.regs)  # every register, flags included


@pytest.mark.parametrize(
    "n,expect",
    [
        (0, {"x86_64": {"CF", "SF", "PF"}, "arm64": {"N"}}),
        (1, {"x86_64": {"ZF", "PF"}, "arm64": {"Z", "C"}}),
        (2, {"x86_64": set(), "arm64": {"C"}}),
    ],
)
def test_flags_after_a_compare(lab, n, expect):
    """fib(n) compares n with 1 first. At the next instruction the pt_regs flags are the compare's:
    the expected bits are worked out by hand from cmp's definition (n - 1)."""
    body = [_body(lab, "fib", i) for i in range(8)]
    after, _ = body[next(i for i, (_, text) in enumerate(body) if text.startswith("cmp")) + 1]
    got = []
    lab.verify.acquire(lab.kprobes)
    lab.kprobes.register(Kprobe("fib", after, lambda p, regs: got.append((regs.fields, regs.verify())) and 0))
    lab.call("fib", n)
    fields, verification = got[0]
    arith = {"x86_64": {"CF", "PF", "ZF", "SF", "OF"}, "arm64": {"N", "Z", "C", "V"}}[lab.arch.name]
    assert set(decode_flags(lab.arch, fields[lab.arch.flags_reg])) & arith == expect[lab.arch.name]
    assert verification.mismatch == []


def test_pre_handler_sees_the_kernel_ip_convention(lab):
    seen = []
    off, _ = _body(lab, "fib", 1)
    addr = lab.machine.address_of("fib") + off
    size = disassemble(lab.arch, lab.machine.read(addr, 16), addr)[0][1]  # before it is armed
    lab.kprobes.register(
        Kprobe(
            "fib",
            off,
            lambda p, regs: seen.append(regs.instruction_pointer()) and 0,
            lambda p, regs, f: seen.append(regs.instruction_pointer()),
        )
    )
    lab.call("fib", 1)
    assert seen == [addr + (1 if lab.arch.name == "x86_64" else 0), addr + size]


def test_pre_handler_changing_the_ip_skips_the_step(lab):
    """Error injection: at chain_c's entry, return 42 at once (override_function_with_return)."""
    off = 5 if lab.arch.name == "x86_64" else 0  # after the fentry NOP / the MOV X9, LR

    def inject(p, regs):
        regs.set_reg(lab.arch.ret_regs[0], 42)
        regs.override_function_with_return()
        return 1

    p = Kprobe("chain_c", off, inject, lambda p, regs, f: pytest.fail("post_handler after a skip"))
    lab.kprobes.register(p)
    assert lab.call("chain_a", 10) == 2 * 42 + 42
    assert p.nhit == 2


def test_a_pre_handler_moving_the_ip_stops_the_probes_after_it(lab):
    """aggr_pre_handler (kernel/kprobes.c, v6.18) returns at the first non-zero pre_handler: the
    probes after it on the address neither run nor count a hit, and no post_handler runs."""
    off = 5 if lab.arch.name == "x86_64" else 0
    ran = []

    def inject(p, regs):
        ran.append("inject")
        regs.set_reg(lab.arch.ret_regs[0], 42)
        regs.override_function_with_return()
        return 1

    first = Kprobe("chain_c", off, inject, lambda p, regs, f: pytest.fail("post_handler after a skip"))
    after = Kprobe("chain_c", off, lambda p, regs: ran.append("after") and 0)
    lab.kprobes.register(first)
    lab.kprobes.register(after)
    assert lab.call("chain_a", 10) == 2 * 42 + 42
    assert ran == ["inject", "inject"] and (first.nhit, after.nhit) == (2, 0)


# -- lib/tests/test_kprobes.c ----------------------------------------------------------------------

RAND1 = 0x1234567
TARGET, TARGET2, RECURSED = "chain_c", "tail_b", "add3"


def test_kprobe(lab):
    """pre and post handler on the target; the pre_handler calls another function."""
    vals = {}
    off, _ = _body(lab, TARGET, 0)

    def pre(p, regs):
        vals["recursed"] = lab.call(RECURSED, 1, 2, 3)
        vals["preh"] = RAND1 // 3
        return 0

    def post(p, regs, flags):
        assert vals["preh"] == RAND1 // 3
        vals["posth"] = RAND1

    lab.kprobes.register(Kprobe(TARGET, off, pre, post))
    assert lab.call(TARGET, RAND1) == 3 * RAND1 + 1
    assert vals == {"recursed": 6, "preh": RAND1 // 3, "posth": RAND1}


def test_kprobes(lab):
    hits = Counter()
    for t in (TARGET, TARGET2):
        off, _ = _body(lab, t, 0)
        lab.kprobes.register(
            Kprobe(
                t,
                off,
                lambda p, r: hits.update([p.symbol + ".pre"]) and 0,
                lambda p, r, f: hits.update([p.symbol + ".post"]),
            )
        )
    lab.call(TARGET, RAND1)
    lab.call(TARGET2, RAND1)
    assert hits == Counter({f"{t}.{w}": 1 for t in (TARGET, TARGET2) for w in ("pre", "post")})


def test_kprobe_missed(lab):
    """Handlers that call the probed function itself: each nested hit is missed (nmissed == 2),
    and the handlers still ran once each."""
    ran = Counter()
    off, _ = _body(lab, RECURSED, 0)

    def pre(p, regs):
        ran["pre"] += 1
        lab.call(RECURSED, 1, 2, 3)
        return 0

    def post(p, regs, flags):
        ran["post"] += 1
        lab.call(RECURSED, 1, 2, 3)

    p = Kprobe(RECURSED, off, pre, post)
    lab.kprobes.register(p)
    assert lab.call(RECURSED, 4, 5, 6) == 15
    assert (p.nmissed, p.nhit, ran["pre"], ran["post"]) == (2, 1, 1, 1)


# -- bad probes ----------------------------------------------------------------------------------


def test_probe_inside_an_instruction_is_refused(lab):
    m, fib = lab.machine, lab.machine.symbols.get("fib")
    starts = {a - fib.addr for a, _, _ in disassemble(m.arch, m.read(fib.addr, fib.size), fib.addr)}
    inside = next(o for o in range(1, fib.size) if o not in starts)
    with pytest.raises(FtlabError, match=rf"Probe point is not an instruction boundary: fib\+{inside:#x}"):
        lab.kprobes.register(Kprobe("fib", inside))


def test_probe_outside_the_function_is_refused(lab):
    size = lab.machine.symbols.get("fib").size
    with pytest.raises(FtlabError, match=rf"fib\+{size:#x} is outside fib \(size {size:#x}\)"):
        lab.kprobes.register(Kprobe("fib", size))
    with pytest.raises(FtlabError, match="no function 'nosuch'"):
        lab.kprobes.register(Kprobe("nosuch"))


def test_two_probes_on_one_instruction(lab):
    """Aggregate kprobes: one breakpoint, both handlers; the bytes come back with the last one."""
    m, hits = lab.machine, Counter()
    off, _ = _body(lab, "fib", 1)
    addr = m.address_of("fib") + off
    before = m.read(addr, 4)
    a = Kprobe("fib", off, lambda p, r: hits.update(["a"]) and 0)
    b = Kprobe("fib", off, lambda p, r: hits.update(["b"]) and 0, lambda p, r, f: hits.update(["b.post"]))
    lab.kprobes.register(a)
    lab.kprobes.register(b)
    assert lab.call("fib", 4) == 3
    assert hits == Counter({"a": 9, "b": 9, "b.post": 9}) and (a.nhit, b.nhit) == (9, 9)
    lab.kprobes.unregister(a)
    assert m.read(addr, 4) != before
    lab.kprobes.unregister(b)
    assert m.read(addr, 4) == before
    with pytest.raises(FtlabError, match="not registered"):
        lab.kprobes.unregister(b)
