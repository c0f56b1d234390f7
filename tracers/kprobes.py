"""kprobes (kernel/kprobes.c; the per-instruction decisions are in tracers/arch/<arch>/kprobes.py).

A probe is a breakpoint over any instruction of a function. The trap goes through the CPU's own
exception entry into the guest's entry code, which saves a complete pt_regs; the pre_handler sees
the kernel's ip convention (x86: probe + 1, arm64: the probe). The instruction then runs out of
line in a slot ending in a second breakpoint, or is simulated when it is a branch or PC-relative;
then the post_handler runs. A probe hit while another is being handled is counted in nmissed and
only single-stepped. A pre_handler returning non-zero has changed the ip: the step is skipped.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

from emulator import FtlabError, GuestFault
from emulator.asm import decode, disassemble

from .ftrace import TRAMPOLINES, FtraceOps, OpsFlag
from .regs import PtRegs

SLOT_SIZE = 32                        # an x86 instruction (15 bytes at most) and its int3; arm64 8


@dataclass(eq=False)
class Kprobe:
    """struct kprobe: pre_handler(p, regs) -> int, post_handler(p, regs, flags)."""

    symbol: str
    offset: int = 0
    pre_handler: Callable[["Kprobe", PtRegs], int] | None = None
    post_handler: Callable[["Kprobe", PtRegs, int], None] | None = None
    nmissed: int = 0
    nhit: int = 0
    addr: int = 0
    insn: object = field(default=None, repr=False)
    how: str = ""                      # 'xol' or 'simulate'
    slot: int | None = None
    opcode: bytes = b""                # the bytes the breakpoint replaced
    ftrace_ops: FtraceOps | None = field(default=None, repr=False)   # a kprobe on an ftrace site


@dataclass
class _Running:
    """kprobe_ctlblk: the probe being handled, and the interrupt bits the step masked."""

    probe: Kprobe
    reentered: bool
    saved_irq: int = 0


class Kprobes:
    def __init__(self, lab):
        self.lab, self.m = lab, lab.machine
        arch = self.m.arch
        self.ops = importlib.import_module(f"tracers.arch.{arch.name}.kprobes")
        syms = self.m.load_lab_code(TRAMPOLINES / arch.name / "entry.S")
        self.m.install_trap_vector(syms["trap_vector"])
        self.m.hook_code(self._dispatch, syms["trap_dispatch"])
        self._regs_arg = self.m.register_batch([arch.arg_regs[0]])
        self.saved = tuple(r for r in arch.pt_regs.offsets if r in arch.regs)   # every register
        self.probes: dict[int, Kprobe] = {}
        self.trailers: dict[int, Kprobe] = {}      # slot breakpoint address -> its probe
        self.running: list[_Running] = []
        self.verifying = False
        self._truth_hooks: dict[int, object] = {}
        self._truth: dict[int, dict[str, int]] = {}

    # -- registration (register_kprobe, arch_prepare_kprobe, arch_arm_kprobe) ---------------------

    def register(self, p: Kprobe) -> None:
        p.addr = self._check(p)
        if p.addr in self.lab.ftrace.by_ip:
            return self._register_on_ftrace(p)
        p.insn = decode(self.m.arch, self.m.read(p.addr, 16), p.addr)
        how = self.ops.decode(p.insn)
        if how not in ("xol", "simulate"):
            raise FtlabError(f"cannot probe {p.symbol}+{p.offset:#x}: {how}")
        p.how, p.slot = how, None
        if how == "xol":
            p.slot = self.m.alloc("lab text", SLOT_SIZE, 16)
            self.m.write_code(p.slot, self.ops.copy_for_slot(p.insn, p.slot))
            self.trailers[p.slot + p.insn.size] = p
        p.opcode = self.m.read(p.addr, len(self.ops.BREAKPOINT))
        self.m.patch(p.addr, p.opcode, self.ops.BREAKPOINT)
        self.probes[p.addr] = p
        if self.verifying:
            self._hook_truth(p.addr)

    def unregister(self, p: Kprobe) -> None:
        if self.probes.get(p.addr) is not p:
            raise FtlabError(f"kprobe at {p.symbol}+{p.offset:#x} is not registered")
        if p.ftrace_ops is not None:
            self.lab.ftrace.unregister(p.ftrace_ops)
            del self.probes[p.addr]
            return
        self.m.patch(p.addr, self.ops.BREAKPOINT, p.opcode)        # disarm: the original bytes
        del self.probes[p.addr]
        if p.slot is not None:
            del self.trailers[p.slot + p.insn.size]
        if p.addr in self._truth_hooks:
            self.m.unhook(self._truth_hooks.pop(p.addr))

    def _check(self, p: Kprobe) -> int:
        m = self.m
        sym = m.symbols.get(p.symbol)
        if sym is None or sym.kind != "func":
            raise FtlabError(f"kprobe: no function '{p.symbol}'")
        where = f"{p.symbol}+{p.offset:#x}"
        if not 0 <= p.offset < sym.size:
            raise FtlabError(f"kprobe: {where} is outside {p.symbol} (size {sym.size:#x})")
        addr = sym.addr + p.offset
        starts = {a for a, _, _ in disassemble(m.arch, m.read(sym.addr, sym.size), sym.addr)}
        if addr not in starts:
            raise FtlabError(f"kprobe: Probe point is not an instruction boundary: {where}")
        if addr in self.lab.ftrace.by_ip and self.lab.ftrace.regs_caller is None:
            raise FtlabError(f"kprobe: {where} is an ftrace site, which needs KPROBES_ON_FTRACE: "
                             f"{m.arch.no_regs_caller_reason}")
        if addr in self.probes:
            raise FtlabError(f"kprobe: {where} is already probed")
        return addr

    def _register_on_ftrace(self, p: Kprobe) -> None:
        """KPROBES_ON_FTRACE: the site is already a call to ftrace, so the probe is an ftrace_ops
        that asks for a full pt_regs (x86's ftrace_regs_caller) instead of a breakpoint."""
        p.ftrace_ops = FtraceOps(lambda ip, parent, op, fregs: self._ftrace_hit(p, ip, fregs),
                                 OpsFlag.SAVE_REGS, name=f"kprobe:{p.symbol}", filter={p.addr})
        self.probes[p.addr] = p
        self.lab.ftrace.register(p.ftrace_ops)

    def _ftrace_hit(self, p: Kprobe, ip: int, fregs) -> None:
        """kprobe_ftrace_handler: ip as if a breakpoint had hit, then as if the site's NOP ran."""
        regs = fregs.ftrace_get_regs()
        if self.running:
            p.nmissed += 1
            return
        orig = regs.instruction_pointer()
        regs.meaning = {**regs.meaning, self.m.arch.pc: ip + self.ops.TRAP_IP_OFFSET} if regs.truth else {}
        regs.instruction_pointer_set(ip + self.ops.TRAP_IP_OFFSET)
        p.nhit += 1
        self.running.append(_Running(p, False))
        try:
            if not p.pre_handler or not p.pre_handler(p, regs):
                regs.instruction_pointer_set(ip + self.m.arch.site_size)
                if p.post_handler:
                    p.post_handler(p, regs, 0)
                regs.instruction_pointer_set(orig)
        finally:
            self.running.pop()

    # -- verify: the true registers at the probe instant ------------------------------------------

    def set_verify(self, on: bool) -> None:
        self.verifying = on
        self.lab.ftrace.set_verify(on)                  # kprobes on ftrace sites
        for addr in (a for a, p in self.probes.items() if p.ftrace_ops is None):
            if on and addr not in self._truth_hooks:
                self._hook_truth(addr)
            elif not on and addr in self._truth_hooks:
                self.m.unhook(self._truth_hooks.pop(addr))

    def _hook_truth(self, addr: int) -> None:
        self._truth_hooks[addr] = self.m.hook_code(
            lambda a: self._truth.__setitem__(a, self.lab.ftrace.true_registers()), addr)

    # -- the trap (kprobe_int3_handler / kprobe_brk_handler, kprobe_breakpoint_ss_handler) --------

    def _dispatch(self, _addr: int) -> None:
        [regs_addr] = self._regs_arg.read()
        m, arch = self.m, self.m.arch
        trap = PtRegs(m, regs_addr, self.saved).instruction_pointer() - self.ops.TRAP_IP_OFFSET
        if trap in self.probes:
            truth = self._truth.pop(trap, None)
            meaning = {arch.pc: trap + self.ops.TRAP_IP_OFFSET} if truth else None
            return self._hit(self.probes[trap], PtRegs(m, regs_addr, self.saved, truth, meaning))
        if trap in self.trailers and self.running and self.running[-1].probe is self.trailers[trap]:
            return self._single_stepped(PtRegs(m, regs_addr, self.saved))
        raise GuestFault(f"guest fault: a breakpoint no kprobe owns at {m.where(trap)}")

    def _hit(self, p: Kprobe, regs: PtRegs) -> None:
        if self.running:                          # reentered from a handler: count and step
            p.nmissed += 1
            self.running.append(_Running(p, True))
            return self._step(p, regs)
        p.nhit += 1
        self.running.append(_Running(p, False))
        if p.pre_handler and p.pre_handler(p, regs):
            self.running.pop()                    # the handler moved the ip: no single-step
            return
        self._step(p, regs)

    def _step(self, p: Kprobe, regs: PtRegs) -> None:
        if p.how == "simulate":
            self.ops.simulate(p.insn, regs, self.m)
            return self._done(regs)
        flags_reg = self.m.arch.flags_reg
        flags = regs.fields[flags_reg]
        self.running[-1].saved_irq = flags & self.ops.IRQ_BITS
        regs._set(flags_reg, self.ops.irqs_masked(flags))
        regs.instruction_pointer_set(p.slot)

    def _single_stepped(self, regs: PtRegs) -> None:
        run = self.running[-1]
        flags_reg = self.m.arch.flags_reg
        regs._set(flags_reg, regs.fields[flags_reg] & ~self.ops.IRQ_BITS | run.saved_irq)
        regs.instruction_pointer_set(run.probe.addr + run.probe.insn.size)
        self._done(regs)

    def _done(self, regs: PtRegs) -> None:
        run = self.running[-1]
        try:
            if not run.reentered and run.probe.post_handler:
                run.probe.post_handler(run.probe, regs, 0)
        finally:
            self.running.pop()
