"""Probe events (`ftlab trace -e SPEC`): the kernel's dynamic_events, on this lab's mechanisms.

    p[:[GRP/]EVENT] SYM[+OFFS]|ADDR [FETCHARGS]   a kprobe pre_handler (the exception's pt_regs)
    f[:[GRP/]EVENT] SYM [FETCHARGS]               an fprobe entry handler
    f[:[GRP/]EVENT] SYM%return [FETCHARGS]        an fprobe exit handler ($retval; $argN as at entry)
    r[MAXACTIVE][:[GRP/]EVENT] SYM [FETCHARGS]    a kretprobe return handler (also p SYM%return)

Each hit becomes an event whose fetchargs are evaluated against the snapshot the mechanism really
gave (pt_regs for kprobes and kretprobes, ftrace_regs for fprobes on fgraph): a register it did not
capture reads as a fault, never as the emulator's value.

Where every event is an fprobe's on the fgraph design, or a kprobe's on an ftrace site that is a
kprobe on ftrace (KPROBES_ON_FTRACE: x86's ftrace_regs_caller; arm64's p events take the BRK
exception, in Python), or a kretprobe's whose kprobe is such and whose return trampoline has a guest
callback (core/rethook_guest.py: x86's rethook; arm64's r events take Python), and its fetchargs
compile to guest programs (probe_events/program.py: no string, no $comm), with the counter clock (or
insns where the machine counts natively), no verify mode and a ring buffer that holds one of their
records, the hits run no Python: the guest fprobe dispatch (core/fprobe_guest.py), the guest
kprobe_ftrace_handler (core/kprobe_guest.py) and the guest kretprobe entry and rethook return
(core/rethook_guest.py) call guest handlers (probe_code.py) that fetch into ring-buffer records, and
Python decodes them in bulk into the same events (output/probe_records.py).
"""

from __future__ import annotations

import struct
from dataclasses import replace

from emulator import FtlabError

from ..core.fprobe import Fprobe
from ..core.kprobes import Kprobe
from ..core.kretprobe import Kretprobe
from ..output.events import NR_ARGS, Event
from ..output.formats import probe_bulk_writer
from ..output.probe_records import ProbeDecoder
from ..output.sinks import location
from ..probe_events import BtfProto, FetchFault, ProbeSpec, check_append, evaluate, parse
from ..probe_events.program import Step, Where, compile_args, entry_steps
from .trace_clock import GuestInsnsClock
from .tracer import PendingEvents, Tracer

MECHANISM = {"f": "fprobe", "r": "kretprobe", "p": "kprobe"}
HOLDER = "the probe events' guest path"  # its name as the ring buffer's holder


class _Context:
    """probe_events.FetchContext over one snapshot."""

    comm = "ftlab"

    def __init__(self, lab, regs, entry_args=None):
        self.m, self.regs, self.entry_args = lab.machine, regs, entry_args

    def register(self, name: str) -> int:
        try:
            return self.regs.reg(name)
        except KeyError:
            raise FetchFault(f"%{name} is not in this {self.regs.kind}") from None

    def argument(self, n: int) -> int:
        if self.entry_args is not None:  # at an exit: the word the entry saved
            return self.entry_args[n]
        return _argument(self.regs, n - 1)

    def return_value(self) -> int:
        return _retval(self.regs)

    def stack_pointer(self) -> int:
        # FETCH_OP_STACKP reads ftrace_regs_get_stack_pointer() / kernel_stack_pointer() of the
        # handler's regs (trace_fprobe.c, trace_kprobe.c process_fetch_insn). At an fprobe's exit on
        # fgraph those are the ftrace_regs return_to_handler built (Fgraph.exit_saved). arm64's and
        # x86's until 6.17 hold no sp (x0-x7 and fp; rax, rdx, rbp): the kernel reads a slot nothing
        # filled, and the lab shows the fault an uncaptured register is. x86 6.18-6.19 stores the
        # ftrace_regs' own address there (20a0bc10272f), so $stack reads the exit ftrace_regs
        # itself; 7.0 the sp the function returned with (8bc11700e0d2), the caller's stack.
        return self.register(self.m.arch.sp)

    def stack(self, n: int) -> int:
        # regs_get_kernel_stack_nth(): a word outside the task's stack (regs_within_kernel_stack)
        # reads as 0, not as a fault
        addr = self.stack_pointer() + 8 * n
        base, size = self.m.STACK
        if not base <= addr <= base + size - 8:
            return 0
        return int.from_bytes(self.read(addr, 8), "little")

    def read(self, addr: int, size: int) -> bytes:
        try:
            return self.m.read(addr, size)
        except FtlabError:
            raise FetchFault(f"{addr:#x}") from None

    def address_of(self, symbol: str) -> int:
        return self.m.address_of(symbol)

    def symbolize(self, addr: int) -> str:
        return location(self.m.symbols, addr)


