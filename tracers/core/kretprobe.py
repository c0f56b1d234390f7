"""kretprobes (kernel/kprobes.c): on rethook where the arch has it (x86, CONFIG_KRETPROBE_ON_RETHOOK),
else through the arch's __kretprobe_trampoline (arm64), which the lab's rethook core also models.

The entry is a kprobe at the function's first instruction (`via="kprobe"`): a breakpoint and the
exception's pt_regs, or on x86 the ftrace site with ftrace_regs_caller's pt_regs, as the kernel
does. `via="ftrace"` takes it through a plain ftrace_ops instead, with ftrace_regs (the cheaper
entry fprobe uses). The return handler sees the pt_regs of the release's return trampoline:
x86's rethook trampoline; arm64's BRK #7 exception since 6.9, its MRS-built pt_regs before.

A kretprobe's counts live in guest memory (GUEST_KRETPROBE), which both its Python entry and, where
the lab has rethook's guest code (rethook_guest.py) and the kprobe is on ftrace, the guest
pre_handler_kretprobe count: a kretprobe whose handlers are guest code too (guest_entry,
guest_handler: probe events' r events) then runs no Python at its entry or its return.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from emulator import FtlabError
from emulator.layout import Layout

from .ftrace import FtraceOps, OpsFlag
from .kprobes import Kprobe
from .regs import FtraceRegs, PtRegs
from .rethook import Rethook, RethookNode, words

NR_CPUS = 1
DEFAULT_MAXACTIVE = max(10, 2 * NR_CPUS)  # kretprobe's default pool size
# struct kretprobe's words guest code reads: its rethook (RETHOOK), its entry handler in guest code
# and that handler's data (0: none), its counts
GUEST_KRETPROBE = Layout.of("guest kretprobe", ("rethook", "entry", "entry_data", "nhit", "nmissed"))
NHIT, NMISSED = GUEST_KRETPROBE.index("nhit"), GUEST_KRETPROBE.index("nmissed")


@dataclass(eq=False)
class Kretprobe:
    """struct kretprobe. handler(ri, regs) at return; entry_handler(ri, regs) returning non-zero
    means "don't hook this call" (regs: the kprobe's pt_regs, or ftrace_regs with via="ftrace").
    `ri` is the rethook node: ri.data is its private data's address. guest_entry, guest_handler:
    the same handlers in guest code, (code, data), called as handler(data, ip, ret_ip, regs, ri's
    data); both (or guest_handler alone, with no entry_handler) or neither."""

    symbol: str
    handler: Callable[[RethookNode, PtRegs], None] | None
    entry_handler: Callable[[RethookNode, PtRegs | FtraceRegs], int] | None = None
    maxactive: int = 0
    data_size: int = 0
    via: str = "kprobe"  # how the entry is taken: 'kprobe' or 'ftrace'
    guest_entry: tuple[int, int] | None = None
    guest_handler: tuple[int, int] | None = None
    ops: object = field(default=None, repr=False)  # the FtraceOps or Kprobe behind the entry
    rethook: Rethook | None = field(default=None, repr=False)
    _desc: int = 0  # its GUEST_KRETPROBE, from its first registration
    _words: memoryview | None = field(default=None, repr=False)  # that struct's words

    @property
    def nmissed(self) -> int:
        """Entries that found the pool empty (maxactive)."""
        return self._words[NMISSED] if self._words is not None else 0

    @nmissed.setter
    def nmissed(self, value: int) -> None:
        assert self._words is not None  # counted once registered
        self._words[NMISSED] = value

    @property
    def nhit(self) -> int:
        """Entries that took a node."""
        return self._words[NHIT] if self._words is not None else 0

    @nhit.setter
    def nhit(self, value: int) -> None:
        assert self._words is not None
        self._words[NHIT] = value


class Kretprobes:
    def __init__(self, ftrace, kprobes, rethook):
        self.ftrace, self.kprobes, self.rethook = ftrace, kprobes, rethook
        self.probes: list[Kretprobe] = []

    def register(self, rp: Kretprobe) -> None:
        if rp in self.probes:
            raise FtlabError(f"kretprobe on {rp.symbol} is already registered")
        if rp.via not in ("kprobe", "ftrace"):
            raise FtlabError(f"kretprobe: via must be 'kprobe' or 'ftrace', not '{rp.via}'")
        site = self.ftrace.site(rp.symbol)
        code = self.rethook.code
        guest = (
            code is not None
            and rp.via == "kprobe"
            and rp.guest_handler is not None
            and (rp.entry_handler is None) == (rp.guest_entry is None)
        )
        rp.rethook = Rethook(
            self.rethook,
            lambda node, regs: self._return(rp, node, regs),
            rp.data_size,
            rp.maxactive or DEFAULT_MAXACTIVE,
            rp.guest_handler if guest else None,
        )
        if rp._words is None:  # its counts, kept across registrations
            m = self.ftrace.m
            rp._desc = m.alloc("lab data", GUEST_KRETPROBE.size, 64)
            rp._words = words(m, rp._desc, GUEST_KRETPROBE)
            rp._words[NHIT] = rp._words[NMISSED] = 0
        entry, entry_data = rp.guest_entry or (0, 0)
        for name, value in (("rethook", rp.rethook.addr), ("entry", entry), ("entry_data", entry_data)):
            rp._words[GUEST_KRETPROBE.index(name)] = value
        if rp.via == "ftrace":
            rp.ops = FtraceOps(
                lambda ip, parent, op, fregs: self._entry(rp, ip, fregs),
                OpsFlag.RECURSION,
                name=f"kretprobe:{rp.symbol}",
                filter={site.ip},
            )
            self.ftrace.register(rp.ops)
        else:
            rp.ops = Kprobe(rp.symbol, 0, lambda p, regs: self._entry(rp, site.ip, regs) or 0)
            if guest:  # the kprobe's guest pre_handler, where the kprobe is on ftrace (Kprobes)
                assert code is not None
                rp.ops.guest_pre = (code.pre_handler_kretprobe, rp._desc)
            self.kprobes.register(rp.ops)
        self.probes.append(rp)

    def unregister(self, rp: Kretprobe) -> None:
        if rp not in self.probes:
            raise FtlabError(f"kretprobe on {rp.symbol} is not registered")
        if rp.via == "ftrace":
            self.ftrace.unregister(rp.ops)
        else:
            self.kprobes.unregister(rp.ops)
        self.probes.remove(rp)
        assert rp.rethook is not None
        rp.rethook.release()  # unregister_kretprobes' rethook_free

    def _entry(self, rp: Kretprobe, ip: int, regs) -> None:
        """pre_handler_kretprobe (kernel/kprobes.c, v6.18); guest code's is rethook.S's."""
        node = rp.rethook.try_get()
        if node is None:  # the pool is empty: this return is missed
            rp.nmissed += 1
            return
        rp.nhit += 1
        if rp.entry_handler and rp.entry_handler(node, regs):
            rp.rethook.recycle(node)
            return
        rp.rethook.hook(node, regs, ip)

    def _return(self, rp: Kretprobe, node: RethookNode, regs: PtRegs) -> None:
        if rp.handler:
            rp.handler(node, regs)
