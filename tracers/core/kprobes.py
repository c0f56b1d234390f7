"""kprobes (kernel/kprobes.c; the per-instruction decisions are in tracers/arch/<arch>/kprobes.py).

A probe is a breakpoint over any instruction of a function. The trap goes through the CPU's own
exception entry into the guest's entry code, which saves a complete pt_regs; the pre_handler sees
the kernel's ip convention (x86: probe + 1, arm64: the probe). The instruction then runs out of
line in a slot ending in a second breakpoint, or is simulated when it is a branch or PC-relative;
then the post_handler runs. A probe hit while another is being handled is counted in nmissed and
only single-stepped. A pre_handler returning non-zero has changed the ip: the step is skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from emulator import FtlabError, GuestFault
from emulator.asm import decode, disassemble
from emulator.layout import Layout

from .ftrace import FtraceOps, OpsFlag
from .kprobe_guest import KprobeCode
from .regs import PtRegs

SLOT_SIZE = 32  # an x86 instruction (15 bytes at most) and its int3; arm64 8
TRAP_ARGS = Layout.of("trap_args", ("regs",))  # the trap handler's mailbox (entry.S)
REGS_ARG = TRAP_ARGS.index("regs")


@dataclass(eq=False)
class Kprobe:
    """struct kprobe: pre_handler(p, regs) -> int, post_handler(p, regs, flags). guest_pre: the
    pre_handler in guest code too, (code, data), which a kprobe on an ftrace site runs without Python
    when every probe there has one and none has a post_handler (kprobe_guest.py); the counts the
    guest keeps are part of nhit and nmissed."""

    symbol: str
    offset: int = 0
    pre_handler: Callable[[Kprobe, PtRegs], int] | None = None
    post_handler: Callable[[Kprobe, PtRegs, int], None] | None = None
    _missed: int = 0  # counted in Python
    _hits: int = 0
    addr: int = 0
    guest_pre: tuple[int, int] | None = None
    _desc: int = 0  # its guest kprobe, once it has been on a guest point
    _guest_counts: Callable[[], tuple[int, int]] | None = None

    def _guest(self, i: int) -> int:
        return self._guest_counts()[i] if self._guest_counts else 0

    @property
    def nmissed(self) -> int:
        """The misses counted in Python and by the guest kprobe_ftrace_handler."""
        return self._missed + self._guest(1)

    @nmissed.setter
    def nmissed(self, value: int) -> None:
        self._missed = value - self._guest(1)

    @property
    def nhit(self) -> int:
        return self._hits + self._guest(0)

    @nhit.setter
    def nhit(self, value: int) -> None:
        self._hits = value - self._guest(0)


@dataclass(eq=False)
class _Point:
    """One probed address. Several kprobes may share it (the kernel's aggregate kprobe): one
    breakpoint, one prepared instruction, every probe's handlers in turn."""

    addr: int
    probes: list[Kprobe]
    insn: object = None
    how: str = ""  # 'xol', 'simulate' or 'ftrace' (a kprobe on an ftrace site)
    slot: int | None = None
    opcode: bytes = b""  # the bytes the breakpoint replaced
    ftrace_ops: FtraceOps | None = None


@dataclass
class _Running:
    """kprobe_ctlblk: the point being handled, and the interrupt bits the step masked."""

    point: _Point
    reentered: bool
    saved_irq: int = 0
    outer: int = 0  # the guest's current_kprobe before this (non-zero: a guest handler's point)


class Kprobes:
    def __init__(self, ftrace, break_hooks: dict[int, Callable[[int], None]] | None = None):
        """break_hooks: other breakpoints the trap serves, address -> handler(regs address) (the
        kernel's register_kernel_break_hook: arm64's kretprobe BRK #7)."""
        self.ftrace, self.m, self.karch = ftrace, ftrace.m, ftrace.karch
        self.break_hooks = dict(break_hooks or {})
        self.ops = ftrace.karch.kprobes
        syms = self.karch.load(self.m, "entry.S", TRAP_ARGS.asm_constants("TRAP_ARGS_"))
        self.m.install_trap_vector(syms["trap_vector"])
        self._regs_arg = self.m.mailbox(syms["trap_handler"], syms["trap_args"], TRAP_ARGS)
        self._handler_name = self.m.symbols.name(syms["trap_handler"])  # do_int3, do_debug_exception
        self.m.hook_call(self._dispatch, syms["trap_dispatch"])
        self.saved = self.karch.exception_saved
        self.points: dict[int, _Point] = {}
        self.trailers: dict[int, _Point] = {}  # slot breakpoint address -> its point
        self.running: list[_Running] = []
        self.code: KprobeCode | None = None  # kprobe_ftrace.S, loaded for the first guest point
        # a probe's snapshot stands at its point; on an ftrace site, the ftrace dispatch takes the truth
        self.verify = ftrace.verify
        self.verify.add(self, "kprobes", self.points.keys)
        self.m.on_abandoned_call(self.reset_current_kprobe)

    # -- registration (register_kprobe, arch_prepare_kprobe, arch_arm_kprobe) ---------------------

    def register(self, p: Kprobe) -> None:
        p.addr = self.check(p)
        point = self.points.get(p.addr)
        if point is not None:
            if any(q is p for q in point.probes):
                raise FtlabError(f"kprobe at {p.symbol}+{p.offset:#x} is already registered")
            point.probes.append(p)
            if point.how == "ftrace":
                self._publish()
            return
        point = self.points[p.addr] = _Point(p.addr, [p])
        if p.addr in self.ftrace.by_ip:
            return self._register_on_ftrace(point)
        point.insn = decode(self.m.arch, self.m.read(p.addr, 16), p.addr)
        how = self.ops.decode(point.insn)
        if how not in ("xol", "simulate"):
            del self.points[p.addr]
            raise FtlabError(f"cannot probe {p.symbol}+{p.offset:#x}: {how}")
        point.how = how
        if how == "xol":
            point.slot = self.m.alloc("lab text", SLOT_SIZE, 16)
            self.m.write_code(point.slot, self.ops.copy_for_slot(point.insn, point.slot))
            self.trailers[point.slot + point.insn.size] = point
        point.opcode = self.m.read(p.addr, len(self.ops.BREAKPOINT))
        self.m.patch(p.addr, point.opcode, self.ops.BREAKPOINT)
        self.verify.refresh()

    def unregister(self, p: Kprobe) -> None:
        point = self.points.get(p.addr)
        if point is None or not any(q is p for q in point.probes):
            raise FtlabError(f"kprobe at {p.symbol}+{p.offset:#x} is not registered")
        point.probes = [q for q in point.probes if q is not p]
        if point.probes:
            if point.how == "ftrace":
                self._publish()
            return
        del self.points[p.addr]
        if point.how == "ftrace":
            self.ftrace.unregister(point.ftrace_ops)
            self._publish()
            return
        self.m.patch(p.addr, self.ops.BREAKPOINT, point.opcode)  # disarm: the original bytes
        if point.slot is not None:
            del self.trailers[point.slot + point.insn.size]
        self.verify.refresh()

    def reset_current_kprobe(self) -> None:
        """The call under way was abandoned (a fault in a slot, a handler's error): the probes it was
        handling are over, as kprobe_fault_handler ends the one whose step faulted (reset_current_kprobe,
        or restore_previous_kprobe when reentered: arch/x86/kernel/kprobes/core.c, torvalds/linux
        59ab55f0aa9f). Else every later hit would count as reentered (nmissed). A guest handler
        the call was in is over too: current_kprobe is cleared."""
        self.running.clear()
        if self.code is not None:
            self.code.current = 0

    def kprobe_running(self) -> bool:
        """kprobe_running(): current_kprobe is set, by a Python handler here or by the guest
        kprobe_ftrace_handler (kprobe_guest.py), whose word the Python side keeps too."""
        return bool(self.running) or (self.code is not None and self.code.current != 0)

    def _enter(self, point: _Point, reentered: bool) -> None:
        """current_kprobe = p (set_current_kprobe; a reentered hit's save_previous_kprobe), in the
        guest's word too."""
        run = _Running(point, reentered)
        if self.code is not None:
            run.outer, self.code.current = self.code.current, point.addr
        self.running.append(run)

    def _leave(self) -> None:
        """The point's handling is over: current_kprobe as it was before it."""
        run = self.running.pop()
        if self.code is not None:
            self.code.current = run.outer

    def check(self, p: Kprobe) -> int:
        """The probe's address, or FtlabError saying why it cannot be probed there."""
        m = self.m
        sym = m.symbols.get(p.symbol)
        if sym is None or sym.kind != "func":
            raise FtlabError(f"kprobe: no function '{p.symbol}'")
        where = f"{p.symbol}+{p.offset:#x}"
        if not 0 <= p.offset < sym.size:
            raise FtlabError(f"kprobe: {where} is outside {p.symbol} (size {sym.size:#x})")
        addr, _ = self.ops.arch_adjust_kprobe_addr(sym.addr, p.offset, m.read)  # _kprobe_addr()
        if addr in self.points:
            return addr  # checked when the first probe came
        starts = {a for a, _, _ in disassemble(m.arch, self.original_text(sym.addr, sym.size), sym.addr)}
        if addr not in starts:
            raise FtlabError(f"kprobe: Probe point is not an instruction boundary: {where}")
        if addr in self.ftrace.by_ip and self.ftrace.regs_caller is None:
            raise FtlabError(
                f"kprobe: {where} is an ftrace site, which needs KPROBES_ON_FTRACE: {self.karch.no_regs_caller_reason}"
            )
        return addr

    def original_text(self, addr: int, size: int) -> bytes:
        """The bytes at addr with every armed breakpoint's replaced bytes put back, as can_probe()
        decodes the function (x86: __recover_probed_insn(), arch/x86/kernel/kprobes/core.c, v6.17):
        another probe's int3 must not shift the instruction boundaries after it."""
        code = bytearray(self.m.read(addr, size))
        for point in self.points.values():
            off = point.addr - addr
            if point.opcode and 0 <= off and off + len(point.opcode) <= size:
                code[off : off + len(point.opcode)] = point.opcode
        return bytes(code)

    def kprobe_on_func_entry(self, symbol: str, offset: int) -> bool | None:
        """Whether symbol+offset is the function's entry (x86: +4 too, after an ENDBR); None for
        an unknown symbol, which the kernel leaves to registration to refuse (-ENOENT)."""
        sym = self.m.symbols.get(symbol)
        if sym is None or sym.kind != "func":
            return None
        return self.ops.arch_adjust_kprobe_addr(sym.addr, offset, self.m.read)[1]

    def _register_on_ftrace(self, point: _Point) -> None:
        """KPROBES_ON_FTRACE: the site is already a call to ftrace, so the probe is an ftrace_ops
        that asks for a full pt_regs (x86's ftrace_regs_caller) instead of a breakpoint."""
        point.how = "ftrace"
        point.ftrace_ops = FtraceOps(
            lambda ip, parent, op, fregs: self._ftrace_hit(point, ip, parent, fregs),
            OpsFlag.SAVE_REGS,
            name="kprobe",
            filter={point.addr},
        )
        self._publish()
        self.ftrace.register(point.ftrace_ops)

    def _guest_point(self, point: _Point) -> bool:
        """A kprobe on an ftrace site handled in guest code: every probe there has a guest
        pre_handler and no post_handler (which only Python runs)."""
        return point.how == "ftrace" and all(p.guest_pre is not None and p.post_handler is None for p in point.probes)

    def _publish(self) -> None:
        """The guest points' table (kprobe_guest.py; loaded with the first guest point), and each
        ftrace point's ops function in guest code: the guest kprobe_ftrace_handler on a guest point,
        else none (the Python dispatch calls _ftrace_hit)."""
        guest = {addr: point for addr, point in self.points.items() if self._guest_point(point)}
        if guest and self.code is None:
            self.code = KprobeCode(self.ftrace, len(self.ops.BREAKPOINT))
            if self.running:
                self.code.current = self.running[-1].point.addr
        code = self.code
        if code is None:
            return
        for point in guest.values():
            for p in point.probes:
                if not p._desc:
                    p._desc = desc = code.descriptor()
                    p._guest_counts = lambda desc=desc: code.counts(desc)
                code.set_handler(p._desc, *(p.guest_pre or (0, 0)))
        code.publish({addr: [p._desc for p in point.probes] for addr, point in guest.items()})
        for point in self.points.values():
            ops = point.ftrace_ops
            if ops is None:
                continue
            want = code.handler if point.addr in guest else None
            if ops.guest_func != want:
                ops.guest_func = want
                if ops in self.ftrace.ops:  # the ops function ftrace calls, chosen again
                    self.ftrace.set_filter_ips(ops, {point.addr})

    def _ftrace_hit(self, point: _Point, ip: int, parent_ip: int, fregs) -> None:
        """kprobe_ftrace_handler (arch/x86/kernel/kprobes/ftrace.c, v6.17): under
        ftrace_test_recursion_trylock() (a refused nesting returns, counting nothing), a hit while a
        kprobe runs is missed; else ip as if a breakpoint had hit, then as if the site's NOP ran,
        then the original ip back. Its guest counterpart (kprobe_ftrace.S) takes no trylock, as
        fprobe.S's fprobe_ftrace_entry takes none where fprobe.py's does: guest code calls no traced
        function (only a third nesting from Python handlers would tell them apart)."""
        recursion = self.ftrace.recursion
        bit = recursion.trylock(ip, parent_ip, recursion.FTRACE_START)
        if bit < 0:
            return
        try:
            self._ftrace_handle(point, ip, fregs)
        finally:
            recursion.unlock(bit)

    def _ftrace_handle(self, point: _Point, ip: int, fregs) -> None:
        regs = fregs.ftrace_get_regs()
        if self.kprobe_running():
            for p in point.probes:
                p.nmissed += 1
            return
        orig = regs.instruction_pointer()
        regs.meaning = {**regs.meaning, self.m.arch.pc: ip + self.ops.TRAP_IP_OFFSET} if regs.truth else {}
        regs.instruction_pointer_set(ip + self.ops.TRAP_IP_OFFSET)
        self._enter(point, False)
        try:
            if not self._pre_handlers(point, regs):
                regs.instruction_pointer_set(ip + self.karch.sites.size)
                self._post_handlers(point, regs)
                regs.instruction_pointer_set(orig)
        finally:
            self._leave()

    def _pre_handlers(self, point: _Point, regs: PtRegs) -> bool:
        """aggr_pre_handler (kernel/kprobes.c, v6.18): each probe's pre_handler in turn until one
        returns non-zero (it moved the ip): True then, and the probes after it do not run."""
        for p in list(point.probes):
            p.nhit += 1
            if p.pre_handler and p.pre_handler(p, regs):
                return True
        return False

    def _post_handlers(self, point: _Point, regs: PtRegs) -> None:
        for p in list(point.probes):
            if p.post_handler:
                p.post_handler(p, regs, 0)

    # -- the trap (kprobe_int3_handler / kprobe_brk_handler, kprobe_breakpoint_ss_handler) --------

    def _dispatch(self, _addr: int) -> None:
        regs_addr = self._regs_arg[REGS_ARG]
        m, arch = self.m, self.m.arch
        karch = self.karch
        karch.check_call_alignment(m, lambda: karch.describe("entry.S", karch.exception_entry), self._handler_name)
        trap = PtRegs(self.karch, m, regs_addr, self.saved).instruction_pointer() - self.ops.TRAP_IP_OFFSET
        if trap in self.points:
            truth = self.verify.take(trap)
            meaning = {arch.pc: trap + self.ops.TRAP_IP_OFFSET} if truth else None
            return self._hit(self.points[trap], PtRegs(self.karch, m, regs_addr, self.saved, truth, meaning))
        if trap in self.break_hooks:
            return self.break_hooks[trap](regs_addr)
        if trap in self.trailers and self.running and self.running[-1].point is self.trailers[trap]:
            return self._single_stepped(PtRegs(self.karch, m, regs_addr, self.saved))
        raise GuestFault(f"guest fault: a breakpoint no kprobe owns at {m.where(trap)}")

    def _hit(self, point: _Point, regs: PtRegs) -> None:
        if self.kprobe_running():  # reentered from a handler (here or the guest's): count and step
            for p in point.probes:
                p.nmissed += 1
            self._enter(point, True)
            return self._step(point, regs)
        self._enter(point, False)
        if self._pre_handlers(point, regs):
            self._leave()  # a handler moved the ip: no single-step
            return
        self._step(point, regs)

    def _step(self, point: _Point, regs: PtRegs) -> None:
        if point.how == "simulate":
            self.ops.simulate(point.insn, regs, self.m)
            return self._done(regs)
        flags_reg = self.m.arch.flags_reg
        flags = regs.fields[flags_reg]
        self.running[-1].saved_irq = flags & self.ops.IRQ_BITS
        regs.set_reg(flags_reg, self.ops.irqs_masked(flags))
        regs.instruction_pointer_set(point.slot)

    def _single_stepped(self, regs: PtRegs) -> None:
        run = self.running[-1]
        flags_reg = self.m.arch.flags_reg
        regs.set_reg(flags_reg, regs.fields[flags_reg] & ~self.ops.IRQ_BITS | run.saved_irq)
        regs.instruction_pointer_set(run.point.addr + run.point.insn.size)
        self._done(regs)

    def _done(self, regs: PtRegs) -> None:
        run = self.running[-1]
        try:
            if not run.reentered:
                self._post_handlers(run.point, regs)
        finally:
            self._leave()