def _argument(regs, n: int) -> int:
    return regs.get_argument(n) if regs.kind == "ftrace_regs" else regs.regs_get_kernel_argument(n)


def _retval(regs) -> int:
    return regs.get_return_value() if regs.kind == "ftrace_regs" else regs.regs_return_value()


def _where(karch, saved: tuple[str, ...], entry_args: tuple[int, ...] | None) -> Where:
    """Where fetch steps find a snapshot's registers: ftrace_regs holding `saved`; at an exit,
    the $argN its entry saved."""
    layout, aliases = karch.ftrace_regs, karch.ftrace_regs_aliases
    members = {aliases.get(m, m): m for m in layout.offsets}
    cpu = karch.cpu
    return Where(
        {aliases.get(m, m): layout.offsets[m] for m in saved},
        tuple(layout.offsets[members[r]] for r in cpu.arg_regs),
        cpu.sp,
        cpu.ret_regs[0],
        karch.ftrace_regs_stack_args,
        entry_args,
    )


def _pt_regs_where(karch, saved: tuple[str, ...], entry_args: tuple[int, ...] | None = None) -> Where:
    """Where fetch steps find a pt_regs' registers: those `saved` (ftrace_regs_caller's for a kprobe
    on ftrace, the rethook trampoline's at a kretprobe's return), by their pt_regs offsets; $argN
    as regs_get_kernel_argument reads them (a kprobe at a function's entry: the argument registers,
    then the stack above the return address), or at a return the word its entry saved; $stack off
    regs->sp."""
    layout, cpu = karch.pt_regs, karch.cpu
    return Where(
        {m: layout.offsets[m] for m in saved},
        tuple(layout.offsets[r] for r in cpu.arg_regs),
        cpu.sp,
        cpu.ret_regs[0],
        karch.ftrace_regs_stack_args,
        entry_args,
    )


def btf_protos(btf) -> dict[str, BtfProto] | None:
    """The lab's BTF (tracers.calls: the object's DWARF) as the probe parser takes it; None when
    the object has none, as a kernel without BTF."""
    if not btf:
        return None
    return {
        name: BtfProto(
            tuple((param, ctype.fetch_type) for param, ctype in typed.params),
            typed.ret.fetch_type,
            typed.ret.kind == "void",
        )
        for name, typed in btf.items()
    }


class ProbeEventTracer(Tracer):
    """The `nop` tracer with probe events enabled, as `echo SPEC > dynamic_events` would."""

    name = "nop"

    def __init__(
        self,
        lab,
        sink,
        specs,
        clock: str = "counter",
        verify: bool = False,
        design: str | None = None,
        ring: bool | None = None,
    ):
        """ring=False keeps every hit on the Python path (None: the guest path where it can)."""
        super().__init__(lab, sink, clock, verify)
        self.ring = ring
        registers = list(lab.karch.pt_regs.offsets)
        btf = btf_protos(lab.calls.btf) if lab.kernel.has("probe_btf_args") else None
        self.specs: list[ProbeSpec] = []
        for text in specs:
            spec = self._resolve(parse(text, registers, lab.kprobes.kprobe_on_func_entry, btf))
            check_append(spec, self.specs)
            self.specs.append(spec)
        self.fprobes = lab.fprobes(design)
        self.kretprobes = lab.kretprobes()
        self.hits = dict.fromkeys(self.specs, 0)
        self._probes = []
        self._guest: dict[tuple[str, int], int] | None = None  # the handlers' code by (kind, event), on the guest path
        self._decoder: ProbeDecoder | None = None  # its records' decoder, counting the hits it records
        self._pending = PendingEvents(lab.ring_buffer)  # its Python handlers' events, on that path
        self._handlers: list[tuple[str, int, list[Step]]] | None = None  # _guest_handlers(), once planned
        self._planned = False
        self.write = self.emit  # where an event goes: out, or into a tracer's trace (add_events)

    def _resolve(self, spec: ProbeSpec) -> ProbeSpec:
        if spec.kind not in ("f", "r", "p"):
            raise FtlabError(f"'{spec.text}': only p, r and f events can be traced")
        if spec.kind == "p" and spec.is_return:
            spec = replace(spec, kind="r")  # p SYM%return is a kretprobe
        if spec.address is not None:  # p ADDR: the function it is in
            hit = self.lab.machine.symbols.lookup(spec.address)
            if hit is None or hit[0].kind != "func":
                raise FtlabError(f"'{spec.text}': {spec.address:#x} is in no function")
            spec = replace(spec, symbol=hit[0].name, offset=hit[1])
        if spec.kind != "p":
            self.lab.ftrace.site(spec.symbol)  # a clear error for a function with no site
        return spec

    def make_clock(self):
        """Through the ring buffer, the guest keeps the clock (GuestInsnsClock for insns)."""
        if self._guest_handlers() is not None and self.clock_name == GuestInsnsClock.name:
            return GuestInsnsClock(self.lab.ring_buffer)
        return super().make_clock()

    def _guest_handlers(self) -> list[tuple[str, int, list[Step]]] | None:
        """Each event's guest handlers (ProbeCode.load's), when the whole trace can run in guest
        code (see the module's docstring); else None. Worked out once, as the trace starts."""
        if not self._planned:
            self._planned, self._handlers = True, self._plan()
        return self._handlers

    def _plan(self) -> list[tuple[str, int, list[Step]]] | None:
        lab, m = self.lab, self.lab.machine
        clock = self.clock_name == "counter" or (self.clock_name == GuestInsnsClock.name and m.counts_natively)
        partial = lab.ftrace.uncaptured()
        fevents = [s for s in self.specs if s.kind == "f"]
        kprobes = [s for s in self.specs if s.kind in "pr"]  # an r event's entry is a kprobe too
        probes, rets = (any(s.kind == kind for s in self.specs) for kind in "pr")
        nr_fetch = max(len(s.args) for s in self.specs)
        if (
            self.ring is False
            or self.verify
            or not clock
            or self.write != self.emit
            or (fevents and self.fprobes.code is None)
            or (rets and lab.rethook.code is None)
            or lab.probe_code.records.size(nr_fetch, probes, rets) > lab.ring_buffer.bytes
        ):
            return None
        on_ftrace = {self._kprobe_site(s) for s in kprobes}
        if None in on_ftrace or any(self._fprobe_unrecordable(s, partial, on_ftrace) for s in fevents):
            return None
        karch = lab.karch
        entry = _where(karch, karch.ftrace_regs_saved, None)
        exit_saved = karch.fgraph.exit_saved(lab.kernel)
        kprobe_saved = karch.regs_caller.saved if karch.regs_caller is not None else ()
        handlers: list[tuple[str, int, list[Step]]] = []
        for i, spec in enumerate(self.specs):
            save = entry  # where a return event's entry reads the $argN it saves
            if spec.kind == "p":
                kind, where = "kprobe", _pt_regs_where(karch, kprobe_saved)
            elif spec.kind == "r":
                kind, where = "kretprobe", _pt_regs_where(karch, karch.rethook.saved, spec.entry_args)
                save = _pt_regs_where(karch, kprobe_saved)
            elif spec.is_return:
                kind, where = "exit", _where(karch, exit_saved, spec.entry_args)
            else:
                kind, where = "entry", entry
            steps = compile_args(spec.args, where, m.address_of)
            if steps is None:
                return None
            handlers.append((kind, i, steps))
            if spec.entry_args:
                handlers.append(("save", i, entry_steps(spec.entry_args, save)))
        return handlers

    def _fprobe_unrecordable(self, spec: ProbeSpec, partial, kprobes: set) -> bool:
        """An f event the guest records cannot show: at a site whose trampoline does not capture
        every member it stores (arm64 -pg), or an entry at a p or r event's site, where the kprobe makes
        the trampoline ftrace_regs_caller, whose pt_regs the Python path shows (the entry record
        holds ftrace_caller's fields)."""
        ip = self.lab.ftrace.site(spec.symbol).ip
        return ip in partial or (not spec.is_return and ip in kprobes)

    def _kprobe_site(self, spec: ProbeSpec) -> int | None:
        """A p event's probe address (an r event's: its entry kprobe's) if its kprobe is a kprobe on
        ftrace (the address is an ftrace site and the lab has ftrace_regs_caller: Kprobes.register
        makes it an ftrace_ops), else None."""
        lab = self.lab
        if lab.ftrace.regs_caller is None:
            return None
        addr = lab.kprobes.check(Kprobe(spec.symbol, spec.offset))
        return addr if addr in lab.ftrace.by_ip else None

    def start(self) -> None:
        if self.verify:
            self.lab.verify.acquire(*self._verified())
        handlers = self._guest_handlers()
        if handlers is not None:
            self._guest_start(handlers)
        for spec in self.specs:
            if spec.kind == "p":
                p = Kprobe(spec.symbol, spec.offset, lambda p, regs, s=spec: self._entry(s, p.addr, regs))
                if self._guest is not None:
                    p.guest_pre = (self._guest["kprobe", self.specs.index(spec)], 0)
                self.lab.kprobes.register(p)
                self._probes.append(p)
            elif spec.kind == "r":
                rp = Kretprobe(
                    spec.symbol,
                    lambda ri, regs, s=spec: self._exit(s, ri.data, ri.func, regs),
                    (lambda ri, regs, s=spec: self._save_entry(s, ri.data, regs)) if spec.entry_args else None,
                    maxactive=spec.maxactive or 0,
                    data_size=8 * len(spec.entry_args),
                )
                if self._guest is not None:
                    i = self.specs.index(spec)
                    rp.guest_handler = (self._guest["kretprobe", i], 0)
                    if spec.entry_args:
                        rp.guest_entry = (self._guest["save", i], 0)
                self.kretprobes.register(rp)
                self._probes.append(rp)
            else:
                # a return event has an entry handler (and entry data) only for the $argN it reads
                fp = Fprobe(entry_data_size=8 * len(spec.entry_args))
                if spec.is_return:
                    fp.exit_handler = lambda fp, ip, ret_ip, regs, data, s=spec: self._exit(s, data, ip, regs)
                    if spec.entry_args:
                        fp.entry_handler = lambda fp, ip, ret_ip, regs, data, s=spec: self._save_entry(s, data, regs)
                else:
                    fp.entry_handler = lambda fp, ip, ret_ip, regs, data, s=spec: self._entry(s, ip, regs)
                if self._guest is not None:
                    i, guest = self.specs.index(spec), self._guest
                    if spec.is_return:
                        fp.guest_exit = (guest["exit", i], 0)
                        if spec.entry_args:
                            fp.guest_entry = (guest["save", i], 0)
                    else:
                        fp.guest_entry = (guest["entry", i], 0)
                self.fprobes.register_syms(fp, [spec.symbol])
                self._probes.append(fp)

    def _guest_start(self, handlers: list[tuple[str, int, list[Step]]]) -> None:
        """The handlers into guest code, and the ring buffer sized for the events' records."""
        lab = self.lab
        self._decoder = ProbeDecoder(
            lab.karch,
            lab.kernel,
            self.specs,
            lambda addr: location(lab.machine.symbols, addr),
            lab.machine.irqs_masked,
            MECHANISM["f"],
        )
        # the text in bulk from the records, no Event each (formats.probe_bulk_writer), or None
        self._bulk = probe_bulk_writer(self._decoder, self.sink, self._events)
        lab.ring_buffer.claim(HOLDER, "stream", self._decode, self._decoder.rec.size)
        addrs = lab.probe_code.load(handlers)
        self._guest = {(kind, i): addr for (kind, i, _), addr in zip(handlers, addrs, strict=True)}
        # a Python handler's event (a hit that took the Python dispatch: another ftrace_ops on the
        # site) takes its place among the guest's records
        self.write = self._pending.write

    def _decode(self, chunk: bytes) -> None:
        """The ring-buffer consumer: the records as their events, or where the sink writes them in
        bulk, as its lines straight away."""
        if self._bulk is None:
            self._events(chunk)
            return
        self.count_written(self._bulk(chunk))

    def _events(self, chunk: bytes) -> None:
        for event in self._decoder.events(chunk, self._pending):
            self.emit(event)

    def stop(self) -> None:
        for probe in self._probes:
            owner = {Kretprobe: self.kretprobes, Kprobe: self.lab.kprobes}.get(type(probe), self.fprobes)
            owner.unregister(probe)
        if self._guest is not None:
            rb = self.lab.ring_buffer
            rb.drain()
            self.ring_losses = {"lost": rb.lost} if rb.lost else {}
            rb.reset("stream", None)
            rb.release(HOLDER)
            self.write = self.emit
        if self.verify:
            self.lab.verify.release(*self._verified())

    def _verified(self) -> tuple:
        """The mechanisms whose snapshots the events show: a kprobe's at its point, a kretprobe's at
        the rethook trampoline, an fprobe's at the ftrace site or, for its exit, where its design
        hooks the return (a return probe's entry is no event)."""
        lab = self.lab
        fprobe_exit = lab.fgraph if self.fprobes.design == "fgraph" else lab.rethook
        by_kind = {"p": lab.kprobes, "r": lab.rethook, "f": lab.ftrace}
        return tuple(
            dict.fromkeys(fprobe_exit if s.kind == "f" and s.is_return else by_kind[s.kind] for s in self.specs)
        )

    def summary(self) -> dict:
        return {**super().summary(), "probes": self.probe_counts()}

    def probe_counts(self) -> dict[str, dict[str, int]]:
        """kprobe_profile's columns: event, hits, misses. The kernel prints a line per probe; an
        event with several probes (one per function) totals them here. A return probe's misses are
        its kprobe's and its kretprobe's (probes_profile_seq_show, kernel/trace/trace_kprobe.c,
        since 5.17: rp.kp.nmissed + rp.nmissed)."""
        probes: dict[str, dict[str, int]] = {}
        guest = self._decoder.counts if self._decoder is not None else [0] * len(self.specs)
        for s, p, recorded in zip(self.specs, self._probes, guest, strict=True):
            counts = probes.setdefault(f"{s.group}/{s.event}", {"hits": 0, "nmissed": 0})
            counts["hits"] += self.hits[s] + recorded
            counts["nmissed"] += p.nmissed
            if isinstance(p, Kretprobe) and isinstance(p.ops, Kprobe):
                counts["nmissed"] += p.ops.nmissed
        return probes

    def _save_entry(self, spec: ProbeSpec, data: int, regs) -> int:
        """trace_fprobe_entry_handler / trace_kprobe_entry_handler: each $argN the exit reads, a
        word each (ProbeSpec.entry_args)."""
        args = spec.entry_args
        self.lab.machine.write(data, struct.pack(f"<{len(args)}Q", *(_argument(regs, n - 1) for n in args)))
        return 0

    def _entry(self, spec: ProbeSpec, ip: int, regs) -> int:
        values = tuple(evaluate(a, _Context(self.lab, regs)) for a in spec.args)
        # a probe inside a function has no return address to show: the stack has moved
        parent = regs.get_return_address() if spec.offset == 0 else None
        self._emit(spec, "entry", ip, parent, regs, values, tuple(_argument(regs, n) for n in range(NR_ARGS)))
        return 0

    def _exit(self, spec: ProbeSpec, data: int, func: int, regs) -> None:
        n = len(spec.entry_args)
        saved = struct.unpack(f"<{n}Q", self.lab.machine.view(data, 8 * n)) if n else ()
        context = _Context(self.lab, regs, dict(zip(spec.entry_args, saved, strict=True)))
        values = tuple(evaluate(a, context) for a in spec.args)
        ret = regs.get_instruction_pointer() if regs.kind == "ftrace_regs" else regs.instruction_pointer()
        # the kernel keeps no arguments for an exit, only the $argN it reads
        self._emit(spec, "exit", func, ret, regs, values, None, retval=_retval(regs))

    def _emit(self, spec, type_, ip, parent_ip, regs, values, args, retval=None) -> None:
        self.hits[spec] += 1
        self.write(
            Event(
                MECHANISM[spec.kind],
                type_,
                ip,
                parent_ip,
                0,
                self.clock.now(),
                args,
                regs.kind,
                regs.fields,
                tuple(regs.missing),
                regs.verify(),
                retval=retval,
                probe=spec,
                fetch=tuple(zip(spec.args, values, strict=True)),
                irqs_off=self.lab.machine.irqs_disabled(),
            )
        )
